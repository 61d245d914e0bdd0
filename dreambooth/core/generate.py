"""`dreambooth generate`: sample a grid from a pipeline folder, identifier filled in.

A personalized cascade (the output of `dreambooth train --sr-model`, whose step (b) sits in OUT/sr/)
renders base -> SR: each base image is the SR pipeline's low-res input, under the same seed.
"""

from __future__ import annotations

import inspect
import json
from pathlib import Path

import torch
from PIL import Image
from tqdm.auto import tqdm

from ..config import ModelConfig
from .cascade import SR_SUBDIR
from .identifier import PLACEHOLDERS, fill_identifier
from .models import Model, is_super_resolution, load_model
from .sample import generate, make_grid, sampler
from ..errors import DreamboothError


def read_identifier(folder: Path) -> str | None:
    path = Path(folder) / "identifier.json"
    return json.loads(path.read_text())["identifier"] if path.exists() else None


def generate_grid(model_path: str, prompts: list[str], *, n: int, out: Path, seed: int, steps: int,
                  guidance_scale: float, resolution: int | None = None,
                  scheduler: str = "auto", seeds: list[int] | None = None,
                  sr_model: str | None = None, sr_steps: int | None = None, sr_guidance_scale: float | None = None,
                  sr_noise_level: int | None = None) -> Path:
    """Write a grid (one row per prompt) and each image. Image i of a prompt uses seeds[i] (default
    seed + i) in every stage. sr_model: an SR pipeline folder, 'none', or None for MODEL/sr/ if present."""
    seeds = seeds or [seed + i for i in range(n)]
    sr_path = find_sr_model(model_path, sr_model)
    if sr_path and is_super_resolution(sr_path) is False:
        raise DreamboothError(f"--sr-model {sr_path} is not a super-resolution model (it takes no low-res "
                              "image). Name an IF stage II, SD x4 upscaler or micro-world SR pipeline folder.")
    if is_super_resolution(model_path):
        raise DreamboothError(f"{model_path} is a super-resolution model: it upsamples a base model's images and "
                              "cannot start from a prompt alone. Pass the base model as --model (with the SR model "
                              f"in its {SR_SUBDIR}/ folder, as `dreambooth train --sr-model` writes it, or named by "
                              "--sr-model).")
    base, identifier = open_model(model_path, resolution)
    flat = [p for p in prompts for _ in seeds]
    all_seeds = [s for _ in prompts for s in seeds]
    stages = {"base": render(base, fill_prompts(flat, identifier, model_path), all_seeds, steps=steps,
                             guidance_scale=guidance_scale, scheduler=scheduler, batch_size=len(seeds),
                             desc="images" if not sr_path else "base images")}
    del base   # one pipeline in memory at a time
    if sr_path:
        sr, sr_identifier = open_model(sr_path)
        kwargs = {}
        if sr_noise_level is not None:
            if not 0 <= sr_noise_level < sr.sr.max_level:
                raise DreamboothError(f"--sr-noise-level must be in [0, {sr.sr.max_level}) for {sr_path}; "
                                      f"got {sr_noise_level}.")
            kwargs["noise_level"] = sr_noise_level
        if sr_guidance_scale is None:   # the SR pipeline's own default (IF stage II 4.0, x4 upscaler 9.0)
            sr_guidance_scale = inspect.signature(sr.pipe.__call__).parameters["guidance_scale"].default
        stages["sr"] = render(sr, fill_prompts(flat, sr_identifier or identifier, sr_path), all_seeds,
                              steps=sr_steps or steps, guidance_scale=sr_guidance_scale, scheduler=scheduler,
                              batch_size=len(seeds), images=stages["base"], desc="super-resolution", **kwargs)
    return save_images(stages, [(j, s) for j in range(len(prompts)) for s in seeds], out, cols=len(seeds))


def open_model(path: str, resolution: int | None = None) -> tuple[Model, str | None]:
    model = load_model(ModelConfig(pretrained_model_name_or_path=path), resolution)
    model.pipe.to("cuda" if torch.cuda.is_available() else "cpu")
    return model, read_identifier(Path(path))


def find_sr_model(model_path: str, sr_model: str | None) -> str | None:
    if sr_model == "none":
        return None
    if sr_model:
        return sr_model
    candidate = Path(model_path) / SR_SUBDIR
    return str(candidate) if (candidate / "model_index.json").exists() else None


def fill_prompts(prompts: list[str], identifier: str | None, model_path: str) -> list[str]:
    if identifier is None and any(ph in p for p in prompts for ph in PLACEHOLDERS):
        raise DreamboothError(f"The prompt uses '<id>' but {model_path} has no identifier.json (it was not made by "
                              "`dreambooth train`). Write the identifier word into the prompt instead.")
    return [fill_identifier(p, identifier) if identifier else p for p in prompts]


def render(model: Model, prompts: list[str], seeds: list[int], *, steps: int, guidance_scale: float, scheduler: str,
           batch_size: int, desc: str | None = None, **kwargs) -> list[Image.Image]:
    """One image per (prompt, seed); `desc` shows a progress bar over the images."""
    with sampler(model.pipe, scheduler):
        images = generate(model.pipe, prompts, seeds, steps=steps, guidance_scale=guidance_scale,
                          batch_size=batch_size, **model.sample_kwargs(), **kwargs)
        return [im for _, im in tqdm(images, total=len(prompts), desc=desc, unit="img", disable=desc is None)]


def save_images(stages: dict[str, list[Image.Image]], names: list[tuple[int, int]], out: Path, cols: int) -> Path:
    """The last stage's grid at `out`; every image of every stage in OUT_STEM-images/
    (pPROMPT-seedSEED.png, plus -base.png for the base stage of a cascade)."""
    folder = out.parent / f"{out.stem}-images"
    folder.mkdir(parents=True, exist_ok=True)
    final = list(stages)[-1]
    for stage, images in stages.items():
        suffix = "" if stage == final else f"-{stage}"
        for (j, s), image in zip(names, images):
            image.save(folder / f"p{j}-seed{s}{suffix}.png")
    make_grid(stages[final], cols=cols).save(out)
    return out
