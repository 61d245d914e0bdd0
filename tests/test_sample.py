"""Sampling helpers: scheduler swap, per-image seeds, grids."""

from __future__ import annotations

import numpy as np
from diffusers import DiffusionPipeline
from PIL import Image

from dreambooth.core.sample import generate, make_grid, sampler, sampler_name


def test_sampler_swaps_and_restores(tiny_sd):
    pipe = DiffusionPipeline.from_pretrained(tiny_sd)
    own = pipe.scheduler
    with sampler(pipe, "DPMSolverMultistepScheduler"):
        assert type(pipe.scheduler).__name__ == "DPMSolverMultistepScheduler"
        assert pipe.scheduler.config.num_train_timesteps == own.config.num_train_timesteps
    assert pipe.scheduler is own
    with sampler(pipe, "model"):
        assert pipe.scheduler is own
    assert sampler_name(pipe, "model") == type(own).__name__


def test_an_image_depends_on_its_seed_not_its_batch(tiny_sd):
    pipe = DiffusionPipeline.from_pretrained(tiny_sd)
    kw = dict(steps=2, guidance_scale=3.0)
    alone = dict(generate(pipe, ["a dog"], [7], batch_size=1, **kw))[0]
    batched = dict(generate(pipe, ["a dog", "a dog", "a dog"], [5, 6, 7], batch_size=3, **kw))[2]
    assert np.array_equal(np.asarray(alone), np.asarray(batched))


def test_grid_layout():
    ims = [Image.new("RGB", (8, 6), (i * 40, 0, 0)) for i in range(5)]
    grid = make_grid(ims, cols=3)
    assert grid.size == (24, 12)
    assert grid.getpixel((8 * 1 + 1, 1)) == (40, 0, 0) and grid.getpixel((1, 7)) == (120, 0, 0)
