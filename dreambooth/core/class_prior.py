"""A run's class images: counted when the run is planned, drawn once the plan is printed.

Planning only reads the class folder (found, missing, what was repaired), so the plan can say what
generation will do before the minutes it takes. Drawing samples the untouched base model: adapters
bypassed, modules in eval mode and not yet in training precision or accelerate's wrappers.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field

import torch
from accelerate import Accelerator
from PIL import Image

from .. import files
from ..config import TrainJob
from ..data.class_images import ClassImageJob, generate_class_images, plan_class_images
from ..data.intake import read_image_folder
from ..superres.class_pairs import plan_sr_class_pairs
from . import lora
from .models import Model
from .sample import sampler, sampler_name


@dataclass
class ClassPlan:
    images: ClassImageJob
    recipe: str                              # sampler/steps/cfg: part of the cache key and the manifest
    inputs: list[Image.Image] | None = None  # SR: the low-res input of each image the SR model makes
    steps: int = 25                          # sampler settings of the images to draw
    guidance_scale: float = 7.5
    extra: dict = field(default_factory=dict)   # SR: the noise level its folder recommends
    unconditional: ClassImageJob | None = None   # samples of the empty prompt (--num_unconditional_images)

    def n_views(self, num_class_images: int) -> int:
        """Class views once the missing images exist: one centre crop per image, the first N images."""
        return min(self.images.found + self.images.missing, num_class_images)


def plan_class_prior(job: TrainJob, model: Model, class_prompt: str | None,
                     accelerator: Accelerator) -> ClassPlan | None:
    """Count the class images found and those to generate; generate nothing. None: prior preservation off."""
    p = job.prior
    if not p.with_prior_preservation:
        for flag, value in (("--class_data_dir", p.class_data_dir), ("--num_unconditional_images", p.num_unconditional_images)):
            if value:
                accelerator.print(f"note: {flag} is unused without --with_prior_preservation.")
        return None
    steps, guidance, extra = p.class_inference_steps, p.class_guidance_scale, {}
    if model.sr is not None and model.sr.sampling:     # SR pairs are drawn as the SR folder says it samples best
        hint = model.sr.sampling
        steps, guidance = hint.get("steps", steps), hint.get("guidance_scale", guidance)
        extra = {"noise_level": hint["noise_level"]} if "noise_level" in hint else {}
    recipe = (f"{sampler_name(model.pipe, p.class_scheduler)}/{steps}steps/cfg{guidance}"
              + "".join(f"/{k}{v}" for k, v in extra.items()))
    if model.sr is None:   # the base model samples its class images (and its unconditional ones: any class's)
        blank = plan_class_images(model.source, "", None, p.num_unconditional_images, model.resolution, recipe) \
            if p.num_unconditional_images else None
        return ClassPlan(plan_class_images(model.source, class_prompt, p.class_data_dir, p.num_class_images,
                                           model.resolution, recipe), recipe, None, steps, guidance,
                         unconditional=blank)
    # an SR model makes class pairs from step (a)'s class images
    if p.num_unconditional_images:
        accelerator.print("note: --num_unconditional_images is for base models; an SR model trains on class pairs "
                          "made from the class images only.")
    images, inputs = plan_sr_class_pairs(p, model, class_prompt, recipe)
    accelerator.print(f"class pairs for super-resolution from the {images.wanted} class images in "
                      f"{images.source}" + (", upscaled by the untouched SR model" if inputs else ""))
    return ClassPlan(images, recipe, inputs, steps, guidance, extra)


def draw_class_images(plan: ClassPlan, job: TrainJob, model: Model, accelerator: Accelerator,
                      adapted: dict[str, torch.nn.Module]) -> None:
    """Generate the missing class images (the main process generates; the others wait). `adapted`:
    modules that may hold adapters (LoRA runs), bypassed while sampling."""
    p = job.prior
    jobs = [c for c in (plan.images, plan.unconditional) if c is not None and c.missing]
    if jobs and accelerator.is_main_process:
        # a generated PNG holds at most 3 bytes per pixel
        files.require_free_space([(c.folder, c.missing * 3 * model.resolution ** 2, "class images") for c in jobs])
        with _generation_precision(p.prior_generation_precision, accelerator), \
                sampler(model.pipe, p.class_scheduler), lora.bypassed(adapted.values()):
            for c in jobs:
                # another process may be drawing this folder (suite subjects side by side share the
                # unconditional images): wait for it, then draw only what it did not
                with files.exclusive(c.folder):
                    c.found = len(read_image_folder(c.folder, role="class", allow_empty=True).photos)
                    if c.missing:
                        generate_class_images(c, model.pipe, seed=job.train.seed, steps=plan.steps,
                                              guidance_scale=plan.guidance_scale, batch_size=p.sample_batch_size,
                                              sampler=plan.recipe, inputs=plan.inputs, **model.sample_kwargs(),
                                              **plan.extra)
    accelerator.wait_for_everyone()


def _generation_precision(precision: str | None, accelerator: Accelerator):
    """Autocast for class-image sampling: the training precision unless set separately."""
    if precision is None:
        return accelerator.autocast()
    if precision in ("no", "fp32"):
        return contextlib.nullcontext()
    dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}[precision]
    return torch.autocast(accelerator.device.type, dtype=dtype)
