"""Pretraining the micro world's two diffusion models from scratch.

base: text -> 32x32 pixels, a pixel-space UNet2DConditionModel saved as an `IFPipeline` folder
      (DeepFloyd IF stage I layout) with micro-CLIP's frozen text tower as its text encoder.
sr:   32 -> 64, the IF stage II layout (`IFSuperResolutionPipeline`): the noisy 64x64 image is
      concatenated with the noise-augmented upsampled 32x32 image, the augmentation level is the
      UNet's class label.

One loop serves both: the only difference, how the UNet input is built, is chosen at setup.
Captions are encoded once (the caption set is small), 10% are dropped to the empty prompt so
classifier-free guidance works. The weights at the end of the cosine decay are what gets shipped:
an EMA (decay 0.998) of a 2000-step run still carried the early, noisy weights and read worse
(base samples' class recognized 0.38 vs 0.53 at step 1750; SR 27.55 vs 27.76 dB, docs/microworld.md).

The recipe (measured on this 2-core CPU, docs/microworld.md): v-prediction with Min-SNR-5 "+1"
weighting (full weight at the high-noise end, where sampling from pure noise decides layout and
colour; an epsilon loss barely sees errors there), lr 1e-3 with a short warm-up and cosine decay,
GroupNorm with several channels per group, and 'trailing' timestep spacing when sampling.
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import torch
from diffusers import DDPMScheduler, IFPipeline, IFSuperResolutionPipeline, UNet2DConditionModel
from diffusers.models.attention_processor import AttnProcessor
from tqdm.auto import tqdm
from transformers import CLIPTextModel, CLIPTokenizer

from ...core import checkpoint as ckpt
from ...core.losses import add_noise, min_snr_weights, noise_target, per_sample_mse
from ...core.models import encode_text, tokenize
from ...export.names import SR_HINT
from ...superres.conditioning import downsample, lowres_condition
from ...superres.residual import SCHEDULE, ResidualSRUNet
from . import common, cores
from .common import lr_at
from .data import RenderCache


@dataclass
class UNetSize:
    channels: tuple[int, ...]
    attention: tuple[bool, ...]       # cross-attention at each resolution
    layers_per_block: int = 2
    head_dim: int = 32


SIZES = {
    # Sized for a CPU budget (no GPU was lent when they were trained): attention only at the lowest
    # resolution, where it is cheap; at 16x16 it doubled the step time of the base UNet.
    ("base", "full"): UNetSize((32, 64, 128), (False, False, True), layers_per_block=1),
    ("sr", "full"): UNetSize((32, 64, 64), (False, False, True), layers_per_block=1),
    ("base", "toy"): UNetSize((16, 32), (False, True), layers_per_block=1, head_dim=8),
    ("sr", "toy"): UNetSize((8, 16, 16), (False, False, True), layers_per_block=1, head_dim=8),
}


PREDICTION = "v_prediction"


def world_scheduler() -> DDPMScheduler:
    """'trailing' spacing: sampling starts at t = T - 1 (pure noise, as in training) instead of the
    'leading' default's T - T/steps, which left the shipped models' samples washed out (Lin et al.
    2024, "Common diffusion noise schedules and sample steps are flawed"). The cosine schedule's
    terminal alpha_bar is ~1e-9, so its terminal SNR is already ~zero."""
    return DDPMScheduler(**SCHEDULE, prediction_type=PREDICTION, variance_type="fixed_small", clip_sample=True,
                         timestep_spacing="trailing")


# GroupNorm groups of the world UNets. With 32 groups on 32-channel blocks every group is one
# channel: the norm before conv_out is then an instance norm, which fixes each output channel's
# spatial mean, so the model cannot predict the mean (DC) of the noise or set a global colour.
NORM_GROUPS = 8


def build_unet(kind: str, size: UNetSize, cross_attention_dim: int) -> UNet2DConditionModel:
    """The SR model predicts its residual over the upsampled input (`superres.residual`)."""
    down = tuple("CrossAttnDownBlock2D" if a else "DownBlock2D" for a in size.attention)
    up = tuple("CrossAttnUpBlock2D" if a else "UpBlock2D" for a in reversed(size.attention))
    extra = {"class_embed_type": "timestep"} if kind == "sr" else {}
    return (ResidualSRUNet if kind == "sr" else UNet2DConditionModel)(
        # IF layout: 6 outputs ([epsilon, variance]); the pipelines expect it. With a fixed_small
        # variance schedule only the epsilon half is trained and used.
        sample_size=32 if kind == "base" else 64, in_channels=3 if kind == "base" else 6, out_channels=6,
        block_out_channels=size.channels, layers_per_block=size.layers_per_block, down_block_types=down,
        up_block_types=up, cross_attention_dim=cross_attention_dim, attention_head_dim=size.head_dim,
        norm_num_groups=min(NORM_GROUPS, size.channels[0] // 2), **extra)


@dataclass
class DiffusionRun:
    kind: str = "base"         # base | sr
    scale: str = "full"        # full | toy
    steps: int = 20000
    batch_size: int = 64
    learning_rate: float = 1e-3
    warmup: int = 100
    min_snr_gamma: float = 5.0
    caption_dropout: float = 0.1
    max_aug_level: int = 250   # sr: noise-augmentation levels drawn from [0, max_aug_level); inference uses <= 100
    crop: int = 0              # train on random crops of this size (0: whole images); the UNet is convolutional
    cache_size: int = 30000
    checkpoint_every: int = 500
    seed: int = 0


def train_diffusion(run: DiffusionRun, out_dir: Path, tokenizer_dir: Path, text_encoder_dir: Path,
                    log: Callable[[str], None] = print) -> Path:
    """Train (or resume) one model; writes OUT/<kind>/ as a diffusers pipeline folder."""
    final = out_dir / run.kind
    if (final / "model_index.json").exists():
        log(f"{run.kind}: already trained at {final}")
        return final
    torch.manual_seed(run.seed)
    tokenizer = CLIPTokenizer.from_pretrained(tokenizer_dir)
    text_encoder = CLIPTextModel.from_pretrained(text_encoder_dir).eval().requires_grad_(False)
    sched = world_scheduler()
    alphas = sched.alphas_cumprod
    unet = build_unet(run.kind, SIZES[(run.kind, run.scale)], text_encoder.config.hidden_size)
    # The classic attention processor: on one CPU thread torch's fused SDPA kernel was the slower
    # one for the 64-token attention of these UNets (measured, docs/microworld.md).
    unet.set_attn_processor(AttnProcessor())
    optimizer = torch.optim.AdamW(unet.parameters(), lr=run.learning_rate, weight_decay=0.0)
    lr_sched = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_at(s, run.steps, 1.0, run.warmup))
    work = out_dir / f".{run.kind}-ckpt"
    start = 0
    if ckpt.list_checkpoints(work):
        start = ckpt.load_checkpoint(ckpt.list_checkpoints(work)[-1], {"unet": unet}, optimizer, lr_sched)
        log(f"{run.kind}: resumed at step {start}")

    cache = RenderCache(run.seed, 32 if run.kind == "base" else 64, run.cache_size)
    captions = sorted({s.caption for s in cache.samples})
    ids, mask = tokenize(tokenizer, [""] + captions)
    with torch.no_grad():   # the caption set is small: encode every caption once, row 0 = the empty prompt
        table = torch.cat([encode_text(text_encoder, ids[i:i + 256], mask[i:i + 256]) for i in range(0, len(ids), 256)])
    row = {c: i + 1 for i, c in enumerate(captions)}
    model_input = _sr_input if run.kind == "sr" else _base_input

    unet.train()
    window_start = time.time()
    gen = torch.Generator().manual_seed(run.seed * 1000 + start)
    bar = tqdm(range(start, run.steps), initial=start, total=run.steps, desc=run.kind, unit="step",
               position=common.PROGRESS_ROW, mininterval=5)
    for step in bar:
        idx = torch.randint(0, len(cache), (run.batch_size,), generator=gen)
        x0 = cache.batch(idx.tolist())                                          # (B, 3, s, s)
        rows = torch.tensor([row[cache.samples[i].caption] for i in idx.tolist()])
        rows[torch.rand(run.batch_size, generator=gen) < run.caption_dropout] = 0
        noise = torch.randn(x0.shape, generator=gen)
        t = torch.randint(0, sched.config.num_train_timesteps, (run.batch_size,), generator=gen)
        x_in, labels = model_input(run, x0, add_noise(x0, noise, t, alphas), alphas, gen)
        target = noise_target(PREDICTION, x0, noise, t, alphas)
        x_in, target = random_crop((x_in, target), run.crop, gen)               # views: no copy per step
        pred = unet(x_in, t, encoder_hidden_states=table[rows], class_labels=labels).sample[:, :3]
        weights = min_snr_weights(t, alphas, run.min_snr_gamma, PREDICTION, plus_one=True)
        loss = (per_sample_mse(pred, target) * weights).mean()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0)
        optimizer.step()
        lr_sched.step()
        optimizer.zero_grad(set_to_none=True)
        if (step + 1) % 50 == 0:
            bar.set_postfix(loss=f"{loss.item():.4f}", lr=f"{lr_sched.get_last_lr()[0]:.1e}")
            log(f"{run.kind} step {step + 1}/{run.steps} loss {loss.item():.4f}")
            cores.SHARE.after_window((time.time() - window_start) / 50)
            window_start = time.time()
        if (step + 1) % run.checkpoint_every == 0 or step + 1 == run.steps:
            ckpt.save_checkpoint(work, step + 1, {"unet": unet}, optimizer, lr_sched, limit=2)

    # written beside and renamed in: `final` exists only complete (its model_index.json marks it done)
    tmp = final.with_name(final.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    _save_pipeline(run, unet.eval(), tokenizer, text_encoder, tmp)
    (tmp / "pretrain.json").write_text(json.dumps(asdict(run), indent=1))
    shutil.rmtree(final, ignore_errors=True)
    tmp.rename(final)
    return final


def random_crop(xs: tuple[torch.Tensor, ...], size: int, gen: torch.Generator) -> tuple[torch.Tensor, ...]:
    """The same random size x size window of every tensor in xs, for the whole batch (size 0: xs as
    they are), so the noise target stays aligned with the noisy input. Why: an SR model's job is
    local detail, so training it on 32x32 windows of its 64x64 inputs costs a quarter of the compute
    per image and still teaches the whole job (SR3 and Imagen train their upsamplers on crops)."""
    if not size or size >= xs[0].shape[-1]:
        return xs
    i, j = torch.randint(0, xs[0].shape[-1] - size + 1, (2,), generator=gen).tolist()
    return tuple(x[..., i:i + size, j:j + size] for x in xs)


def _base_input(run, x0, x_t, alphas, gen):
    return x_t, None


def _sr_input(run, x0, x_t, alphas, gen):
    """[noisy 64x64 ; upsampled noise-augmented 32x32], augmentation level as class label (bicubic: the
    residual SR model's own upsampling)."""
    level = torch.randint(0, run.max_aug_level, (x0.shape[0],), generator=gen)
    cond = lowres_condition(downsample(x0, 32), 64, torch.randn(x0.shape, generator=gen), level, alphas,
                            ResidualSRUNet.lowres_upsample)
    return torch.cat([x_t, cond], dim=1), level


# How the world's SR samples best (`dreambooth world gates`, docs/microworld.md): from the un-noised low-res
# input in 4 steps without guidance, 31.4 dB vs bicubic's 28.8; the IF pipeline's defaults (noise level
# 250, guidance 4) fit DeepFloyd's stage II and put it below bicubic. Generate and eval read it from the folder.
SR_SAMPLING = {"steps": 4, "noise_level": 0, "guidance_scale": 1.0}


def _save_pipeline(run: DiffusionRun, unet, tokenizer, text_encoder, folder: Path) -> None:
    common = dict(tokenizer=tokenizer, text_encoder=text_encoder, unet=unet, scheduler=world_scheduler(),
                  safety_checker=None, feature_extractor=None, watermarker=None, requires_safety_checker=False)
    if run.kind == "sr":
        pipe = IFSuperResolutionPipeline(image_noising_scheduler=world_scheduler(), **common)
    else:
        pipe = IFPipeline(**common)
    pipe.save_pretrained(folder, safe_serialization=True)
    if run.kind == "sr":   # the fine-tuner reads the low-res size from here (IF stage II itself is 4x)
        (folder / SR_HINT).write_text(json.dumps({"lowres_resolution": 32, "sampling": SR_SAMPLING}))
