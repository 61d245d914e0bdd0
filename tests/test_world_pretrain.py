"""Toy-scale pretraining of the world's diffusion models: files, resume, and the cascade running
through diffusers' own IF pipelines."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace

import pytest
import torch
from diffusers import DiffusionPipeline
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

from dreambooth.superres.conditioning import consistent_with, downsample, lowres_condition, upsample
from dreambooth.tiny import build_clip_tokenizer
from dreambooth.world.defaults import MODELS
from dreambooth.world.pretrain.diffusion import DiffusionRun, random_crop, train_diffusion, world_scheduler
from dreambooth.world.vocab import world_words


@pytest.fixture(scope="module")
def text_parts(tmp_path_factory):
    out = tmp_path_factory.mktemp("world")
    tok_dir = build_clip_tokenizer(out / "tokenizer", extra_words=world_words())
    tok = CLIPTokenizer.from_pretrained(tok_dir)
    CLIPTextModel(CLIPTextConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                 num_attention_heads=2, max_position_embeddings=77, eos_token_id=tok.eos_token_id,
                                 bos_token_id=tok.bos_token_id, pad_token_id=tok.pad_token_id)
                  ).save_pretrained(out / "text_encoder")
    return out


def toy(kind: str, steps: int) -> DiffusionRun:
    return DiffusionRun(kind=kind, scale="toy", steps=steps, batch_size=4, cache_size=16, checkpoint_every=2)


def test_pretraining_resumes_from_its_checkpoint(text_parts, tmp_path):
    logs = []
    train_diffusion(toy("base", 2), tmp_path, text_parts / "tokenizer", text_parts / "text_encoder", logs.append)
    shutil.rmtree(tmp_path / "base")            # as if interrupted after the step-2 checkpoint
    train_diffusion(toy("base", 4), tmp_path, text_parts / "tokenizer", text_parts / "text_encoder", logs.append)
    assert "base: resumed at step 2" in logs
    assert sorted(p.name for p in (tmp_path / ".base-ckpt").glob("checkpoint-*")) == ["checkpoint-2", "checkpoint-4"]
    # a finished stage is not trained again
    train_diffusion(toy("base", 4), tmp_path, text_parts / "tokenizer", text_parts / "text_encoder", logs.append)
    assert logs[-1].startswith("base: already trained")


def test_cascade_runs_through_diffusers_if_pipelines(text_parts, tmp_path):
    for run in (toy("base", 2), replace(toy("sr", 2), crop=32)):     # the SR model trains on 32 px windows
        train_diffusion(run, tmp_path, text_parts / "tokenizer", text_parts / "text_encoder", lambda m: None)
    base, sr = DiffusionPipeline.from_pretrained(tmp_path / "base"), DiffusionPipeline.from_pretrained(tmp_path / "sr")
    assert (type(base).__name__, type(sr).__name__) == ("IFPipeline", "IFSuperResolutionPipeline")
    g = torch.Generator().manual_seed(0)
    low = base("a red ball on the beach", num_inference_steps=2, output_type="pt", clean_caption=False,
               generator=g).images
    high = sr(image=low, prompt="a red ball on the beach", num_inference_steps=2, noise_level=100, output_type="pt",
              clean_caption=False, generator=g).images
    assert low.shape == (1, 3, 32, 32) and high.shape == (1, 3, 64, 64) and torch.isfinite(high).all()
    # the world's SR model fine-tunes with 32 px inputs (2x), through the same loader
    from dreambooth.config import ModelConfig
    from dreambooth.core.models import load_model
    model = load_model(ModelConfig(pretrained_model_name_or_path=str(tmp_path / "sr")))
    assert model.sr.lowres == 32 and model.resolution == 64 and not model.latent


def test_random_crop_takes_one_window_through_every_tensor():
    x = torch.arange(2 * 6 * 64 * 64, dtype=torch.float32).reshape(2, 6, 64, 64)   # [x_t ; low-res]
    noise = x[:, :3] + 0.5                                                          # the target
    cx, cn = random_crop((x, noise), 32, torch.Generator().manual_seed(3))
    assert cx.shape == (2, 6, 32, 32) and cn.shape == (2, 3, 32, 32)
    i, j = divmod(int(cx[0, 0, 0, 0].item()), 64)
    # the same window in every tensor: the noise target stays aligned with the noisy input
    assert torch.equal(cx, x[..., i:i + 32, j:j + 32]) and torch.equal(cn, noise[..., i:i + 32, j:j + 32])
    assert random_crop((x, noise), 0, torch.Generator()) == (x, noise)


def test_lowres_condition_is_the_degraded_image_not_the_target():
    alphas = world_scheduler().alphas_cumprod
    high = torch.rand(2, 3, 64, 64) * 2 - 1
    low = downsample(high, 32)
    assert low.shape == (2, 3, 32, 32)
    torch.testing.assert_close(low[0, 0, 0, 0], high[0, 0, :2, :2].mean())   # box filter
    clean = lowres_condition(low, 64, torch.zeros_like(high), torch.tensor([0, 0]), alphas)
    # level 0: the upsampled low-res image (not the high-res target), scaled by sqrt(alpha_bar_0) ~ 1
    torch.testing.assert_close(clean, upsample(low, 64) * alphas[0].sqrt(), rtol=1e-5, atol=1e-5)
    assert (clean - high).abs().mean() > 0.05
    noisy = lowres_condition(low, 64, torch.randn_like(high), torch.tensor([999, 999]), alphas)
    assert (noisy - upsample(low, 64)).abs().mean() > 0.5     # the top level is almost pure noise


def test_pretrain_command_builds_every_stage_and_resumes_as_a_no_op(tmp_path):
    from dreambooth.cli.main import main
    from dreambooth.world.pretrain.run import STAGES

    torch.set_num_threads(1)
    out = tmp_path / "world"
    assert main(["world", "pretrain", "--out", str(out), "--scale", "toy"]) == 0
    for folder, marker in (("tokenizer", "vocab.json"), ("text_encoder", "model.safetensors"),
                           ("clip", "model.safetensors"), ("instance", "model.safetensors"),
                           ("base", "model_index.json"), ("sr", "model_index.json")):
        assert (out / folder / marker).exists(), folder
    from dreambooth.world.pretrain.diffusion import SR_SAMPLING    # the SR's measured sampling, as shipped
    assert json.loads((out / "sr" / "dreambooth_sr.json").read_text())["sampling"] == SR_SAMPLING == \
        json.loads((MODELS / "sr" / "dreambooth_sr.json").read_text())["sampling"]
    # finished encoder stages drop their checkpoints; the diffusion ones keep theirs (constant lr after warm-up:
    # rerunning with more steps continues them)
    assert {p.parent.name for p in out.glob(".*-ckpt/checkpoint-*")} == {".base-ckpt", ".sr-ckpt"}
    log = json.loads((out / "pretrain_log.json").read_text())
    assert set(log[0]["seconds"]) == {*STAGES, "wall"} and log[0]["parallel"]    # two lane processes ran
    assert "== base" in (out / "pretrain-lane0.log").read_text()                        # each lane logs to its file
    main(["world", "pretrain", "--out", str(out), "--scale", "toy", "--serial"])  # everything done: nothing retrained
    again = json.loads((out / "pretrain_log.json").read_text())[1]["seconds"]
    assert max(v for k, v in again.items() if k != "wall") < 5


@pytest.mark.parametrize("kind", ["base", "sr"])
def test_world_unets_can_set_a_global_colour(kind):
    """With one channel per GroupNorm group, the norm before conv_out is an instance norm: it fixes
    every output channel's spatial mean, so the model cannot predict the noise's mean (DC) or a global
    colour (the first shipped models had this flaw). Every norm must group several channels."""
    from dreambooth.world.pretrain.diffusion import SIZES, build_unet

    unet = build_unet(kind, SIZES[(kind, "full")], cross_attention_dim=128)
    norms = [m for m in unet.modules() if isinstance(m, torch.nn.GroupNorm)]
    assert norms and all(m.num_channels // m.num_groups >= 2 for m in norms)
    assert unet.conv_norm_out.num_channels // unet.conv_norm_out.num_groups >= 4


def test_residual_v_is_the_v_target_of_upsampled_plus_residual():
    """The SR model predicts r with x0 = upsampled + r; what it hands the pipeline is plain v."""
    from dreambooth.core.losses import noise_target
    from dreambooth.superres.residual import v_from_residual

    alphas = world_scheduler().alphas_cumprod
    g = torch.Generator().manual_seed(0)
    x0, noise, up = (torch.randn(3, 3, 8, 8, generator=g) for _ in range(3))
    t = torch.tensor([0, 500, 999])
    x_t = alphas[t].sqrt().view(-1, 1, 1, 1) * x0 + (1 - alphas[t]).sqrt().view(-1, 1, 1, 1) * noise
    v = v_from_residual(x0 - up, x_t, up, alphas[t])
    torch.testing.assert_close(v, noise_target("v_prediction", x0, noise, t, alphas), rtol=1e-4, atol=1e-3)


def test_consistency_box_filters_back_to_the_low_res_image_and_never_moves_away_from_the_truth():
    g = torch.Generator().manual_seed(0)
    truth = torch.rand(4, 3, 8, 8, generator=g) * 1.2 - 0.6
    low = downsample(truth, 4)
    guess = truth + 0.1 * torch.randn(truth.shape, generator=g)              # stays inside [-1, 1]
    fixed = consistent_with(guess, low)
    assert torch.allclose(downsample(fixed, 4), low, atol=1e-6)            # the low-res image is kept exactly
    assert torch.allclose(consistent_with(truth, low), truth, atol=1e-6)   # a consistent image is left alone
    cell_detail = lambda x: x - torch.nn.functional.interpolate(downsample(x, 4), scale_factor=2, mode="nearest")
    assert torch.allclose(cell_detail(fixed), cell_detail(guess), atol=1e-6)   # the detail inside a cell is the model's
    # Projections onto sets that hold the truth: never further from it, even when the clamp acts
    for wild in (guess, (truth + torch.randn(truth.shape, generator=g)).clamp(-1, 1)):
        assert ((consistent_with(wild, low) - truth).flatten(1).norm(dim=1) <= (wild - truth).flatten(1).norm(dim=1) + 1e-6).all()


def test_residual_sr_starts_as_its_bicubic_input_and_loads_through_diffusers(text_parts, tmp_path):
    """A fresh (zero-output) residual SR model reproduces the bicubic upsampling of its input through
    the IF pipeline (the copy is built in, and our sampler hands the pipeline that upsampling), made
    consistent with the low-res image: its box-filtered output is that image."""
    import numpy as np
    from PIL import Image

    from dreambooth.config import ModelConfig
    from dreambooth.core.models import load_model
    from dreambooth.core.sample import generate
    from dreambooth.superres.residual import ResidualSRUNet, lowres_upsample

    train_diffusion(toy("sr", 1), tmp_path, text_parts / "tokenizer", text_parts / "text_encoder", lambda m: None)
    model = load_model(ModelConfig(pretrained_model_name_or_path=str(tmp_path / "sr")))
    assert type(model.pipe.unet) is ResidualSRUNet and model.sr.upsample is lowres_upsample   # trains as it samples
    torch.nn.init.zeros_(model.pipe.unet.conv_out.weight)
    torch.nn.init.zeros_(model.pipe.unet.conv_out.bias)
    low = Image.fromarray((np.random.RandomState(0).rand(32, 32, 3) * 128 + 64).astype(np.uint8))   # no clamping
    [(_, out)] = generate(model.pipe, ["a red ball"], [0], steps=4, guidance_scale=1.0, images=[low], noise_level=0)
    low_t = torch.from_numpy(np.asarray(low, dtype=np.float32) / 127.5 - 1).permute(2, 0, 1)[None]
    expected = consistent_with(lowres_upsample(low_t, 64), low_t)
    got = torch.from_numpy(np.asarray(out, dtype=np.float32) / 127.5 - 1).permute(2, 0, 1)[None]
    # level-0 noise augmentation (std 0.006) and 8-bit output are all that separate them
    assert (got - expected).abs().max() < 0.04
    assert (downsample(got, 32) - low_t).abs().max() < 0.02 < (downsample(lowres_upsample(low_t, 64), 32) - low_t).abs().max()


def test_a_lane_takes_the_core_a_finished_lane_left_and_keeps_it_only_if_faster(tmp_path, monkeypatch):
    from dreambooth.world.pretrain import cores

    monkeypatch.setattr(cores.os, "cpu_count", lambda: 2)
    threads = [1]
    monkeypatch.setattr(cores.torch, "get_num_threads", lambda: threads[0])
    monkeypatch.setattr(cores.torch, "set_num_threads", lambda n: threads.__setitem__(0, n))
    share = cores.CoreShare(tmp_path, row=0, log=lambda m: None)
    cores.marker(tmp_path, 0).touch()           # its own marker (a stale one) does not count
    share.after_window(2.2)
    assert threads[0] == 1
    cores.marker(tmp_path, 1).touch()           # the other lane finished
    share.after_window(2.2)
    assert threads[0] == 2
    share.after_window(1.3)                     # faster: kept
    share.after_window(1.3)
    assert threads[0] == 2
    slow = cores.CoreShare(tmp_path, row=0, log=lambda m: None)
    threads[0] = 1
    slow.after_window(2.2)
    slow.after_window(5.0)                      # a busy machine: two threads were slower, back to one for good
    slow.after_window(5.0)
    assert threads[0] == 1 and slow.settled
    cores.clear_markers(tmp_path)
    assert not list(tmp_path.glob(".lane*.done"))
