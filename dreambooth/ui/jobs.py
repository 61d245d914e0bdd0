"""One training job at a time: a queue in the server, each job a worker process (worker.py).

The queue's thread starts the next job when the last one ends and records how it ended in the
run's status.json, from the exit code and the CLI's own last words (its 'error:' or 'interrupted:'
paragraph). Stop sends SIGTERM, which the CLI turns into a checkpoint and a clean exit. A server that
dies leaves its runs marked running; the next server marks them stopped, so they can be resumed.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from ..errors import DreamboothError
from .runs import RunFolder, list_runs

STOPPED_CODES = {130, 143}   # 128 + SIGINT / SIGTERM: the CLI's clean stop


def worker_command(run: RunFolder, resume: bool) -> list[str]:
    return [sys.executable, "-m", "dreambooth.ui.worker", str(run.root)] + (["--resume"] if resume else [])


def child_env() -> dict[str, str]:
    """The server's environment, with this package importable however the server was started."""
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    root = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = os.pathsep.join([root] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
    return env


def last_words(log: Path, exit_code: int) -> str:
    """The CLI's closing paragraph ('error: ...' / 'interrupted: ...'), else the end of its output."""
    try:
        lines = log.read_text(errors="replace").split("\n")
    except OSError:
        lines = []
    for i in range(len(lines) - 1, -1, -1):
        if lines[i].startswith(("error: ", "interrupted: ")):
            return "\n".join(lines[i:]).split(": ", 1)[1].strip()
    tail = "\n".join(line.split("\r")[-1] for line in lines[-15:]).strip()
    return f"The training process ended with exit code {exit_code}. The end of its output:\n{tail}"


def stop_orphan(run: RunFolder, timeout: float = 120) -> None:
    """A worker that outlived its server (it runs in its own session) is stopped the clean way, so
    two processes never train into one folder. Its pid is checked to be that run's worker first."""
    pid = run.status().get("pid")
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except (OSError, TypeError):
        return
    if str(run.root).encode() not in cmdline or b"dreambooth.ui.worker" not in cmdline:
        return
    os.kill(pid, signal.SIGTERM)
    for _ in range(int(timeout * 10)):
        if not Path(f"/proc/{pid}").exists():
            return
        time.sleep(0.1)


class JobQueue:
    def __init__(self, work_dir: Path, command=worker_command):
        self.work_dir, self.command = Path(work_dir), command
        self._pending: list[tuple[RunFolder, bool]] = []
        self._active: tuple[RunFolder, subprocess.Popen] | None = None
        self._cv = threading.Condition()
        self._closed = False
        for run in list_runs(self.work_dir):   # left by a server that died
            state = run.status().get("state")
            if state in ("queued", "running"):
                stop_orphan(run)
                run.set_status("stopped", f"The UI server stopped while this run was {state}. Press Resume to go on "
                                          "from its latest checkpoint.")
        self._thread = threading.Thread(target=self._serve, name="dreambooth-jobs", daemon=True)
        self._thread.start()

    def submit(self, run: RunFolder, resume: bool = False) -> int:
        """Queue a run; returns its place: 0 when it starts now, k when k jobs are ahead of it."""
        with self._cv:
            if self.position(run.name) is not None:
                raise DreamboothError(f"Run {run.name} is already {'training' if self.position(run.name) == 0 else 'queued'}.")
            self._pending.append((run, resume))
            place = len(self._pending) - (0 if self._active else 1)
            run.set_status("queued", f"Waiting for {place} job{'s' if place != 1 else ''} ahead of it." if place
                           else "Starting.")
            self._cv.notify_all()
            return place

    def position(self, name: str) -> int | None:
        with self._cv:
            if self._active and self._active[0].name == name:
                return 0
            for i, (run, _) in enumerate(self._pending):
                if run.name == name:
                    return i + (1 if self._active else 0)
            return None

    def stop(self, name: str) -> str:
        """Stop a run: out of the queue if it waits, else SIGTERM (checkpoint, then a clean exit)."""
        with self._cv:
            for item in self._pending:
                if item[0].name == name:
                    self._pending.remove(item)
                    item[0].set_status("stopped", "Taken out of the queue before it started.")
                    return "Taken out of the queue."
            if self._active and self._active[0].name == name:
                self._active[1].send_signal(signal.SIGTERM)
                return "Stopping: a checkpoint is saved at the end of the current step."
        return "This run is not training."

    def active(self) -> str | None:
        with self._cv:
            return self._active[0].name if self._active else None

    def close(self, timeout: float = 60) -> None:
        """Server shutdown: stop the running job cleanly (it saves a checkpoint) and start no other."""
        with self._cv:
            self._closed = True
            self._pending.clear()
            proc = self._active[1] if self._active else None
            self._cv.notify_all()
        if proc is not None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()

    def _serve(self) -> None:
        while True:
            with self._cv:
                while not self._pending and not self._closed:
                    self._cv.wait()
                if self._closed:
                    return
                run, resume = self._pending.pop(0)
                with open(run.log, "a") as log:
                    proc = subprocess.Popen(self.command(run, resume), stdout=log, stderr=subprocess.STDOUT,
                                            stdin=subprocess.DEVNULL, cwd=run.root, env=child_env(),
                                            start_new_session=True)   # the server's Ctrl-C is not the run's
                self._active = (run, proc)
                run.set_status("running", "Resuming from the latest checkpoint." if resume else "Training.",
                               pid=proc.pid)
                for i, (waiting, _) in enumerate(self._pending):
                    waiting.set_status("queued", f"Waiting for {i + 1} job{'s' if i else ''} ahead of it.")
            code = proc.wait()
            with self._cv:
                self._active = None
                if code == 0:
                    run.set_status("done", "Finished: the model is in the run's model/ folder.")
                elif code in STOPPED_CODES:
                    run.set_status("stopped", last_words(run.log, code))
                else:
                    run.set_status("failed", last_words(run.log, code))
