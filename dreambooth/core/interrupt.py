"""Ctrl-C and SIGTERM (a scheduler, a container stop, a cloud preemption) during a run.

While steps run, the first signal only asks the loop to stop at the end of the current step; the
loop then saves a checkpoint and raises `Interrupted` with where it is and the exact command that
resumes. A second signal, or one outside the steps (loading, class images, export), stops at once;
what was written before is complete, since every write is atomic (dreambooth/files.py). The
message only advises a resume when a checkpoint exists to resume from.
"""

from __future__ import annotations

import os
import shlex
import signal
import sys
import threading
from pathlib import Path

_COMMAND: list[str] | None = None   # the command line that started this process, when it was the CLI
RESUME_FLAG = "--resume_from_checkpoint"


class Interrupted(KeyboardInterrupt):
    """Raised to stop a run on a signal; `message` says what was kept and how to go on."""

    def __init__(self, signum: int, message: str = ""):
        super().__init__(message)
        self.signum, self.message = signum, message

    @property
    def exit_code(self) -> int:
        return 128 + self.signum   # the shell's convention: 130 for SIGINT, 143 for SIGTERM


def record_command(argv: list[str]) -> None:
    """Remember the command line (the CLI calls this), to print the exact resume command."""
    global _COMMAND
    _COMMAND = list(argv)


def resume_command() -> str:
    """The command that started this run, resuming from its latest checkpoint."""
    if _COMMAND is None:
        return "call train() again with checkpoint.resume_from_checkpoint = 'latest'"
    args, skip, name = [], False, RESUME_FLAG.lstrip("-")
    for a in _COMMAND:
        flag = a.lstrip("-").replace("-", "_")
        if skip:
            skip = False
        elif a.startswith("--") and flag == name:
            skip = True                 # its value follows
        elif not (a.startswith("--") and flag.startswith(name + "=")):
            args.append(a)
    launcher = "accelerate launch -m dreambooth" if int(os.environ.get("WORLD_SIZE", "1")) > 1 else "dreambooth"
    return shlex.join([*launcher.split(), *args, RESUME_FLAG, "latest"])


def advice(output_dir: Path) -> str:
    """What to do after a stop, judged from what is on disk now."""
    from .checkpoint import list_checkpoints
    found = list_checkpoints(Path(output_dir)) if Path(output_dir).is_dir() else []
    if found:
        return (f"The latest complete checkpoint is {found[-1]}. Resume with:\n  {resume_command()}")
    return ("No checkpoint was written yet, so there is nothing to resume: run the same command again (the class "
            "images made so far are kept and reused).")


class StopSignals:
    """Context manager around a run: SIGINT/SIGTERM handlers, restored on exit.

    `steps()` marks the stretch where a signal is deferred to the end of the step (`requested`);
    elsewhere, and for a second signal, `Interrupted` is raised at once. Installed only in the main
    thread (Python delivers signals there); in another thread signals keep their usual effect."""

    def __init__(self, output_dir: Path):
        self.output_dir = Path(output_dir)
        self.requested: int | None = None
        self._deferring = False
        self._previous: dict[int, object] = {}

    def __enter__(self) -> "StopSignals":
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, kind, exc, tb) -> bool:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        if isinstance(exc, KeyboardInterrupt) and not getattr(exc, "message", ""):
            stopped = Interrupted(getattr(exc, "signum", signal.SIGINT),
                                  f"Stopped by {_name(getattr(exc, 'signum', signal.SIGINT))}. {advice(self.output_dir)}")
            raise stopped from None
        return False

    def steps(self) -> "_Deferring":
        return _Deferring(self)

    def _handle(self, signum, frame) -> None:
        if self._deferring and self.requested is None:
            self.requested = signum
            print(f"\n{_name(signum)}: stopping at the end of this step to save a checkpoint "
                  "(press Ctrl-C again to quit at once).", file=sys.stderr, flush=True)
            return
        raise Interrupted(signum)


class _Deferring:
    def __init__(self, stop: StopSignals):
        self.stop = stop

    def __enter__(self):
        self.stop._deferring = True

    def __exit__(self, kind, exc, tb):
        self.stop._deferring = False
        if kind is None and self.stop.requested:   # asked to stop while no step was left to finish
            raise Interrupted(self.stop.requested)
        return False


def _name(signum: int) -> str:
    return {signal.SIGINT: "Ctrl-C (SIGINT)", signal.SIGTERM: "SIGTERM"}.get(signum, f"signal {signum}")
