"""Image generation through the model's own diffusers pipeline, and grids.

One image = one seed: each image gets its own torch.Generator, so an image's pixels do not depend
on how images are batched. That is what makes class-image generation resumable and validation
grids comparable across steps.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import math
from typing import Iterable, Iterator

import diffusers
import torch
from PIL import Image


def generate(pipe, prompts: list[str], seeds: list[int], *, steps: int, guidance_scale: float,
             batch_size: int = 4, images: list[Image.Image] | None = None,
             **pipe_kwargs) -> Iterator[tuple[int, Image.Image]]:
    """Yield (index, image) for each (prompt, seed) pair, `batch_size` at a time. `images`: one input
    image per prompt, for pipelines that take one (a super-resolution model's low-res input)."""
    assert len(prompts) == len(seeds) and (images is None or len(images) == len(prompts))
    # Callers show one bar per phase (class images, samples); a sampler bar per batch would nest in it.
    pipe.set_progress_bar_config(disable=True)
    for start in range(0, len(prompts), batch_size):
        chunk = range(start, min(start + batch_size, len(prompts)))
        generators = [torch.Generator().manual_seed(seeds[i]) for i in chunk]
        inputs = {} if images is None else {"image": lowres_inputs(pipe, [images[i] for i in chunk])}
        with torch.no_grad():
            images_out = pipe(prompt=[prompts[i] for i in chunk], generator=generators, num_inference_steps=steps,
                              guidance_scale=guidance_scale, output_type="pil", **inputs, **pipe_kwargs).images
        if images is not None:
            images_out = lowres_consistent(pipe, images_out, [images[i] for i in chunk])
        yield from zip(chunk, images_out)


def lowres_inputs(pipe, images: list[Image.Image]) -> list:
    """A super-resolution pipeline's low-res inputs. A UNet with its own upsampling (`superres.residual`)
    gets them upsampled by it to its output size, so the pipeline's own bilinear resize is the identity."""
    upsample = getattr(pipe.unet, "lowres_upsample", None)
    if upsample is None:
        return images
    from ..data.intake import to_tensor
    size = pipe.unet.config.sample_size
    return [upsample(to_tensor(im)[None], size)[0] for im in images]


def lowres_consistent(pipe, outputs: list[Image.Image], lows: list[Image.Image]) -> list[Image.Image]:
    """SR outputs made consistent with their low-res inputs, for a UNet that asks for it
    (`superres.residual`: its training pairs were box-filtered); others' outputs as they are."""
    project = getattr(pipe.unet, "lowres_consistency", None)
    if project is None:
        return outputs
    from ..data.intake import to_pil, to_tensor
    # only an input smaller by a whole factor is one the output can box-filter back to
    fits = [out.width > low.width and out.width % low.width == 0 for out, low in zip(outputs, lows)]
    return [to_pil(project(to_tensor(out)[None], to_tensor(low)[None])[0]) if ok else out
            for out, low, ok in zip(outputs, lows, fits)]


@contextlib.contextmanager
def sampler(pipe, name: str):
    """Temporarily sample with another diffusers scheduler built from the pipeline's own config
    (DPM-Solver++ reaches in ~25 steps what DDIM/PNDM need ~50 for); 'model' changes nothing."""
    name = sampler_name(pipe, name)
    if name == type(pipe.scheduler).__name__:
        yield pipe
        return
    original = pipe.scheduler
    pipe.scheduler = getattr(diffusers, name).from_config(original.config, **_keep_in_range(original.config, name))
    _consistent_with_clipped_x0(pipe.scheduler)
    try:
        yield pipe
    finally:
        pipe.scheduler = original


def _keep_in_range(config, name: str) -> dict:
    """A pixel-space model sampled with clip_sample (DeepFloyd IF, the micro world) is only trusted on
    predictions of x0 inside [-1, 1]. Schedulers without clip_sample (DPM-Solver, UniPC) offer
    thresholding instead; with sample_max_value = the clip range it is the same clamp. Without it,
    the first steps from t ~ T (alpha_bar ~ 0) blow small errors in epsilon up into a noisy image."""
    accepts = inspect.signature(getattr(diffusers, name).__init__).parameters
    if config.get("clip_sample") and "thresholding" in accepts and "clip_sample" not in accepts:
        return {"thresholding": True, "sample_max_value": config.get("clip_sample_range", 1.0)}
    return {}


def _consistent_with_clipped_x0(scheduler) -> None:
    """DDIM on a model sampled with clip_sample: by default diffusers' DDIM step moves to t-1 along the
    *unclipped* noise prediction while it takes the clipped x0, and the two disagree wherever the clamp
    acted. Over 25+ steps that mismatch compounds into saturated garbage on the micro world's base (4
    steps hid it); re-deriving the noise from the clipped x0 keeps the step on the path DDPM's own
    posterior takes. The pipelines cannot pass the flag, so it is bound here."""
    step = scheduler.step
    if "use_clipped_model_output" in inspect.signature(step).parameters and (
            scheduler.config.get("clip_sample") or scheduler.config.get("thresholding")):
        scheduler.step = functools.partial(step, use_clipped_model_output=True)


def sampler_name(pipe, name: str) -> str:
    """The scheduler class a sampler name stands for on this pipeline ('model', 'auto' resolved).

    'auto': DPM-Solver++ (25 steps do) unless the model's own scheduler clips or thresholds its x0
    predictions (DeepFloyd IF, the micro world): those models were trained for that sampler, and
    DPM-Solver left visible noise in the micro world's samples even with thresholding."""
    own = type(pipe.scheduler).__name__
    if name == "auto":
        config = pipe.scheduler.config
        return own if config.get("clip_sample") or config.get("thresholding") else "DPMSolverMultistepScheduler"
    return own if name == "model" else name


def make_grid(images: Iterable[Image.Image], cols: int | None = None) -> Image.Image:
    images = list(images)
    cols = cols or math.ceil(math.sqrt(len(images)))
    rows = math.ceil(len(images) / cols)
    w, h = images[0].size
    grid = Image.new("RGB", (cols * w, rows * h), "white")
    for i, im in enumerate(images):
        grid.paste(im.convert("RGB"), ((i % cols) * w, (i // cols) * h))
    return grid
