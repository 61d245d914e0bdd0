"""Class images a killed or careless run left broken: named, redrawn with their own seed, and a torn
or foreign manifest rebuilt from what is on disk, each with a note in the plan."""

from __future__ import annotations

import io
import json
import subprocess
import sys

import numpy as np
from PIL import Image

from dreambooth.cli import main
from dreambooth.data.class_images import MANIFEST, read_manifest


def pixels(png) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(png) if isinstance(png, bytes) else png), dtype=np.int16)


def test_broken_class_images_and_a_torn_manifest_are_repaired_with_notes(tiny_sd, photos, tmp_path, capsys):
    class_dir = tmp_path / "class"
    argv = ["train", f"--model={tiny_sd}", f"--instance-data-dir={photos}", "--class-name=dog",
            "--with-prior-preservation", "--num-class-images=3", f"--class-data-dir={class_dir}",
            "--max-train-steps=1", "--class_inference_steps=2", "--report_to=none"]
    assert main(argv + [f"--output-dir={tmp_path / 'a'}"]) == 0
    original = (class_dir / "class_00001.png").read_bytes()

    # what a kill -9 in an older version, or a bad copy, leaves behind
    (class_dir / "class_00001.png").write_bytes(original[: len(original) // 2])        # truncated
    (class_dir / MANIFEST).write_text('{"key": "3f2a", "images": {"class_00000.png": 12')  # torn
    (class_dir / "holiday.jpg").write_bytes(b"not a jpeg")                              # the user's own file
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (class_dir / f".class_00002.png.{dead.pid}.tmp").write_bytes(b"half")             # a killed write
    capsys.readouterr()

    assert main(argv + [f"--output-dir={tmp_path / 'b'}"]) == 0
    out = capsys.readouterr().out
    assert "2 found, 1 to generate" in out
    assert "class_00001.png (truncated or corrupt" in out and "holiday.jpg (not an image)" in out
    assert "manifest" in out and "was unreadable" in out and "rebuilt it from" not in out
    # redrawn with its own seed: alone in its batch (it was one of 3), so some CPUs round a pixel one level apart
    redrawn = pixels(class_dir / "class_00001.png")
    assert np.abs(redrawn - pixels(original)).max() <= 1
    assert np.abs(redrawn - pixels(class_dir / "class_00000.png")).mean() > 10    # another seed's is another image
    assert (class_dir / "holiday.jpg").exists()                          # the user's file is never deleted
    assert not list(class_dir.glob(".*.tmp"))
    manifest = json.loads((class_dir / MANIFEST).read_text())
    assert sorted(manifest["images"]) == ["class_00000.png", "class_00001.png", "class_00002.png"]
    plan = json.loads((tmp_path / "b" / "plan.json").read_text())
    assert any("holiday.jpg" in n for n in plan["notes"]) and any("manifest" in n for n in plan["notes"])
    assert plan["class_views"] == 3


def test_foreign_manifests(tmp_path):
    (tmp_path / "class_00000.png").write_bytes(b"")
    (tmp_path / MANIFEST).write_text('["not", "ours"]')
    manifest, note = read_manifest(tmp_path, "k1", "a photo of dog", "DDPM")
    assert manifest["images"] == {"class_00000.png": None} and "rebuilt from the 1 class images" in note
    assert json.loads((tmp_path / MANIFEST).read_text())["key"] == "k1"     # saved, whole
    manifest, note = read_manifest(tmp_path, "k2", "a photo of cat", "DDPM")
    assert "generated for another model, prompt, resolution or sampler (prompt 'a photo of dog')" in note


def test_the_cache_follows_the_weights_not_only_the_folder(tiny_sd, photos, tmp_path, capsys, monkeypatch):
    """A model folder retrained in place (or a new release of the micro world's models) must not be
    given the old weights' class images from the cache; the same weights are."""
    import shutil

    from safetensors.torch import load_file, save_file

    monkeypatch.setenv("DREAMBOOTH_CACHE", str(tmp_path / "cache"))
    model = tmp_path / "model"
    shutil.copytree(tiny_sd, model)
    argv = ["train", f"--model={model}", f"--instance-data-dir={photos}", "--class-name=dog",
            "--with-prior-preservation", "--num-class-images=2", "--max-train-steps=1", "--class_inference_steps=2",
            "--report_to=none", "--validation_inference_steps=2"]

    def plan_says(out: str) -> str:
        capsys.readouterr()
        assert main(argv + [f"--output-dir={tmp_path / out}"]) == 0
        return capsys.readouterr().out

    assert "(0 found, 2 to generate)" in plan_says("a")
    assert "(2 found, 0 to generate)" in plan_says("b")
    weights = model / "unet" / "diffusion_pytorch_model.safetensors"
    tensors = load_file(weights)
    name = sorted(tensors)[0]
    tensors[name] = tensors[name] + 0.01
    save_file(tensors, weights)                               # the same folder, other weights
    assert "(0 found, 2 to generate)" in plan_says("c")
    assert len(list((tmp_path / "cache" / "class_images").iterdir())) == 2


def test_unconditional_prior_images_are_drawn_once_for_every_class(tiny_sd, photos, tmp_path, capsys, monkeypatch):
    """--num_unconditional_images: samples of the empty prompt, cached apart from any class, trained
    among the class images on the empty prompt."""
    from dreambooth.core import setup
    monkeypatch.setenv("DREAMBOOTH_CACHE", str(tmp_path / "cache"))
    seen, build = [], setup.conditioning

    def recording(*args, **kwargs):
        text = build(*args, **kwargs)
        return lambda inst, cls, dropped=None: (seen.append((kwargs["n_prompted"], list(cls))), text(inst, cls, dropped))[1]
    monkeypatch.setattr(setup, "conditioning", recording)
    argv = ["train", f"--model={tiny_sd}", f"--instance-data-dir={photos}", "--with-prior-preservation",
            "--num-class-images=2", "--num_unconditional_images=2", "--max-train-steps=4", "--class_inference_steps=2",
            "--report_to=none", "--validation_inference_steps=2"]
    assert main(argv + ["--class-name=dog", f"--output-dir={tmp_path / 'a'}"]) == 0
    assert "unconditional prior: 2 samples of the empty prompt" in capsys.readouterr().out
    folders = {json.loads((d / MANIFEST).read_text())["prompt"]: d for d in (tmp_path / "cache" / "class_images").iterdir()}
    assert set(folders) == {"a photo of dog", ""} and len(list(folders[""].glob("class_*.png"))) == 2
    assert {n for n, _ in seen} == {2} and {c for _, cls in seen for c in cls} == {0, 1, 2, 3}   # 2 class + 2 blank
    assert json.loads((tmp_path / "a" / "plan.json").read_text())["class_views"] == 2
    assert main(argv + ["--class-name=cat", f"--output-dir={tmp_path / 'b'}"]) == 0
    assert "(2 found, 0 to generate), trained on the empty prompt" in capsys.readouterr().out      # any class's


def test_images_another_process_drew_meanwhile_are_not_drawn_again(tiny_sd, tmp_path):
    """Planned as missing, found on disk once the folder is ours: nothing is drawn (no extra indices)."""
    from accelerate import Accelerator
    from dreambooth.config import ModelConfig, TrainJob
    from dreambooth.core.class_prior import ClassPlan, draw_class_images
    from dreambooth.core.models import load_model
    from dreambooth.data.class_images import ClassImageJob
    from PIL import Image
    for i in range(2):
        Image.new("RGB", (32, 32), (i * 90, 0, 0)).save(tmp_path / f"class_{i:05d}.png")
    job = ClassImageJob("a photo of dog", tmp_path, wanted=2, found=0, key="k")       # as planned before
    model = load_model(ModelConfig(pretrained_model_name_or_path=str(tiny_sd)))
    draw_class_images(ClassPlan(job, "recipe", steps=2), TrainJob(), model, Accelerator(cpu=True), {})
    assert job.found == 2 and job.generated == 0 and sorted(p.name for p in tmp_path.glob("class_*")) == [
        "class_00000.png", "class_00001.png"]
