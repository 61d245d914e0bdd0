"""Image generation through the model's own diffusers pipeline, and grids.

One image = one seed: each image gets its own torch.Generator, so an image's pixels do not depend
on how images are batched. That is what makes class-image generation resumable and validation
grids comparable across steps.
"""

from __future__ import annotations

import contextlib
import math
from typing import Iterable, Iterator

import diffusers
import torch
from PIL import Image


def generate(pipe, prompts: list[str], seeds: list[int], *, steps: int, guidance_scale: float,
             batch_size: int = 4, **pipe_kwargs) -> Iterator[tuple[int, Image.Image]]:
    """Yield (index, image) for each (prompt, seed) pair, `batch_size` at a time."""
    assert len(prompts) == len(seeds)
    for start in range(0, len(prompts), batch_size):
        chunk = range(start, min(start + batch_size, len(prompts)))
        generators = [torch.Generator().manual_seed(seeds[i]) for i in chunk]
        with torch.no_grad():
            images = pipe(prompt=[prompts[i] for i in chunk], generator=generators, num_inference_steps=steps,
                          guidance_scale=guidance_scale, output_type="pil", **pipe_kwargs).images
        yield from zip(chunk, images)


@contextlib.contextmanager
def sampler(pipe, name: str):
    """Temporarily sample with another diffusers scheduler built from the pipeline's own config
    (DPM-Solver++ reaches in ~25 steps what DDIM/PNDM need ~50 for); 'model' changes nothing."""
    if name == "model":
        yield pipe
        return
    original = pipe.scheduler
    pipe.scheduler = getattr(diffusers, name).from_config(original.config)
    try:
        yield pipe
    finally:
        pipe.scheduler = original


def sampler_name(pipe, name: str) -> str:
    return type(pipe.scheduler).__name__ if name == "model" else name


def make_grid(images: Iterable[Image.Image], cols: int | None = None) -> Image.Image:
    images = list(images)
    cols = cols or math.ceil(math.sqrt(len(images)))
    rows = math.ceil(len(images) / cols)
    w, h = images[0].size
    grid = Image.new("RGB", (cols * w, rows * h), "white")
    for i, im in enumerate(images):
        grid.paste(im.convert("RGB"), ((i % cols) * w, (i // cols) * h))
    return grid
