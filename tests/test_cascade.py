"""Both steps in one command (defaulting to the world's models), SR prior pairs from step (a)'s class
images, cascade generation base -> SR, and the errors around them. SR resume: tests/test_superres.py."""

from __future__ import annotations

import hashlib

import pytest
import torch
import yaml
from PIL import Image
from safetensors.torch import load_file

from conftest import draw_subject
from dreambooth.cli import main
from dreambooth.config import TrainJob
from dreambooth.core.cascade import resolve_models
from dreambooth.tiny import build_tiny_if_sr
from dreambooth.world import defaults

FAST = ["--report_to=none", "--class-inference-steps=2", "--num-class-images=2", "--max-train-steps=2",
        "--learning-rate=1e-3"]


@pytest.fixture(scope="module")
def tiny_if_sr32(tmp_path_factory):
    """IF stage II layout, 32 -> 64 px: the tiny IF stage I's 32 px samples are its input (as the world's SR)."""
    return build_tiny_if_sr(tmp_path_factory.mktemp("m") / "if-sr32", lowres=32)


@pytest.fixture(scope="module")
def world(tiny_if, tiny_if_sr32):
    """The world's default model folders pointed at the tiny cascade."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(defaults, "WORLD_BASE", tiny_if)
        mp.setattr(defaults, "WORLD_SR", tiny_if_sr32)
        yield tiny_if, tiny_if_sr32


@pytest.fixture(scope="module")
def cascade(world, tmp_path_factory):
    """`dreambooth train` with no --model: step (a) on the world base, step (b) on the world SR, prior ON."""
    root = tmp_path_factory.mktemp("cascade")
    (root / "photos").mkdir()
    for i in range(3):
        draw_subject(i).save(root / "photos" / f"{i}.jpg")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("DREAMBOOTH_CACHE", str(root / "cache"))
        assert main(["train", f"--instance-data-dir={root / 'photos'}", "--class-name=dog", "--with-prior-preservation",
                     "--sr-max-train-steps=1", "--sr-crop=32", "--num-unconditional-images=1",
                     f"--output-dir={root / 'out'}"] + FAST) == 0
    return root / "out"


def read_yaml(path):
    return yaml.safe_load(path.read_text())


def test_one_command_trains_base_then_sr_with_step_a_class_images(cascade, world):
    base_model, sr_model = world
    a, b = read_yaml(cascade / "dreambooth.yaml"), read_yaml(cascade / "sr" / "dreambooth.yaml")
    assert a["model"] == {**a["model"], "pretrained_model_name_or_path": str(base_model), "sr_model": str(sr_model)}
    assert b["model"]["pretrained_model_name_or_path"] == str(sr_model) and b["model"]["sr_model"] == "none"
    for key in ("identifier", "instance_prompt"):                       # same identifier and prompts
        assert a["data"][key] == b["data"][key]
    assert a["prior"]["class_prompt"] == b["prior"]["class_prompt"] and a["train"]["seed"] == b["train"]["seed"]
    assert b["train"]["max_train_steps"] == 1 and a["train"]["max_train_steps"] == 2
    assert b["superres"]["sr_crop"] == 32
    # step (a) trained on a sample of the empty prompt too; step (b)'s pairs come from the class images only
    assert (a["prior"]["num_unconditional_images"], b["prior"]["num_unconditional_images"]) == (1, 0)
    assert (cascade / "identifier.json").read_text() == (cascade / "sr" / "identifier.json").read_text()
    # SR class pairs: step (a)'s class images (32 px base samples) upscaled by the untouched SR model to 64 px
    step_a_class_dir = a["prior"]["class_data_dir"]
    assert b["prior"]["class_data_dir"] == step_a_class_dir
    sr_plan = (cascade / "sr" / "plan.json").read_text()
    assert '"class_views": 2' in sr_plan and "super-resolution from 32px" in sr_plan
    targets = sorted((cascade.parent / "cache" / "class_images").glob("*/class_*.png"))
    assert sorted({im.size for im in map(Image.open, targets)}) == [(32, 32), (64, 64)]
    assert (cascade / "sr" / "checkpoint-1").is_dir() and (cascade / "checkpoint-2").is_dir()
    before = load_file(sr_model / "unet" / "diffusion_pytorch_model.safetensors")
    after = load_file(cascade / "sr" / "unet" / "diffusion_pytorch_model.safetensors")
    assert any(not torch.equal(before[k], after[k]) for k in before)


def test_cascade_generate_base_then_sr(cascade, tmp_path):
    args = ["generate", f"--model={cascade}", "--prompt=a photo of <id> dog", "--prompt=a <id> dog in the snow",
            "--seeds", "3", "7", "--steps=2", "--sr-steps=2", "--sr-guidance-scale=2", "--sr-noise-level=50"]
    assert main(args + [f"--out={tmp_path / 'a.png'}"]) == 0
    assert main(args + [f"--out={tmp_path / 'b.png'}"]) == 0
    assert Image.open(tmp_path / "a.png").size == (2 * 64, 2 * 64)     # 2 seeds x 2 prompts of 64 px SR output
    images = tmp_path / "a-images"
    assert sorted(p.name for p in images.iterdir()) == sorted(
        f"p{j}-seed{s}{sfx}.png" for j in (0, 1) for s in (3, 7) for sfx in ("", "-base"))
    assert Image.open(images / "p1-seed7-base.png").size == (32, 32) and Image.open(images / "p1-seed7.png").size == (64, 64)
    digest = lambda p: hashlib.sha256(p.read_bytes()).hexdigest()               # noqa: E731
    assert digest(tmp_path / "a.png") == digest(tmp_path / "b.png")            # fixed seeds: same pixels
    assert main(args + ["--no-sr", f"--out={tmp_path / 'c.png'}"]) == 0
    assert Image.open(tmp_path / "c.png").size == (2 * 32, 2 * 32)
    assert digest(tmp_path / "c-images" / "p0-seed3.png") == digest(images / "p0-seed3-base.png")


def run_error(capsys, argv) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return err.strip().splitlines()[-1]


def test_generate_refuses_an_sr_model_as_base(capsys, world, cascade):
    assert "super-resolution model" in run_error(capsys, ["generate", f"--model={cascade / 'sr'}", "--prompt=x"])
    err = run_error(capsys, ["generate", f"--model={cascade}", f"--sr-model={world[0]}", "--prompt=x"])
    assert "is not a super-resolution model" in err


def test_train_sr_refuses_a_base_model(capsys, tiny_if, photos, tmp_path):
    err = run_error(capsys, ["train-sr", f"--model={tiny_if}", f"--instance-data-dir={photos}", "--class-name=dog",
                             f"--output-dir={tmp_path / 'out'}"])
    assert "base text-to-image model (IFPipeline)" in err and "dreambooth train" in err
    assert not (tmp_path / "out").exists()


def test_sr_prior_without_step_a_class_images_says_what_to_do(capsys, tiny_if_sr32, photos, tmp_path):
    argv = ["train-sr", f"--model={tiny_if_sr32}", f"--instance-data-dir={photos}", "--class-name=dog",
            "--with-prior-preservation", f"--output-dir={tmp_path / 'out'}"]
    assert "step (a)" in run_error(capsys, argv) and "--class_data_dir" in run_error(capsys, argv)
    (tmp_path / "empty").mkdir()
    err = run_error(capsys, argv + [f"--class-data-dir={tmp_path / 'empty'}"])
    assert str(tmp_path / "empty") in err and "step (a)" in err


def test_missing_default_models_name_the_folder(capsys, photos, tmp_path, monkeypatch):
    monkeypatch.setattr(defaults, "WORLD_BASE", tmp_path / "world" / "base")
    err = run_error(capsys, ["train", f"--instance-data-dir={photos}", "--class-name=dog",
                             f"--output-dir={tmp_path / 'out'}"])
    assert str(tmp_path / "world" / "base") in err and "--model" in err and "dreambooth world pretrain" in err


def test_model_defaults(world, tmp_path, monkeypatch):
    base, sr = world
    job = TrainJob()
    assert (resolve_models(job).model.pretrained_model_name_or_path, resolve_models(job).model.sr_model) == \
        (str(base), str(sr))
    job.model.sr_model = "none"                                            # --no-sr
    assert (resolve_models(job).model.pretrained_model_name_or_path, resolve_models(job).model.sr_model) == \
        (str(base), "none")
    job.model.pretrained_model_name_or_path, job.model.sr_model = "my-base", "auto"   # own model: no step (b)
    assert resolve_models(job).model.sr_model == "none"
    monkeypatch.setattr(defaults, "WORLD_SR", tmp_path / "missing")
    with pytest.raises(Exception, match="--no-sr"):
        resolve_models(TrainJob())


def test_sr_prior_uses_large_class_images_as_they_are(capsys, tiny_if_sr32, photos, tmp_path):
    """Class images at least as large as the SR output are targets themselves: nothing is upscaled."""
    classes = tmp_path / "classes"
    classes.mkdir()
    for i in range(2):
        draw_subject(10 + i).save(classes / f"c{i}.png")               # 72 px >= the SR's 64 px
    out = tmp_path / "out"
    assert main(["train-sr", f"--model={tiny_if_sr32}", f"--instance-data-dir={photos}", "--class-name=dog",
                 "--with-prior-preservation", f"--class-data-dir={classes}", f"--output-dir={out}"]
                + FAST + ["--max-train-steps=1"]) == 0
    assert f"2 class images in {classes} (2 found, 0 to generate)" in capsys.readouterr().out
    assert read_yaml(out / "dreambooth.yaml")["prior"]["class_data_dir"] == str(classes)
    assert sorted(p.name for p in classes.iterdir()) == ["c0.png", "c1.png"]


def test_sr_folder_recommends_its_sampling_and_flags_override_it(cascade, world, tmp_path):
    import json
    import shutil

    from dreambooth.core.generate import open_model, sr_sampling
    from dreambooth.errors import DreamboothError
    # the fine-tuned SR (step b) keeps the low-res size it was trained at for the next reader
    assert json.loads((cascade / "sr" / "dreambooth_sr.json").read_text()) == {"lowres_resolution": 32}
    sr, _ = open_model(str(world[1]))
    assert sr_sampling(sr, "sr", steps=None, noise_level=None, guidance_scale=None, fallback_steps=7) == \
        {"steps": 7, "guidance_scale": 4.0}                        # no recommendation: IF stage II's own guidance
    folder = shutil.copytree(world[1], tmp_path / "sr")
    recommended = {"steps": 3, "noise_level": 0, "guidance_scale": 1.0}
    (folder / "dreambooth_sr.json").write_text(json.dumps({"lowres_resolution": 32, "sampling": recommended}))
    sr, _ = open_model(str(folder))
    assert sr_sampling(sr, "sr", steps=None, noise_level=None, guidance_scale=None, fallback_steps=7) == recommended
    assert sr_sampling(sr, "sr", steps=5, noise_level=20, guidance_scale=2.0, fallback_steps=7) == \
        {"steps": 5, "noise_level": 20, "guidance_scale": 2.0}
    with pytest.raises(DreamboothError, match="--sr-noise-level must be in"):
        sr_sampling(sr, "sr", steps=None, noise_level=10_000, guidance_scale=None, fallback_steps=7)
    # step (b)'s class pairs are drawn that way too (and cached under that recipe)
    from accelerate import Accelerator

    from dreambooth.config import load_yaml
    from dreambooth.core.class_prior import plan_class_prior
    job = load_yaml(cascade / "sr" / "dreambooth.yaml")
    plan = plan_class_prior(job, sr, "a photo of dog", Accelerator(cpu=True))
    assert (plan.steps, plan.guidance_scale, plan.extra) == (3, 1.0, {"noise_level": 0})
    assert plan.recipe.endswith("/3steps/cfg1.0/noise_level0")


def test_step_b_takes_this_commands_sr_settings(cascade):
    """A rerun (say, to resume) with other SR flags trains step (b) with them, not with step (a)'s record."""
    from dreambooth.config import load_yaml
    from dreambooth.core.cascade import sr_step
    job = load_yaml(cascade / "dreambooth.yaml")
    job.superres.sr_crop, job.superres.sr_max_noise_level = 16, 100
    b = sr_step(job, cascade)
    assert (b.superres.sr_crop, b.superres.sr_max_noise_level) == (16, 100)
