"""`dreambooth eval`: one fine-tuned model (and optionally its base model) through the protocol."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch

from ..data.intake import read_image_folder
from .encoders import Encoders, resolve_encoders, world_dir_of
from .protocol import Settings, model_identifier, prompt_templates, read_class_prompt, sample_model
from .report import write_report
from .score import embed_reference, score


def protocol_templates(model: str | Path, class_name: str, settings: Settings) -> tuple[str, ...]:
    """The prompt list for a model: for micro-world models 'auto' means the prompts the world can draw
    (it has no mountains or Eiffel Tower), else DreamBench's object or live-subject list."""
    kind = settings.prompt_list
    if kind == "auto" and world_dir_of(model) is not None:
        kind = "world"
    return prompt_templates(class_name, kind, settings.prompts)


def run_eval(model: str, instance_data_dir: str, class_name: str, out: Path, *, settings: Settings,
             base_model: str | None = None, base_sr_model: str | None = None, clip_model: str | None = None,
             dino_model: str | None = None, identifier: str | None = None, command: str = "", log=print) -> Path:
    """Generate, score and report; returns the path of report.md."""
    settings.check()
    # cheap checks first: photos, identifier and encoders fail before minutes of sampling
    photos = read_image_folder(Path(instance_data_dir), role="instance")
    log(photos.summary())
    ident = model_identifier(model, identifier)
    templates = protocol_templates(model, class_name, settings)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    encoders: Encoders = resolve_encoders(clip_model, dino_model, model, device)
    real = embed_reference([p.image for p in photos.photos], encoders)
    class_prompt = read_class_prompt(model, class_name) if settings.class_images else None

    runs = [("DreamBooth", model, None)] + ([("base model", base_model, base_sr_model)] if base_model else [])
    results = []
    for label, folder, sr in runs:
        log(f"sampling {label} ({folder}): {len(templates)} prompts x {settings.images_per_prompt} images"
            + (f" + {settings.class_images} of {class_prompt!r}" if class_prompt else ""))
        samples = sample_model(folder, templates, identifier=ident, class_name=class_name, class_prompt=class_prompt,
                               settings=settings, label=label, sr_model=sr)
        results.append((samples, score(samples, real, encoders)))
    report = write_report(out, results, real_self=real.self_similarity(), n_real=real.count, command=command,
                          settings={**dataclasses.asdict(settings), "identifier": ident},
                          encoders={"clip": encoders.clip.source, "dino": encoders.dino.source},
                          class_name=class_name)
    for samples, figures in results:
        log(f"{samples.label}: " + ", ".join(f"{k} {v:.3f}" for k, v in figures.headline().items() if v is not None))
    return report
