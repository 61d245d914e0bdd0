"""Encoded training views and the batch of every step, as a pure function of (seed, step).

Photos are cropped/flipped into a fixed set of views and encoded once (VAE latents, or pixels for
pixel-space models); a training step only indexes into that tensor. Which views a step uses
depends only on the seed and the step number, so a resumed run sees exactly the batches an
uninterrupted run would have seen.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from functools import lru_cache
from typing import Callable

import torch
from PIL import Image, ImageOps

from .intake import fit_square, to_tensor


def make_views(images: list[Image.Image], resolution: int, *, center_crop: bool, random_flip: bool,
               random_views: int, seed: int) -> tuple[list[Image.Image], list[int]]:
    """Fixed augmentations of each image -> (views, index of the source image of each view).

    Center crop gives one view per image; random crop gives `random_views` crops drawn once from
    `seed`. A horizontal flip doubles every view when `random_flip` is on.
    """
    rng = random.Random(seed)
    views, source = [], []
    for i, im in enumerate(images):
        crops = [fit_square(im, resolution, crop="center")] if center_crop else \
            [fit_square(im, resolution, crop="random", rng=rng) for _ in range(random_views)]
        for crop in crops:
            variants = [crop, ImageOps.mirror(crop)] if random_flip else [crop]
            views += variants
            source += [i] * len(variants)
    return views, source


def encode_views(views: list[Image.Image], encode: Callable[[torch.Tensor], torch.Tensor],
                 batch_size: int = 8) -> torch.Tensor:
    """PIL views -> (N, C, h, w) model-space tensors (latents or pixels), on the CPU."""
    out = []
    for start in range(0, len(views), batch_size):
        pixels = torch.stack([to_tensor(v) for v in views[start:start + batch_size]])  # (b, 3, H, W) in [-1, 1]
        out.append(encode(pixels).cpu())
    return torch.cat(out)


@dataclass
class BatchPlan:
    """Which instance/class views micro-step k uses: each set is walked in a fresh shuffled order
    per epoch, the permutation seeded by (seed, epoch)."""
    n_instance: int
    n_class: int
    batch_size: int
    seed: int

    def indices(self, micro_step: int) -> tuple[list[int], list[int]]:
        inst = _walk(self.n_instance, self.batch_size, micro_step, self.seed)
        cls = _walk(self.n_class, self.batch_size, micro_step, self.seed + 1) if self.n_class else []
        return inst, cls


def step_generator(seed: int, micro_step: int, rank: int = 0) -> torch.Generator:
    """The generator for a micro-step's noise and timesteps (distinct per process under DDP)."""
    return torch.Generator().manual_seed((seed * 1_000_003 + micro_step) * 64 + rank)


def _walk(n: int, batch_size: int, micro_step: int, seed: int) -> list[int]:
    positions = range(micro_step * batch_size, (micro_step + 1) * batch_size)
    return [_permutation(n, seed, p // n)[p % n] for p in positions]


@lru_cache(maxsize=8)
def _permutation(n: int, seed: int, epoch: int) -> list[int]:
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed * 7919 + epoch)).tolist()
