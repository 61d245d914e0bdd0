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


def test_ddim_on_a_clip_sample_model_steps_along_the_clipped_x0():
    """DDIM's step from x_t is x_prev = sqrt(a_prev) x0 + sqrt(1 - a_prev) eps, with eps the noise that
    x_t and x0 imply. Where the model's x0 overshoots [-1, 1] and is clamped, eps must come from the
    clamped x0 too; diffusers' default keeps the unclipped one, and over 25 steps that mismatch turned
    the world base's DDIM samples into saturated noise (4 steps hid it)."""
    import torch
    from types import SimpleNamespace

    from diffusers import DDIMScheduler

    from dreambooth.world.pretrain.diffusion import world_scheduler
    holder = SimpleNamespace(scheduler=world_scheduler())
    assert holder.scheduler.config.prediction_type == "v_prediction"
    x = torch.randn(1, 3, 4, 4, generator=torch.Generator().manual_seed(0))
    x0_hat = torch.linspace(-1.8, 1.8, 48).view(1, 3, 4, 4)            # half of it outside [-1, 1]
    with sampler(holder, "DDIMScheduler"):
        s = holder.scheduler
        s.set_timesteps(25)
        t, t_prev = s.timesteps[10], s.timesteps[11]
        a, a_prev = s.alphas_cumprod[t], s.alphas_cumprod[t_prev]
        v = (a.sqrt() * x - x0_hat) / (1 - a).sqrt()                   # the v whose x0 is x0_hat
        ours = s.step(v, t, x).prev_sample
    x0 = x0_hat.clamp(-1, 1)
    eps = (x - a.sqrt() * x0) / (1 - a).sqrt()
    assert torch.allclose(ours, a_prev.sqrt() * x0 + (1 - a_prev).sqrt() * eps, atol=1e-5)
    plain = DDIMScheduler.from_config(world_scheduler().config)
    plain.set_timesteps(25)
    assert (plain.step(v, t, x).prev_sample - ours).abs().max() > 0.05   # what the default does instead
