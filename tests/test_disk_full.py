"""A full disk, on a real small filesystem (a tmpfs of a few MB): refused up front when the sizes
are known, and a clean one-paragraph error when it fills up mid-write, with the last good
checkpoint intact and nothing half-written left behind. Needs permission to mount a tmpfs (root
in a container, as in CI here); skipped where that is not allowed."""

from __future__ import annotations

import json
import subprocess
import uuid

import pytest
from safetensors.torch import load_file

from dreambooth import files
from dreambooth.cli import main

FAST = ["--class_inference_steps=2", "--report_to=none"]


@pytest.fixture
def small_disk(tmp_path):
    """mount(size) -> a folder on a fresh tmpfs of that size, unmounted after the test."""
    mounted = []

    def mount(size: str):
        folder = tmp_path / f"disk-{uuid.uuid4().hex[:6]}"
        folder.mkdir()
        proc = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)],
                              capture_output=True, text=True)
        if proc.returncode != 0:
            pytest.skip(f"cannot mount a small tmpfs here ({proc.stderr.strip()[:100]})")
        mounted.append(folder)
        return folder
    yield mount
    for folder in mounted:
        subprocess.run(["umount", "-l", str(folder)], capture_output=True)


def error_of(capsys, argv) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return err.strip().splitlines()[-1]


def args(model, photos, out, *extra):
    return ["train", f"--model={model}", f"--instance-data-dir={photos}", "--class-name=dog",
            f"--output-dir={out}", *FAST, *extra]


def test_too_small_a_disk_is_refused_before_any_work(tiny_sd, photos, small_disk, capsys):
    out = small_disk("1m") / "out"      # the tiny model needs ~2.5 MB per checkpoint and ~1.9 MB exported
    err = error_of(capsys, args(tiny_sd, photos, out, "--max-train-steps=2"))
    assert "Not enough free disk space" in err and str(out) in err and "a checkpoint" in err
    assert "MB" in err and "nothing was written yet" in err
    assert not list(out.glob("checkpoint-*")) and not (out / "model_index.json").exists()


def test_disk_filling_up_mid_checkpoint_keeps_the_last_good_one(tiny_sd, photos, small_disk, capsys, monkeypatch):
    """The up-front check passes (another program fills the disk later: here, it is told nothing),
    then the second checkpoint hits a real ENOSPC."""
    monkeypatch.setattr(files, "require_free_space", lambda needs: None)
    out = small_disk("4m") / "out"
    err = error_of(capsys, args(tiny_sd, photos, out, "--max-train-steps=3", "--checkpointing-steps=1"))
    assert f"The disk holding {out} filled up while writing checkpoint-2" in err
    assert "checkpoint-1, the last complete checkpoint, is intact" in err and "Nothing half-written" in err
    assert [p.name for p in out.iterdir() if p.name.startswith(("checkpoint-", "."))] == ["checkpoint-1"]
    assert json.loads((out / "checkpoint-1" / "state.json").read_text())["step"] == 1
    load_file(out / "checkpoint-1" / "unet.safetensors")


def test_disk_filling_up_mid_export_leaves_no_pipeline_that_looks_complete(tiny_sd, photos, small_disk, capsys,
                                                                           monkeypatch):
    monkeypatch.setattr(files, "require_free_space", lambda needs: None)
    disk = small_disk("5m")              # room for checkpoint-1 (~2.5 MB) and the ballast, not the pipeline too
    ballast = disk / "ballast"
    ballast.write_bytes(b"\0" * 1_500_000)   # what the user will delete to make room
    out = disk / "out"
    argv = args(tiny_sd, photos, out, "--max-train-steps=1")
    err = error_of(capsys, argv)
    assert "filled up while writing the fine-tuned pipeline" in err
    assert "checkpoint-1 holds the trained weights: resume with `dreambooth train" in err
    assert not (out / "model_index.json").exists()                     # no pipeline that looks complete
    assert [p.name for p in out.iterdir() if p.name.startswith(".")] == []
    ballast.unlink()
    assert main(argv + ["--resume_from_checkpoint", "latest"]) == 0    # the advised resume exports it
    assert "Nothing left to train" in capsys.readouterr().out
    assert load_file(out / "unet" / "diffusion_pytorch_model.safetensors")
