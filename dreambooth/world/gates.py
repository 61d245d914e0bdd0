"""Quality gates of the micro world's diffusion models, measured on held-out prompts and renders.

base:    samples of held-out prompts are read by micro-CLIP (zero-shot class, colour, context); the
         gate compares each rate with the same reading of real renders of the same prompts.
sr:      real 32x32 renders (box-filtered from the true 64x64) are upscaled by the SR model and by
         bicubic interpolation; both are scored against the true 64x64 render (PSNR, and cosine
         similarity under the instance encoder, which sees the fine marks).
cascade: base samples upsampled by the SR model vs bicubically: high-frequency energy of each.
Held-out means the evaluation stream of `pretrain.clip` (HELDOUT_STREAM): no training render.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch
import torch.nn.functional as F
from transformers import CLIPTokenizer

from ..core.generate import open_model, render
from ..data.intake import to_pil, to_tensor
from .encoders import instance_embeds, load_instance_encoder, load_world_clip, to_64
from .pretrain.clip import HELDOUT_STREAM, zero_shot_accuracy
from .pretrain.data import render_batch, sample

SCHEDULER = "auto"


def psnr(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """(B,) PSNR in dB of images in [-1, 1] (peak-to-peak 2)."""
    mse = (a.float() - b.float()).pow(2).flatten(1).mean(1)
    return 10 * torch.log10(4.0 / mse.clamp(min=1e-10))


def heldout(n: int) -> tuple[list[str], torch.Tensor, torch.Tensor]:
    """n held-out scenes -> (full captions, true 64x64 renders (n, 3, 64, 64), attrs (n, 3))."""
    samples = [sample(HELDOUT_STREAM, i, drop_words=False) for i in range(n)]
    return ([s.caption for s in samples], render_batch(samples),
            torch.tensor([(s.cls, s.color, s.context) for s in samples]))


def base_gate(models: Path, n: int = 72, steps: int = 25, guidance_scale: float = 4.0, seed: int = 0) -> tuple[dict, list]:
    """Recognition of class / colour / context in base samples, relative to real renders."""
    model, _ = open_model(str(models / "base"))
    clip, tok = load_world_clip(models / "clip"), CLIPTokenizer.from_pretrained(models / "base" / "tokenizer")
    captions, real, attrs = heldout(n)
    t0 = time.time()
    images = render(model, captions, [seed + i for i in range(n)], steps=steps, guidance_scale=guidance_scale,
                    scheduler=SCHEDULER, batch_size=8)
    seconds = time.time() - t0
    generated = torch.stack([to_tensor(im) for im in images])                         # (n, 3, 32, 32)
    on_real = zero_shot_accuracy(clip, tok, F.avg_pool2d(real, 2), attrs)             # judged at 32 px too
    on_gen = zero_shot_accuracy(clip, tok, generated, attrs)
    return {"prompts": n, "steps": steps, "guidance_scale": guidance_scale, "sampling_seconds": round(seconds, 1),
            **{f"real/{k}": v for k, v in on_real.items()}, **{f"samples/{k}": v for k, v in on_gen.items()},
            **{f"ratio/{k}": on_gen[k] / max(on_real[k], 1e-9) for k in on_real}}, images


def sr_gate(models: Path, n: int = 48, steps: int = 25, noise_level: int = 50, seed: int = 0) -> tuple[dict, tuple]:
    """SR model vs bicubic on real 32 px renders: PSNR and instance-encoder similarity to the truth."""
    model, _ = open_model(str(models / "sr"))
    encoder = load_instance_encoder(models / "instance")
    captions, real, _ = heldout(n)
    low = F.avg_pool2d(real, 2)                                                       # (n, 3, 32, 32)
    images = render(model, captions, [seed + i for i in range(n)], steps=steps, guidance_scale=1.0,
                    scheduler=SCHEDULER, batch_size=8, images=[to_pil(x) for x in low], noise_level=noise_level)
    sr = torch.stack([to_tensor(im) for im in images])
    bicubic = F.interpolate(low, size=64, mode="bicubic", align_corners=False).clamp(-1, 1)
    truth = instance_embeds(encoder, real)
    out = {"images": n, "steps": steps, "noise_level": noise_level}
    for name, x in (("sr", sr), ("bicubic", bicubic)):
        out[f"{name}/psnr"] = psnr(x, real).mean().item()
        out[f"{name}/instance_similarity"] = (instance_embeds(encoder, x) * truth).sum(1).mean().item()
    return out, (low, bicubic, sr, real)


def sharpness(images: torch.Tensor) -> torch.Tensor:
    """(B,) mean absolute Laplacian: high-frequency energy, the detail an upsampler adds or blurs away."""
    kernel = torch.tensor([[0.0, 1.0, 0.0], [1.0, -4.0, 1.0], [0.0, 1.0, 0.0]]).expand(3, 1, 3, 3)
    return F.conv2d(images.float(), kernel, groups=3).abs().flatten(1).mean(1)


def cascade_gate(models: Path, n: int = 12, steps: int = 25, sr_steps: int = 4, noise_level: int = 0,
                 seed: int = 0) -> tuple[dict, tuple]:
    """Base samples of held-out prompts, upsampled bicubically vs through the SR model: is the cascade
    sharper? Real 64 px renders give the sharpness to aim at."""
    base, _ = open_model(str(models / "base"))
    sr, _ = open_model(str(models / "sr"))
    captions, real, _ = heldout(n)
    low = render(base, captions, [seed + i for i in range(n)], steps=steps, guidance_scale=4.0, scheduler=SCHEDULER,
                 batch_size=n)
    up = render(sr, captions, [seed + i for i in range(n)], steps=sr_steps, guidance_scale=1.0, scheduler=SCHEDULER,
                batch_size=n, images=low, noise_level=noise_level)
    low_t = torch.stack([to_tensor(im) for im in low])
    bicubic = F.interpolate(low_t, size=64, mode="bicubic", align_corners=False).clamp(-1, 1)
    cascade = torch.stack([to_tensor(im) for im in up])
    return ({"images": n, "noise_level": noise_level, "sharpness/bicubic": sharpness(bicubic).mean().item(),
             "sharpness/cascade": sharpness(cascade).mean().item(), "sharpness/real": sharpness(real).mean().item()},
            (bicubic, cascade))


def cascade_speed(models: Path, n: int = 4, steps: int = 25) -> dict:
    """Seconds to load base + SR, and to render n cascade images (base -> SR) on this machine."""
    t0 = time.time()
    base, _ = open_model(str(models / "base"))
    sr, _ = open_model(str(models / "sr"))
    loaded = time.time() - t0
    prompts = ["a red ball on the beach", "a blue star in the snow", "a green box in the jungle", "a pink can"][:n]
    t0 = time.time()
    low = render(base, prompts, list(range(n)), steps=steps, guidance_scale=4.0, scheduler=SCHEDULER, batch_size=n)
    render(sr, prompts, list(range(n)), steps=steps, guidance_scale=1.0, scheduler=SCHEDULER, batch_size=n,
           images=low, noise_level=50)
    return {"load_seconds": round(loaded, 2), "cascade_seconds": round(time.time() - t0, 2), "images": n,
            "steps_per_stage": steps, "threads": torch.get_num_threads()}


def to_64_grid(rows: list[torch.Tensor]) -> torch.Tensor:
    """Stack image rows (each (B, 3, h, w)) at 64 px into one (3, R*64, B*64) picture."""
    return torch.cat([torch.cat(list(to_64(r)), dim=2) for r in rows], dim=1)


def run_gates(models: Path, out: Path, *, prompts: int = 72, sr_images: int = 48, steps: int = 25, sr_steps: int = 4,
              sr_noise_level: int = 0) -> dict:
    """Every gate of docs/microworld.md -> OUT/gates.json, OUT/base_samples.png, OUT/sr_vs_bicubic.png.
    sr_steps / sr_noise_level: the SR model's best measured setting (docs/microworld.md): 4 steps at noise
    level 0 beat 10 and 25 steps, and level 50, on held-out renders."""
    import json

    from ..core.sample import make_grid
    from .encoders import gates as encoder_gates

    out.mkdir(parents=True, exist_ok=True)
    figures = {"encoders": encoder_gates(models, models / "base" / "tokenizer")}
    figures["base"], samples = base_gate(models, n=prompts, steps=steps)
    make_grid([im.resize((64, 64)) for im in samples[:48]], cols=12).save(out / "base_samples.png")
    figures["sr"], (low, bicubic, sr, real) = sr_gate(models, n=sr_images, steps=sr_steps, noise_level=sr_noise_level)
    k = min(12, sr_images)   # rows: upsampled input, bicubic, SR model, true 64 px render
    to_pil(to_64_grid([low[:k], bicubic[:k], sr[:k], real[:k]])).save(out / "sr_vs_bicubic.png")
    figures["cascade"], (bicubic, cascade) = cascade_gate(models, n=min(12, prompts), steps=steps, sr_steps=sr_steps,
                                                     noise_level=sr_noise_level)
    to_pil(to_64_grid([bicubic, cascade])).save(out / "cascade_vs_bicubic.png")   # rows: base upsampled, cascade
    figures["speed"] = cascade_speed(models, steps=steps)
    (out / "gates.json").write_text(json.dumps(figures, indent=1))
    return figures
