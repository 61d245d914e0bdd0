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
    assert sampler_name(pipe, "auto") == "DPMSolverMultistepScheduler"    # SD: latent, no x0 clipping


def test_auto_sampler_keeps_a_clipping_pixel_models_own_and_others_clamp_x0(tiny_if):
    pipe = DiffusionPipeline.from_pretrained(tiny_if)
    own = pipe.scheduler
    assert own.config.clip_sample or own.config.thresholding          # IF-style: trained for a clipping sampler
    with sampler(pipe, "auto"):
        assert pipe.scheduler is own


def test_dpm_solver_on_a_clip_sample_model_clamps_x0_by_thresholding():
    from types import SimpleNamespace

    from dreambooth.world.pretrain.diffusion import world_scheduler
    holder = SimpleNamespace(scheduler=world_scheduler())              # clip_sample=True, no thresholding
    assert holder.scheduler.config.clip_sample and not holder.scheduler.config.thresholding
    with sampler(holder, "DPMSolverMultistepScheduler"):
        cfg = holder.scheduler.config
        assert cfg.thresholding and cfg.sample_max_value == 1.0             # the same clamp to [-1, 1]
    with sampler(holder, "DDIMScheduler"):                                # DDIM clips by itself: left as is
        assert holder.scheduler.config.clip_sample and not holder.scheduler.config.thresholding


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
