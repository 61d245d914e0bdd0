"""Class images for prior preservation: the base model's own samples of the class prompt.

Generated only when fewer than `num_class_images` exist, one seed per image (so the set does not
depend on batch size), saved one PNG at a time with a manifest, and therefore resumable: an
interrupted run keeps what it wrote and the next run generates only what is missing. Without an
explicit folder they live in a cache keyed by (model, prompt, resolution, sampler), so every run
with the same base model and class reuses them.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

from tqdm.auto import tqdm

from ..core.sample import generate

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff"}
MANIFEST = ".dreambooth_class_images.json"   # hidden: not read as an image


@dataclass
class ClassImageJob:
    prompt: str
    folder: Path
    wanted: int
    found: int
    key: str
    generated: int = 0
    source: Path | None = None   # the class images these are made from (a super-resolution model's class pairs)

    @property
    def missing(self) -> int:
        return max(0, self.wanted - self.found - self.generated)


def cache_root() -> Path:
    return Path(os.environ.get("DREAMBOOTH_CACHE", Path.home() / ".cache" / "dreambooth"))


def cache_key(model_source: str, prompt: str, resolution: int, sampler: str) -> str:
    src = str(Path(model_source).resolve()) if Path(model_source).exists() else model_source
    blob = json.dumps([src, prompt, resolution, sampler])
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def plan_class_images(model_source: str, prompt: str, folder: str | None, wanted: int, resolution: int,
                      sampler: str) -> ClassImageJob:
    key = cache_key(model_source, prompt, resolution, sampler)
    path = Path(folder) if folder else cache_root() / "class_images" / key
    # Counting by file suffix is enough for planning; the images are decoded (and bad ones skipped) once, at encoding.
    found = sum(1 for f in path.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES and not f.name.startswith(".")) \
        if path.is_dir() else 0
    return ClassImageJob(prompt, path, wanted, found, key)


def generate_class_images(job: ClassImageJob, pipe, *, seed: int, steps: int, guidance_scale: float,
                          batch_size: int, sampler: str, inputs: list | None = None, **pipe_kwargs) -> list[Path]:
    """Write the missing class images into job.folder; returns the new files. `inputs`: the input
    image of image i, for models that need one (a super-resolution model's low-res input)."""
    job.folder.mkdir(parents=True, exist_ok=True)
    manifest_path = job.folder / MANIFEST
    manifest = json.loads(manifest_path.read_text()) if manifest_path.exists() else {"images": {}}
    manifest.update({"key": job.key, "prompt": job.prompt, "sampler": sampler})
    # Image i always has seed (seed, i); skip indices whose file already exists (resume).
    todo, i = [], 0
    while len(todo) < job.missing:
        if not (job.folder / _name(i)).exists():
            todo.append(i)
        i += 1
    seeds = [seed * 100_003 + i for i in todo]
    written = []
    bar = tqdm(total=len(todo), desc="class images", unit="img")
    for k, image in generate(pipe, [job.prompt] * len(todo), seeds, steps=steps, guidance_scale=guidance_scale,
                             batch_size=batch_size, images=None if inputs is None else [inputs[i] for i in todo],
                             **pipe_kwargs):
        path = job.folder / _name(todo[k])
        tmp = path.with_name(f".{path.name}.tmp")  # hidden: never read as a class image
        image.save(tmp, format="PNG")
        tmp.replace(path)  # never leave a half-written PNG behind
        manifest["images"][path.name] = seeds[k]
        manifest_path.write_text(json.dumps(manifest, indent=1))
        written.append(path)
        bar.update(1)
    bar.close()
    job.generated = len(written)
    return written


def _name(i: int) -> str:
    return f"class_{i:05d}.png"
