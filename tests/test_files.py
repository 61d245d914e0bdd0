"""Atomic writes, leftovers of killed runs, and the journaled swap of an exported pipeline."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from diffusers import DiffusionPipeline

from dreambooth import files
from dreambooth.core import publish
from dreambooth.errors import DreamboothError


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid   # exited and reaped: no process has this id now (ids are not reused this fast)


def test_atomic_file_and_folder_replace_or_keep_the_old_one(tmp_path):
    target = tmp_path / "state.json"
    files.write_json(target, {"step": 1})
    with pytest.raises(KeyboardInterrupt), files.atomic_path(target) as tmp:
        tmp.write_text('{"st')                      # a torn write...
        raise KeyboardInterrupt                      # ...then Ctrl-C
    assert json.loads(target.read_text()) == {"step": 1} and os.listdir(tmp_path) == ["state.json"]

    folder = tmp_path / "checkpoint-2"
    for version in ("old", "new"):
        with files.atomic_path(folder) as tmp:
            tmp.mkdir()
            (tmp / "weights").write_text(version)
    assert (folder / "weights").read_text() == "new"
    assert sorted(os.listdir(tmp_path)) == ["checkpoint-2", "state.json"]


def test_only_temporaries_of_dead_processes_are_removed(tmp_path):
    dead, alive = dead_pid(), os.getpid()
    (tmp_path / f".class_00001.png.{dead}.tmp").write_bytes(b"half a png")
    (tmp_path / f".checkpoint-4.{dead}.tmp").mkdir()
    (tmp_path / f".checkpoint-6.{alive}.tmp").mkdir()   # a run still going
    (tmp_path / "class_00000.png").write_bytes(b"kept")
    removed = files.remove_stale_temps(tmp_path)
    assert len(removed) == 2
    assert sorted(os.listdir(tmp_path)) == [f".checkpoint-6.{alive}.tmp", "class_00000.png"]


def test_a_folder_killed_mid_delete_leaves_a_temporary_not_half_a_checkpoint(tmp_path, monkeypatch):
    """Rotating checkpoints out: a kill -9 inside the delete (here: the delete dies after its first file)
    must not leave checkpoint-1 without its state.json under its own name, where resume would find it."""
    folder = tmp_path / "checkpoint-1"
    folder.mkdir()
    for name in ("state.json", "unet.safetensors", "optimizer.safetensors"):
        (folder / name).write_text(name)
    real_rmtree = files.shutil.rmtree

    def dies_after_one_file(path, ignore_errors=False):
        next(p for p in Path(path).iterdir()).unlink()
        raise KeyboardInterrupt            # stands for the kill
    monkeypatch.setattr(files.shutil, "rmtree", dies_after_one_file)
    with pytest.raises(KeyboardInterrupt):
        files.discard(folder)
    monkeypatch.setattr(files.shutil, "rmtree", real_rmtree)
    assert os.listdir(tmp_path) == [f".checkpoint-1.{os.getpid()}.tmp"]   # a temporary the next run sweeps away
    files.discard(folder)                                                 # gone already: nothing to do


def test_free_space_check_names_folder_and_size(tmp_path):
    free = files.free_bytes(tmp_path)
    files.require_free_space([(tmp_path, free // 4, "a checkpoint")])
    with pytest.raises(DreamboothError) as e:
        files.require_free_space([(tmp_path / "out", free // 2, "a checkpoint"), (tmp_path, free // 2, "the pipeline")])
    msg = str(e.value)
    assert str(tmp_path / "out") in msg and "a checkpoint" in msg and ("GB" in msg or "MB" in msg)
    assert "nothing was written yet" in msg


def test_disk_full_errors_are_recognised():
    from safetensors import SafetensorError
    assert files.is_disk_full(OSError(28, "No space left on device"))
    assert files.is_disk_full(SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)"))
    assert not files.is_disk_full(OSError(13, "Permission denied"))
    assert not files.is_disk_full(ValueError("No space left on device"))


def _pipeline(folder, value: float):
    """A real pipeline folder (the tiny SD) whose UNet weights are all `value`, with its plan."""
    pipe = DiffusionPipeline.from_pretrained(folder)
    with torch.no_grad():
        for p in pipe.unet.parameters():
            p.fill_(value)
    return pipe


def _unet_value(folder) -> float:
    from safetensors.torch import load_file
    return float(load_file(folder / "unet" / "diffusion_pytorch_model.safetensors")["conv_in.weight"].flatten()[0])


class Killed(BaseException):
    """Stands for kill -9: no handler of the code under test runs."""


def test_a_reader_sees_the_old_or_the_new_pipeline_whenever_the_swap_is_killed(tiny_sd, tmp_path, monkeypatch):
    """Before the journal is written the old pipeline is untouched (the new one is only in a hidden
    folder); from then on, stop the swap after each of its renames in turn."""
    old, new = _pipeline(tiny_sd, 0.25), _pipeline(tiny_sd, 0.75)

    def write(pipe, steps):
        def into(folder):
            pipe.save_pretrained(folder, safe_serialization=True)
            files.write_json(folder / "plan.json", {"steps": steps})
        return into

    real_replace = os.replace

    def publish_new(out, kill_at=None) -> int:
        renames = []

        def replace(a, b):
            if (out / publish.JOURNAL).exists():
                if len(renames) == kill_at:
                    raise Killed
                renames.append(b)
            real_replace(a, b)
        monkeypatch.setattr(os, "replace", replace)
        try:
            publish.publish(out, write(new, 200), 0, "the pipeline", "")
        finally:
            monkeypatch.setattr(os, "replace", real_replace)
        return len(renames)

    def fresh(name):
        out = tmp_path / name
        out.mkdir()
        publish.publish(out, write(old, 100), 0, "the pipeline", "")
        (out / "checkpoint-100").mkdir()
        return out

    n_renames = publish_new(fresh("whole"))
    assert n_renames >= 6       # model_index away, unet, text_encoder, vae, ..., plan, model_index back
    assert DiffusionPipeline.from_pretrained(tmp_path / "whole").unet.conv_in.weight.flatten()[0] == 0.75
    for kill_at in range(n_renames):
        out = fresh(f"killed-{kill_at}")
        with pytest.raises(Killed):
            publish_new(out, kill_at)
        # a loader sees the complete old pipeline, or no pipeline at all (no model_index.json), never a mix
        if (out / "model_index.json").exists():
            assert _unet_value(out) == 0.25 and json.loads((out / "plan.json").read_text())["steps"] == 100
        assert publish.finish_interrupted_export(out)     # what the next run, or `dreambooth generate`, does
        assert _unet_value(out) == 0.75 and json.loads((out / "plan.json").read_text())["steps"] == 200
        assert [p.name for p in out.iterdir() if p.name.startswith(".")] == []   # nothing stray
        assert (out / "checkpoint-100").is_dir()                                 # beside it, untouched


def test_exclusive_waits_for_the_process_holding_the_folder(tmp_path):
    code = ("import sys, time; from pathlib import Path; from dreambooth import files\n"
            "with files.exclusive(Path(sys.argv[1])):\n"
            "    print('held', flush=True); time.sleep(1); (Path(sys.argv[1]) / 'done').write_text('x')\n")
    proc = subprocess.Popen([sys.executable, "-c", code, str(tmp_path)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    with files.exclusive(tmp_path):
        assert (tmp_path / "done").exists()                               # it finished before we got in
    assert proc.wait() == 0
