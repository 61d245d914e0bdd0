"""The low-resolution input of a cascaded super-resolution model, made the way inference makes it.

IF stage II / Imagen style: the low-res image is upsampled to the output size (bilinear,
align_corners=True, as `IFSuperResolutionPipeline` does), noise-augmented with the model's own
noising schedule at level s, and the level s is given to the UNet as its class label. Training with
the same construction is what lets the SR model repair a base model's imperfect samples.
Pure functions: noise and levels are arguments.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from ..core.losses import add_noise
from ..errors import DreamboothError


def downsample(images: torch.Tensor, size: int) -> torch.Tensor:
    """(B, C, H, W) -> (B, C, size, size) by box filtering (area), the way the base model's
    training images were made from the high-resolution renders."""
    return F.interpolate(images, size=(size, size), mode="area")


def consistent_with(images: torch.Tensor, low: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) SR outputs -> the nearest images whose `downsample` is exactly `low` (B, C, h, w),
    clamped to [-1, 1]: each h x w cell gets the difference between the low-res pixel and its own
    mean (back-projection, Irani & Peleg 1991). Both steps are projections onto convex sets that hold
    the true high-res image, so neither can move an output further from it: only detail the low-res
    image cannot show is left to the model. Valid where `low` was made by box filtering."""
    factor = images.shape[-1] // low.shape[-1]
    correction = F.interpolate(low - downsample(images, low.shape[-1]), scale_factor=factor, mode="nearest")
    return (images + correction).clamp(-1, 1)


def upsample(images: torch.Tensor, size: int) -> torch.Tensor:
    """Exactly the pipeline's upsampling of its low-res input."""
    return F.interpolate(images, size=(size, size), mode="bilinear", align_corners=True)


def lowres_condition(low: torch.Tensor, out_size: int, noise: torch.Tensor, level: torch.Tensor,
                     alphas_cumprod: torch.Tensor, upsample_fn: Callable = upsample) -> torch.Tensor:
    """low (B, C, h, w) in [-1, 1] -> (B, C, out_size, out_size): upsampled, then noised to `level`.
    upsample_fn: the model's own upsampling (`superres.residual` models read bicubic)."""
    return add_noise(upsample_fn(low, out_size), noise, level, alphas_cumprod)


def window_size(crop: int | None, resolution: int, x0_size: int, low_size: int, unet_factor: int) -> int | None:
    """--sr_crop in output pixels -> the window in x0's units (latents for the x4 upscaler), or None for
    whole views. The window must hold whole low-res pixels and survive the UNet's down-sampling."""
    if crop is None or crop >= resolution:
        return None
    step = (x0_size // low_size) * unet_factor * resolution // x0_size     # output pixels per allowed unit
    if crop % step:
        fit = max(step, crop // step * step)
        raise DreamboothError(
            f"--sr_crop {crop} does not fit this super-resolution model: a training window must be a multiple of "
            f"{step} output pixels (whole pixels of the {low_size} px low-res input, and of every level of a UNet "
            f"that halves its input {unet_factor.bit_length() - 1} times). Use --sr_crop {fit}, or leave the flag "
            f"out to train on whole {resolution} px views.")
    return crop * x0_size // resolution


def random_window(x0: torch.Tensor, low: torch.Tensor, size: int, gen: torch.Generator
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """x0 (B, C, H, W) and its low-res input (B, C, h, w) -> the same random size x size window of x0
    and the low-res pixels under it (B, C, size*h/H, size*h/H), one place for the whole batch. Why:
    an SR model's job is local detail, and a window teaches it at a fraction of the compute."""
    f = x0.shape[-1] // low.shape[-1]                                   # x0 pixels per low-res pixel
    i, j = (torch.randint(0, (x0.shape[-1] - size) // f + 1, (2,), generator=gen) * f).tolist()
    return x0[..., i:i + size, j:j + size], low[..., i // f:(i + size) // f, j // f:(j + size) // f]
