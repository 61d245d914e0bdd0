"""The UI's run folders, uploads and training queue (no browser): safe names, limits, one job at a
time with queue positions, Stop, a crash reported in the page, and the CLI's own error messages."""

from __future__ import annotations

import os
import sys
import time

import pytest

from dreambooth.errors import DreamboothError
from dreambooth.ui import runs
from dreambooth.ui.jobs import JobQueue


def wait_for(predicate, timeout=300.0):   # a bound, not a wait: generous for a loaded CI machine
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(0.1)
    raise AssertionError("timed out")


def test_safe_names_stay_in_the_folder():
    taken: set[str] = set()
    assert runs.safe_name("../../etc/passwd", taken) == "passwd"
    assert runs.safe_name("..\\..\\x.png", taken) == "x.png"
    assert runs.safe_name(".bashrc", taken) == "bashrc"
    assert runs.safe_name("my dog?.JPG", taken) == "my_dog_.JPG"
    assert runs.safe_name("x.png", taken) == "x-2.png"
    assert runs.safe_name("", taken) == "photo"


def test_uploads_are_counted_sized_and_renamed(tmp_path):
    run = runs.new_run(tmp_path / "work")
    src = tmp_path / "src"
    src.mkdir()
    files = []
    for i in range(21):
        (src / f"{i}.png").write_bytes(b"not really a png")
        files.append((f"../evil/{i}.png", src / f"{i}.png"))
    with pytest.raises(DreamboothError, match="Upload 3 to 20 photos"):
        runs.store_uploads(run, files[:2])
    with pytest.raises(DreamboothError, match="got 21"):
        runs.store_uploads(run, files)
    big = src / "big.jpg"
    with open(big, "wb") as f:
        f.truncate(runs.MAX_PHOTO_BYTES + 1)
    with pytest.raises(DreamboothError, match="limited to 25 MB"):
        runs.store_uploads(run, files[:3] + [("big.jpg", big)])
    stored = runs.store_uploads(run, files[:3])
    assert sorted(p.name for p in stored) == ["0.png", "1.png", "2.png"]
    assert all(p.parent == run.photos for p in stored)
    # caption files ride along with their photos and do not count as photos
    for i in range(20):
        (src / f"{i}.txt").write_text(f"a photo of [V] dog {i}")
    captions = [(f"{i}.txt", src / f"{i}.txt") for i in range(20)]
    stored = runs.store_uploads(run, files[:20] + captions)
    assert len(stored) == 40 and (run.photos / "7.txt").read_text() == "a photo of [V] dog 7"
    with pytest.raises(DreamboothError, match=r"got 2 \(and 2 caption files\)"):
        runs.store_uploads(run, files[:2] + captions[:2])
    stored = runs.store_uploads(run, files[:3] + [("0.cap", src / "0.txt")], caption_extension="cap")
    assert len(stored) == 4


def test_runs_open_only_by_their_own_names(tmp_path):
    a = runs.new_run(tmp_path)
    b = runs.new_run(tmp_path)
    assert [r.name for r in runs.list_runs(tmp_path)] == sorted([a.name, b.name], reverse=True)
    assert runs.open_run(tmp_path, a.name) == a
    for bad in ("../" + a.name, "/etc", a.name + "/..", "x"):
        with pytest.raises(DreamboothError, match="no run named"):
            runs.open_run(tmp_path, bad)


def sleeper(run, resume):
    """A stand-in job for the queue's own logic: waits to be stopped, exits as the CLI does on SIGTERM."""
    code = "import signal, sys, time; signal.signal(signal.SIGTERM, lambda *a: sys.exit(143)); time.sleep(60)"
    return [sys.executable, "-c", code]


def test_one_job_at_a_time_with_queue_positions_and_stop(tmp_path):
    queue = JobQueue(tmp_path, command=sleeper)
    a, b, c = (runs.new_run(tmp_path) for _ in range(3))
    assert queue.submit(a) == 0
    wait_for(lambda: a.status()["state"] == "running")
    assert queue.submit(b) == 1 and queue.submit(c) == 2
    assert b.status()["state"] == "queued" and "2 jobs ahead" in c.status()["message"]
    with pytest.raises(DreamboothError, match="already queued"):
        queue.submit(b)
    assert queue.stop(b.name) == "Taken out of the queue."
    assert queue.position(c.name) == 1 and b.status()["state"] == "stopped"
    queue.stop(a.name)
    wait_for(lambda: a.status()["state"] == "stopped" and queue.active() == c.name)
    queue.close()
    wait_for(lambda: c.status()["state"] == "stopped")


def test_a_crash_is_reported_and_the_queue_goes_on(tmp_path):
    def crash(run, resume):
        return [sys.executable, "-c", "import os; print('segfault-like end'); os.abort()"]
    queue = JobQueue(tmp_path, command=crash)
    a = runs.new_run(tmp_path)
    queue.submit(a)
    wait_for(lambda: a.status()["state"] == "failed")
    assert "segfault-like end" in a.status()["message"] and queue.active() is None
    queue.close()


def test_runs_left_running_by_a_dead_server_become_resumable(tmp_path):
    import subprocess
    a, b = runs.new_run(tmp_path), runs.new_run(tmp_path)
    a.set_status("running", "Training.", pid=os.getpid())      # a pid that is not a's worker: left alone
    orphan = subprocess.Popen(sleeper(b, False) + ["dreambooth.ui.worker", str(b.root)])
    b.set_status("running", "Training.", pid=orphan.pid)     # b's worker outlived its server
    time.sleep(1)
    JobQueue(tmp_path, command=sleeper).close()
    assert a.status()["state"] == "stopped" and "Resume" in a.status()["message"]
    assert orphan.wait(30) in (143, -15) and b.status()["state"] == "stopped"   # -15: before its handler was set


def test_the_worker_shows_the_clis_error_message(tmp_path):
    """The real worker process: a bad setting fails with exactly the CLI's paragraph, not a traceback."""
    from dreambooth.config import TrainJob, save_yaml
    run = runs.new_run(tmp_path)
    job = TrainJob()
    job.data.instance_data_dir = str(run.photos)   # never filled
    job.data.class_name = "star"
    job.output.output_dir = str(run.model)
    save_yaml(job, run.request)
    queue = JobQueue(tmp_path)
    queue.submit(run)
    wait_for(lambda: run.status()["state"] == "failed")
    assert run.status()["message"].startswith(f"The instance image folder {run.photos} does not exist.")
    assert "Traceback" not in run.log.read_text()
    queue.close()
