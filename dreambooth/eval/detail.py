"""Step (b)'s own effect on fine detail, apart from the base model's sampling noise.

The suite's sr_finetuned row scores base -> SR samples: what the base draws varies far more from seed
to seed than what an SR model adds, so that row cannot show whether fine-tuning the SR helped. Here both
SR models get the same known low-res inputs instead: the subject's ideal renders, box-filtered to the
base model's size (as the world makes its low-res images). Each upscaling (bicubic, the untouched SR,
the fine-tuned SR) is scored against the ideal render it came from: PSNR, and cosine similarity under
the instance encoder (the world's DINO), which sees the fine marks that only 64 px resolves.
"""

from __future__ import annotations

import torch
from PIL import Image

from ..data.intake import to_tensor
from ..world.gates import psnr
from .encoders import ImageEncoder
from .protocol import Samples, Settings, upscale

DETAIL_KEYS = ("psnr", "dino")


def detail_scores(images: list[Image.Image], truth: list[Image.Image], dino: ImageEncoder) -> dict[str, float]:
    """Mean PSNR (dB) and instance-encoder cosine of `images` against `truth`, image by image."""
    a, b = (torch.stack([to_tensor(im.convert("RGB")) for im in ims]) for ims in (images, truth))
    cosine = (dino.embed(images) * dino.embed(truth)).sum(1)        # embeddings are unit length
    return {"psnr": psnr(a, b).mean().item(), "dino": cosine.mean().item()}


def detail_fidelity(ideal: Samples, prompts: list[str], low_size: int, sr_models: dict[str, str],
                    dino: ImageEncoder, settings: Settings) -> dict[str, dict[str, float]]:
    """{'bicubic' | each name in sr_models: {'psnr', 'dino'}} for the ideal renders upscaled from low_size.
    prompts: one per ideal image, as the SR models are prompted (the identifier filled in)."""
    size = ideal.images[0].size
    low = [im.convert("RGB").resize((low_size, low_size), Image.BOX) for im in ideal.images]
    upscaled = {"bicubic": [im.resize(size, Image.BICUBIC) for im in low]}
    for name, path in sr_models.items():
        upscaled[name] = upscale(path, prompts, ideal.seeds, low, settings)
    return {name: detail_scores(images, ideal.images, dino) for name, images in upscaled.items()}
