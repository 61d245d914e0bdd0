"""Step (b): super-resolution fine-tuning through the same loop, on the three SR layouts."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from diffusers import DiffusionPipeline
from safetensors.torch import load_file

from dreambooth.cli import main
from dreambooth.core.models import SuperResolution
from dreambooth.tiny import build_tiny_if_sr, build_tiny_sd_upscaler

FAST = ["--report_to=none", "--validation_inference_steps=2"]


@pytest.fixture(scope="module")
def if_sr(tmp_path_factory):
    return build_tiny_if_sr(tmp_path_factory.mktemp("m") / "if-sr")


@pytest.fixture(scope="module")
def x4(tmp_path_factory):
    return build_tiny_sd_upscaler(tmp_path_factory.mktemp("m") / "x4")


def test_condition_holds_the_degraded_image_not_the_target():
    sr = SuperResolution(lowres=16, noising_alphas=torch.linspace(1.0, 0.01, 1000), max_level=250, fixed_level=0)
    x_t = torch.randn(2, 3, 64, 64)
    low = torch.rand(2, 3, 16, 16) * 2 - 1
    x_in, level = sr.condition(x_t, low=low, gen=torch.Generator().manual_seed(0))
    assert x_in.shape == (2, 6, 64, 64) and level.tolist() == [0, 0]
    assert torch.equal(x_in[:, :3], x_t)                                   # first the noisy target
    up = torch.nn.functional.interpolate(low, size=(64, 64), mode="bilinear", align_corners=True)
    torch.testing.assert_close(x_in[:, 3:], up)          # then the (level-0, i.e. clean) upsampled low-res image
    assert x_in[:, 3:].abs().max() <= 1.05                                 # in the image's value range
    sr.fixed_level = None
    _, levels = sr.condition(torch.randn(64, 3, 64, 64), low=torch.zeros(64, 3, 16, 16),
                             gen=torch.Generator().manual_seed(1))
    assert 0 <= levels.min() and levels.max() < 250 and len(set(levels.tolist())) > 10


@pytest.mark.parametrize("layout", ["if_sr", "x4"])
def test_sr_layouts_fine_tune_and_load(layout, request, photos, tmp_path):
    model = request.getfixturevalue(layout)
    out = tmp_path / "out"
    assert main(["train", f"--model={model}", f"--instance-data-dir={photos}", "--class-name=dog",
                 "--max-train-steps=2", "--learning-rate=1e-3", f"--output-dir={out}",
                 "--validation-prompt=a photo of <id> dog", "--validation-steps=2", "--num-validation-images=1"]
                + FAST) == 0
    plan = json.loads((out / "plan.json").read_text())
    assert "super-resolution from 16px" in plan["model_kind"] and plan["resolution"] == 64
    before = load_file(model / "unet" / "diffusion_pytorch_model.safetensors")
    after = load_file(out / "unet" / "diffusion_pytorch_model.safetensors")
    assert any(not torch.equal(before[k], after[k]) for k in before)
    assert type(DiffusionPipeline.from_pretrained(out)).__name__ == type(DiffusionPipeline.from_pretrained(model)).__name__
    assert (out / "validation" / "step-000002.png").exists()


def test_sr_resume_matches_straight_run(x4, photos, tmp_path):
    args = ["train", f"--model={x4}", f"--instance-data-dir={photos}", "--class-name=dog", "--learning-rate=1e-3",
            "--checkpointing-steps=2", "--max-train-steps=4"] + FAST
    assert main(args + [f"--output-dir={tmp_path / 'straight'}"]) == 0
    (tmp_path / "split").mkdir()
    shutil.copytree(tmp_path / "straight" / "checkpoint-2", tmp_path / "split" / "checkpoint-2")
    assert main(args + [f"--output-dir={tmp_path / 'split'}", "--resume-from-checkpoint=latest"]) == 0
    a = load_file(tmp_path / "straight" / "unet" / "diffusion_pytorch_model.safetensors")
    b = load_file(tmp_path / "split" / "unet" / "diffusion_pytorch_model.safetensors")
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=1e-6, rtol=1e-5)
