"""Runs stopped by SIGTERM, Ctrl-C and kill -9 lose at most a step (or a few minutes), leave nothing
half-written that looks complete, and resume to the weights an uninterrupted run reaches."""

from __future__ import annotations

import json
import os
import random
import re
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

# The runs done here in-process use one thread, as the child processes do (OMP_NUM_THREADS=1): with
# another thread count the float reductions differ in the last bits, and a resumed run's weights would
# be compared with a run computed another way.
from test_eval_cli import one_thread  # noqa: F401,E402  (autouse)

from dreambooth.cli import main
from dreambooth.core import interrupt
from dreambooth.core.interrupt import Interrupted, StopSignals, record_command, resume_command



REPO = Path(__file__).resolve().parents[1]
FAST = ["--class_inference_steps=2", "--validation_inference_steps=2", "--report_to=none"]


def unet(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(folder / "unet" / "diffusion_pytorch_model.safetensors")


class Run:
    """`dreambooth ARGS` in a child process (as a user runs it), its stdout lines collected as they come."""

    def __init__(self, args: list[str], tmp_path: Path):
        env = {**os.environ, "PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
        self.err_path = tmp_path / f"stderr-{time.monotonic_ns()}.txt"
        self.proc = subprocess.Popen([sys.executable, "-m", "dreambooth", *args], stdout=subprocess.PIPE,
                                     stderr=self.err_path.open("w"), text=True, env=env, cwd=tmp_path)
        self.lines: list[str] = []
        threading.Thread(target=lambda: self.lines.extend(iter(self.proc.stdout.readline, "")), daemon=True).start()

    def wait_until(self, seen, timeout: float = 900) -> bool:
        """Poll (every 0.5 ms) until seen() is true; False if the process ended first."""
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if seen():
                return True
            if self.proc.poll() is not None:
                return False
            time.sleep(0.0005)
        raise AssertionError("timed out")

    def printed(self, text: str) -> bool:
        return any(text in line for line in self.lines)

    def finish(self, timeout: float = 900) -> tuple[int, str]:
        rc = self.proc.wait(timeout)
        return rc, self.err_path.read_text()


def train_args(model: Path, photos: Path, out: Path, *extra: str) -> list[str]:
    return ["train", f"--model={model}", f"--instance-data-dir={photos}", "--class-name=dog", "--learning-rate=1e-3",
            f"--output-dir={out}", *FAST, *extra]


def test_sigterm_checkpoints_the_current_step_and_prints_the_exact_resume_command(tiny_sd, photos, tmp_path):
    """Scheduled checkpoints only every 1000 steps: the timer (here every ~0.1 s) writes interim ones,
    each replacing the one before, so a kill loses little; SIGTERM then saves the step it is on."""
    out = tmp_path / "out"
    # an earlier export in the same folder: until the new one is swapped in, it stays whole and consistent
    assert main(train_args(tiny_sd, photos, out, "--max-train-steps=1", "--seed=7")) == 0
    shutil.rmtree(out / "checkpoint-1")
    earlier = (out / "unet" / "diffusion_pytorch_model.safetensors").read_bytes()
    args = train_args(tiny_sd, photos, out, "--max-train-steps=20", "--checkpointing-steps=1000",
                      "--checkpointing-minutes=0.002", "--lr-scheduler=linear")
    run = Run(args, tmp_path)
    assert run.wait_until(lambda: len(list(out.glob("checkpoint-*"))) >= 1)    # the timer's first checkpoint
    run.proc.send_signal(signal.SIGTERM)
    rc, err = run.finish()
    assert rc == 143, err[-2000:]                              # 128 + SIGTERM, as schedulers expect
    assert "Traceback" not in err
    step = int(re.search(r"Stopped at step (\d+) of 20; checkpoint-\1 is saved in", err)[1])
    assert 2 <= step < 20
    assert [p.name for p in out.glob("checkpoint-*")] == [f"checkpoint-{step}"]   # interim ones replaced
    state = json.loads((out / f"checkpoint-{step}" / "state.json").read_text())
    assert state["step"] == step and state["interim"]
    assert (out / "unet" / "diffusion_pytorch_model.safetensors").read_bytes() == earlier
    assert json.loads((out / "plan.json").read_text())["steps"] == 1          # it describes that pipeline
    assert "seed: 7" in (out / "dreambooth.yaml").read_text()
    command = err.split("Resume with:\n")[1].splitlines()[0].strip()
    assert command == shlex.join(["dreambooth", *args, "--resume_from_checkpoint", "latest"])

    # the printed command, run as printed, ends where an uninterrupted run ends
    assert main(shlex.split(command)[1:]) == 0
    assert main(train_args(tiny_sd, photos, tmp_path / "straight", "--max-train-steps=20",
                           "--checkpointing-steps=1000", "--lr-scheduler=linear")) == 0
    resumed, straight = unet(out), unet(tmp_path / "straight")
    for k in straight:
        torch.testing.assert_close(resumed[k], straight[k], atol=1e-6, rtol=1e-5)
    assert json.loads((out / "plan.json").read_text())["steps"] == 20


def test_ctrl_c_before_any_checkpoint_never_advises_a_resume(tiny_sd, photos, tmp_path):
    class_dir = tmp_path / "class"
    args = train_args(tiny_sd, photos, tmp_path / "out", "--max-train-steps=1", "--with-prior-preservation",
                      "--num-class-images=30", f"--class-data-dir={class_dir}")
    run = Run(args, tmp_path)
    assert run.wait_until(lambda: len(list(class_dir.glob("class_*.png"))) >= 1)   # class images under way
    run.proc.send_signal(signal.SIGINT)
    rc, err = run.finish()
    assert rc == 130 and "Traceback" not in err
    message = err[err.index("interrupted:"):]
    assert "No checkpoint was written yet" in message and "run the same command again" in message
    assert "--resume_from_checkpoint" not in message
    assert not list((tmp_path / "out").glob("checkpoint-*"))
    made = sorted(class_dir.glob("class_*.png"))
    assert 1 <= len(made) < 30 and [p.name for p in class_dir.iterdir() if p.name.endswith(".tmp")] == []
    for p in made:                                               # every image written is whole
        Image.open(p).load()


def test_second_ctrl_c_quits_at_once_and_handlers_are_restored(tmp_path):
    before = signal.getsignal(signal.SIGINT)
    with pytest.raises(Interrupted) as stopped:
        with StopSignals(tmp_path) as stop, stop.steps():
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.05)
            assert stop.requested == signal.SIGINT                  # the first one waits for the step's end
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(5)
            pytest.fail("the second Ctrl-C did not stop at once")
    assert stopped.value.exit_code == 130 and "No checkpoint was written yet" in stopped.value.message
    assert signal.getsignal(signal.SIGINT) is before


def test_resume_advice_names_the_latest_checkpoint_and_the_command(tmp_path, monkeypatch):
    (tmp_path / "checkpoint-3").mkdir()
    (tmp_path / "checkpoint-12").mkdir()
    monkeypatch.setattr(interrupt, "_COMMAND", None)
    record_command(["train", "--model=m", "--resume-from-checkpoint", "checkpoint-3", "--output-dir=o"])
    assert resume_command() == "dreambooth train --model=m --output-dir=o --resume_from_checkpoint latest"
    with pytest.raises(Interrupted) as stopped:
        with StopSignals(tmp_path):
            os.kill(os.getpid(), signal.SIGTERM)    # outside the steps: stops at once
            time.sleep(5)
    assert stopped.value.exit_code == 143
    assert "checkpoint-12" in stopped.value.message and "--resume_from_checkpoint latest" in stopped.value.message


def _leftovers(*folders: Path) -> list[str]:
    return [p.name for f in folders if f.is_dir() for p in f.iterdir() if p.name.endswith(".tmp")]


def _nothing_half_written_looks_complete(out: Path, class_dir: Path) -> None:
    for folder in out.glob("checkpoint-*"):
        assert json.loads((folder / "state.json").read_text())["step"] == int(folder.name.split("-")[1])
        load_file(folder / "unet.safetensors")
        load_file(folder / "optimizer.safetensors")
    if (out / "model_index.json").exists():
        unet(out)
    for p in class_dir.glob("class_*.png"):
        Image.open(p).load()


def test_kill_9_at_random_moments_then_resume_matches_an_uninterrupted_run(tiny_sd, photos, tmp_path):
    """kill -9 during class images, training, a checkpoint and the export, each in its own run
    (the moment is random within that phase); every next run resumes, and the final weights and
    class images are those of a run that was never interrupted."""
    def args(out: Path, class_dir: Path) -> list[str]:
        return train_args(tiny_sd, photos, out, "--max-train-steps=24", "--checkpointing-steps=8",
                          "--checkpointing-minutes=0.0005", "--lr-scheduler=linear", "--with-prior-preservation",
                          "--num-class-images=6", f"--class-data-dir={class_dir}", "--resume-from-checkpoint=latest")
    assert main(args(tmp_path / "straight", tmp_path / "straight-class")) == 0

    out, class_dir, rng = tmp_path / "out", tmp_path / "class", random.Random(0)
    def class_images() -> int:
        return len(list(class_dir.glob("class_*.png")))

    # phase: (it has begun, the kill landed inside it: judged from what the killed run left)
    phases = {
        "class images": (lambda: class_images() >= 1, lambda left: class_images() < 6),
        "training": (lambda: run.printed("schedule"), lambda left: not (out / "model_index.json").exists()),
        # this run's own temporaries (named with its process id), not those an earlier kill left
        "a checkpoint": (lambda: bool(list(out.glob(f".checkpoint-*.{run.proc.pid}.tmp"))),
                         lambda left: any(n.startswith(".checkpoint-") and f".{run.proc.pid}." in n for n in left)),
        "the export": (lambda: (out / f".export.{run.proc.pid}.tmp").exists(),
                       lambda left: f".export.{run.proc.pid}.tmp" in left),
    }
    hit = []
    for phase, (begun, inside) in phases.items():
        for attempt in range(4):
            run = Run(args(out, class_dir), tmp_path)
            if run.wait_until(begun):
                time.sleep(rng.uniform(0, 0.3 if phase == "training" else 0.01))
                run.proc.kill()
            rc, err = run.finish()
            assert "Traceback" not in err, err[-3000:]
            _nothing_half_written_looks_complete(out, class_dir)
            if rc == -signal.SIGKILL and inside(_leftovers(out, class_dir)):
                hit.append(phase)
                break
    assert hit == list(phases)

    assert main(args(out, class_dir)) == 0             # the last resume runs to the end
    straight, resumed = unet(tmp_path / "straight"), unet(out)
    for k in straight:
        torch.testing.assert_close(resumed[k], straight[k], atol=1e-5, rtol=1e-4)
    for p in sorted((tmp_path / "straight-class").glob("class_*.png")):   # same seeds, same images
        assert (class_dir / p.name).read_bytes() == p.read_bytes()
    assert _leftovers(out, class_dir) == []            # the killed runs' temporaries were cleaned up
    assert json.loads((out / "plan.json").read_text())["steps"] == 24
