"""`dreambooth generate`: sample a grid from a pipeline folder, identifier filled in."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from ..config import ModelConfig
from .identifier import PLACEHOLDERS, fill_identifier
from .models import load_model
from .sample import generate, make_grid, sampler
from ..errors import DreamboothError


def read_identifier(folder: Path) -> str | None:
    path = Path(folder) / "identifier.json"
    return json.loads(path.read_text())["identifier"] if path.exists() else None


def generate_grid(model_path: str, prompts: list[str], *, n: int, out: Path, seed: int, steps: int,
                  guidance_scale: float, resolution: int | None = None,
                  scheduler: str = "DPMSolverMultistepScheduler") -> Path:
    model = load_model(ModelConfig(pretrained_model_name_or_path=model_path), resolution)
    identifier = read_identifier(Path(model_path))
    if identifier is None and any(ph in p for p in prompts for ph in PLACEHOLDERS):
        raise DreamboothError(f"The prompt uses '<id>' but {model_path} has no identifier.json (it was not made by "
                              "`dreambooth train`). Write the identifier word into the prompt instead.")
    filled = [fill_identifier(p, identifier) if identifier else p for p in prompts]
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model.pipe.to(device)
    with sampler(model.pipe, scheduler):
        images = [im for _, im in generate(model.pipe, [p for p in filled for _ in range(n)],
                                           [seed + i for _ in filled for i in range(n)], steps=steps,
                                           guidance_scale=guidance_scale, batch_size=n, **model.sample_kwargs())]
    out.parent.mkdir(parents=True, exist_ok=True)
    make_grid(images, cols=n).save(out)
    return out
