"""`dreambooth generate`: sample a grid from a pipeline folder, identifier filled in.

A personalized cascade (the output of `dreambooth train --sr-model`, whose step (b) sits in OUT/sr/)
renders base -> SR: each base image is the SR pipeline's low-res input, under the same seed.
A LoRA (--lora: the output folder of `dreambooth train --lora`, or one .safetensors file in diffusers'
or kohya's layout) is loaded into the base model by diffusers' own `load_lora_weights`. A LoRA output
folder also stands for its base model when given as --model.
"""

from __future__ import annotations

import inspect
import json
from pathlib import Path

import torch
from PIL import Image
from tqdm.auto import tqdm

from ..config import ModelConfig
from ..export.names import EMBEDDINGS, INDEX, SR_SUBDIR, WEIGHTS, has_export
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
                  sr_noise_level: int | None = None, lora: str | None = None, lora_scale: float = 1.0,
                  original_config: str | None = None) -> Path:
    """Write a grid (one row per prompt) and each image. Image i of a prompt uses seeds[i] (default
    seed + i) in every stage. sr_model: an SR pipeline folder, 'none', or None for MODEL/sr/ if present.
    lora: a LoRA folder or file loaded into the base model at `lora_scale`."""
    seeds = seeds or [seed + i for i in range(n)]
    model_path, lora = resolve_ref(model_path, lora)
    sr_path = find_sr_model(model_path, sr_model) or (find_sr_model(lora, sr_model) if lora else None)
    sr_path, sr_lora = resolve_ref(sr_path, None) if sr_path else (None, None)
    if sr_path and is_super_resolution(sr_path) is False:
        raise DreamboothError(f"--sr-model {sr_path} is not a super-resolution model (it takes no low-res "
                              "image). Name an IF stage II, SD x4 upscaler or micro-world SR pipeline folder.")
    if is_super_resolution(model_path):
        raise DreamboothError(f"{model_path} is a super-resolution model: it upsamples a base model's images and "
                              "cannot start from a prompt alone. Pass the base model as --model (with the SR model "
                              f"in its {SR_SUBDIR}/ folder, as `dreambooth train --sr-model` writes it, or named by "
                              "--sr-model).")
    base, identifier = open_model(model_path, resolution, lora, lora_scale, original_config)
    flat = [p for p in prompts for _ in seeds]
    all_seeds = [s for _ in prompts for s in seeds]
    stages = {"base": render(base, fill_prompts(flat, identifier, model_path), all_seeds, steps=steps,
                             guidance_scale=guidance_scale, scheduler=scheduler, batch_size=len(seeds),
                             desc="images" if not sr_path else "base images")}
    del base   # one pipeline in memory at a time
    if sr_path:
        sr, sr_identifier = open_model(sr_path, None, sr_lora, lora_scale)
        stages["sr"] = render(sr, fill_prompts(flat, sr_identifier or identifier, sr_path), all_seeds,
                              scheduler=scheduler, batch_size=len(seeds), images=stages["base"], desc="super-resolution",
                              **sr_sampling(sr, sr_path, steps=sr_steps, noise_level=sr_noise_level,
                                            guidance_scale=sr_guidance_scale, fallback_steps=steps))
    return save_images(stages, [(j, s) for j in range(len(prompts)) for s in seeds], out, cols=len(seeds))


def sr_sampling(sr: Model, sr_path: str, *, steps: int | None, noise_level: int | None,
                guidance_scale: float | None, fallback_steps: int) -> dict:
    """An SR stage's sampler settings: the flags given, else what the model folder recommends
    (dreambooth_sr.json's "sampling"), else the pipeline's own defaults (IF stage II: noise level 250,
    guidance 4; x4 upscaler: 20, 9) and the base stage's step count."""
    hinted = sr.sr.sampling
    level = noise_level if noise_level is not None else hinted.get("noise_level")
    if level is not None and not 0 <= level < sr.sr.max_level:
        raise DreamboothError(f"--sr-noise-level must be in [0, {sr.sr.max_level}) for {sr_path}; got {level}.")
    if guidance_scale is None:
        guidance_scale = hinted.get("guidance_scale",
                                    inspect.signature(sr.pipe.__call__).parameters["guidance_scale"].default)
    return {"steps": steps or hinted.get("steps") or fallback_steps, "guidance_scale": guidance_scale,
            **({} if level is None else {"noise_level": level})}


def open_model(path: str, resolution: int | None = None, lora: str | None = None, lora_scale: float = 1.0,
               original_config: str | None = None) -> tuple[Model, str | None]:
    """`path` may be a LoRA output folder: its base model is loaded and the LoRA into it."""
    path, lora = resolve_ref(path, lora)
    model = load_model(ModelConfig(pretrained_model_name_or_path=path, original_config=original_config), resolution)
    model.pipe.to("cuda" if torch.cuda.is_available() else "cpu")
    identifier = read_identifier(Path(path))
    if lora:
        identifier = load_lora(model.pipe, lora, lora_scale) or identifier
    return model, identifier


def load_lora(pipe, lora: str, scale: float) -> str | None:
    """Load a LoRA folder or file into `pipe` at `scale`; -> the identifier it was trained with, if known."""
    from ..export.lora import read_identifier as file_identifier
    path = Path(lora)
    file = path / WEIGHTS if path.is_dir() else path
    if not file.is_file():
        raise DreamboothError(f"--lora {lora}: no LoRA weights there. Pass the output folder of `dreambooth train "
                              f"--lora` (it holds {WEIGHTS}) or one LoRA .safetensors file (diffusers or kohya layout).")
    try:
        pipe.load_lora_weights(str(file.parent), weight_name=file.name, adapter_name="dreambooth")
    except (ValueError, KeyError, RuntimeError) as e:
        raise DreamboothError(f"--lora {lora} does not fit {type(pipe).__name__}'s modules: "
                              f"{str(e).splitlines()[0][:300]} Pass the base model the LoRA was trained on as --model."
                              ) from None
    pipe.set_adapters("dreambooth", scale)
    if path.is_dir() and (path / EMBEDDINGS).is_file():   # trained with --train_text_encoder_ti
        from .embedding import load_rows
        load_rows(pipe, path / EMBEDDINGS)
    return read_identifier(path) if path.is_dir() else file_identifier(file)


def resolve_ref(path: str, lora: str | None) -> tuple[str, str | None]:
    """A LoRA output folder given as the model stands for (its base model, itself)."""
    folder = Path(path)
    if folder.is_dir():
        from .publish import finish_interrupted_export
        finish_interrupted_export(folder)   # a LoRA export this tool was swapping in when it was killed
    if lora is None and (folder / WEIGHTS).exists() and not (folder / INDEX).exists():
        from ..config import load_yaml
        job = load_yaml(folder / "dreambooth.yaml")
        return job.model.pretrained_model_name_or_path, str(folder)
    return path, lora


def find_sr_model(model_path: str, sr_model: str | None) -> str | None:
    if sr_model == "none":
        return None
    if sr_model:
        return sr_model
    candidate = Path(model_path) / SR_SUBDIR
    return str(candidate) if has_export(candidate) else None


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
