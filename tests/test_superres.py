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


def test_random_window_cuts_the_same_place_of_x0_and_its_low_res():
    from dreambooth.superres.conditioning import downsample, random_window
    x0 = torch.rand(3, 3, 16, 16) * 2 - 1
    low = downsample(x0, 8)                                              # 2 x0 pixels per low-res pixel
    places = set()
    for seed in range(30):
        xw, lw = random_window(x0, low, 8, torch.Generator().manual_seed(seed))
        assert xw.shape == (3, 3, 8, 8) and lw.shape == (3, 3, 4, 4)
        torch.testing.assert_close(lw, downsample(xw, 4))               # the low-res pixels of exactly that window
        places.add(next((i, j) for i in range(9) for j in range(9) if torch.equal(x0[..., i:i + 8, j:j + 8], xw)))
    assert len(places) > 5 and all(i % 2 == 0 and j % 2 == 0 for i, j in places)   # varied, on whole low-res pixels
    latents, image = torch.randn(1, 4, 8, 8), torch.randn(1, 3, 8, 8)   # x4 upscaler: low-res at latent size
    xw, lw = random_window(latents, image, 4, torch.Generator().manual_seed(0))
    i, j = next((i, j) for i in range(5) for j in range(5) if torch.equal(latents[..., i:i + 4, j:j + 4], xw))
    assert torch.equal(lw, image[..., i:i + 4, j:j + 4])


def test_sr_crop_window_in_model_units():
    from dreambooth.errors import DreamboothError
    from dreambooth.superres.conditioning import window_size
    assert window_size(None, 64, 64, 32, 4) is None and window_size(64, 64, 64, 32, 4) is None   # whole views
    assert window_size(32, 64, 64, 32, 4) == 32                           # the world's SR: pixels
    assert window_size(128, 256, 64, 64, 4) == 32                         # x4 upscaler: latents (VAE factor 4)
    with pytest.raises(DreamboothError, match=r"--sr_crop 30 .* multiple of 8 output pixels.*--sr_crop 24"):
        window_size(30, 64, 64, 32, 4)


def test_sr_crop_trains_on_windows(if_sr, photos, tmp_path, monkeypatch, capsys):
    from diffusers import UNet2DConditionModel
    seen, forward = [], UNet2DConditionModel.forward

    def recording(self, sample, *args, **kwargs):
        if torch.is_grad_enabled():                                       # training steps, not validation
            seen.append(tuple(sample.shape[-2:]))
        return forward(self, sample, *args, **kwargs)
    monkeypatch.setattr(UNet2DConditionModel, "forward", recording)
    args = ["train", f"--model={if_sr}", f"--instance-data-dir={photos}", "--class-name=dog", "--max-train-steps=3",
            f"--output-dir={tmp_path / 'out'}"] + FAST
    assert main(args + ["--sr-crop=32"]) == 0
    assert seen == [(32, 32)] * 3                                         # a 32 px window of the 64 px views
    assert main(args + ["--sr_crop=36"]) != 0
    assert "--sr_crop 36 does not fit" in capsys.readouterr().err
