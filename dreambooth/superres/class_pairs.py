"""Prior preservation for a super-resolution model: class pairs made from the class images of step (a).

An SR model cannot sample a class image on its own (it needs a low-res input), so its class pairs
start from step (a)'s class images: the base model's samples of the class prompt, or the user's own
class folder. Images at least as large as the SR output are high-res targets as they are, like the
instance photos (their low-res input is made from them). Smaller ones, such as the base model's
samples at the base resolution, become the low-res input of the still untouched SR model, and its
output is the target: the SR model's own prior for the class, which is what prior preservation keeps.
Those targets are written like class images (one seed each, cached, resumable).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from PIL import Image

from ..config import PriorConfig
from ..data.class_images import ClassImageJob, plan_class_images
from ..data.intake import fit_square, read_image_folder
from ..errors import DreamboothError

STEP_A_HINT = ("Run step (a) first, with prior preservation, on the base model (its plan prints the class image "
               "folder and its dreambooth.yaml records it as class_data_dir) and pass that folder with "
               "--class_data_dir; or run both steps with one command: `dreambooth train --model BASE --sr-model SR "
               "--with_prior_preservation ...`.")


def plan_sr_class_pairs(p: PriorConfig, model, class_prompt: str,
                        recipe: str) -> tuple[ClassImageJob, list[Image.Image] | None]:
    """-> (the class-image job whose folder the trainer reads, the low-res inputs of its images when
    they are to be made by the SR model, else None)."""
    source = step_a_class_images(p)
    photos = source.photos[: p.num_class_images]
    if min(min(ph.image.size) for ph in photos) >= model.resolution:
        job = plan_class_images(model.source, class_prompt, str(source.folder), len(photos), model.resolution, recipe)
        job.source = source.folder
        return job, None
    # The targets depend on which images they upscale: key the cache by the folder and the file names.
    names = "|".join([str(source.folder.resolve())] + [ph.path.name for ph in photos])
    recipe = f"{recipe}/upscaled-from-{model.sr.lowres}px/{hashlib.sha256(names.encode()).hexdigest()[:12]}"
    job = plan_class_images(model.source, class_prompt, None, len(photos), model.resolution, recipe)
    job.source = source.folder
    return job, [fit_square(ph.image, model.sr.lowres) for ph in photos]


def step_a_class_images(p: PriorConfig):
    """The class images of step (a), or a clear error saying how to get them."""
    why = "an SR model cannot sample class images without a low-res input"
    if not p.class_data_dir:
        raise DreamboothError(f"Prior preservation for a super-resolution model uses the class images of step (a) "
                              f"({why}), and no --class_data_dir was given. {STEP_A_HINT}")
    folder = Path(p.class_data_dir)
    intake = read_image_folder(folder, role="class", allow_empty=True) if folder.is_dir() else None
    if intake is None or not intake.photos:
        raise DreamboothError(f"Prior preservation for a super-resolution model uses the class images of step (a) "
                              f"({why}), but {folder} holds none. {STEP_A_HINT}")
    return intake
