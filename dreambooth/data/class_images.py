"""Class images for prior preservation: the base model's own samples of the class prompt.

Generated only when fewer than `num_class_images` exist, one seed per image (so the set does not
depend on batch size), saved one PNG at a time with a manifest, and therefore resumable: an
interrupted run keeps what it wrote and the next run generates only what is missing. Without an
explicit folder they live in a cache keyed by (model and its weights, prompt, resolution, sampler), so
every run with the same base model and class reuses them, and none reuses another model's.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from tqdm.auto import tqdm

from .. import files
from .intake import read_image_folder

MANIFEST = ".dreambooth_class_images.json"   # hidden: not read as an image
_OURS = re.compile(r"class_(\d{5})\.png")


@dataclass
class ClassImageJob:
    prompt: str
    folder: Path
    wanted: int
    found: int
    key: str
    generated: int = 0
    source: Path | None = None   # the class images these are made from (a super-resolution model's class pairs)
    notes: list[str] = field(default_factory=list)   # what was found wrong on disk and what was done about it

    @property
    def missing(self) -> int:
        return max(0, self.wanted - self.found - self.generated)


def cache_root() -> Path:
    return Path(os.environ.get("DREAMBOOTH_CACHE", Path.home() / ".cache" / "dreambooth"))


def cache_key(model_source: str, prompt: str, resolution: int, sampler: str) -> str:
    src = str(Path(model_source).resolve()) if Path(model_source).exists() else model_source
    blob = json.dumps([src, weights_fingerprint(Path(model_source)), prompt, resolution, sampler])
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


_SAMPLE = 1 << 20   # bytes read from each end of a weight file


def weights_fingerprint(source: Path) -> str:
    """What the weights at `source` (a pipeline folder or one file) are, cheaply: each weight file's
    name, size and first and last MiB. A folder whose weights were replaced (retrained in place, a
    new release of the micro world) must not reuse the class images of the old weights. Hub ids
    (no local files) -> ''."""
    if source.is_file():
        found = [source]
    elif source.is_dir():
        found = sorted(p for ext in ("*.safetensors", "*.bin") for p in source.rglob(ext)
                       if not any(part.startswith("checkpoint-") for part in p.relative_to(source).parts))
    else:
        return ""
    digest = hashlib.sha256()
    for path in found:
        size = path.stat().st_size
        digest.update(f"{path.relative_to(source) if source.is_dir() else path.name}:{size}".encode())
        with open(path, "rb") as f:
            digest.update(f.read(_SAMPLE))
            if size > 2 * _SAMPLE:
                f.seek(size - _SAMPLE)
                digest.update(f.read(_SAMPLE))
    return digest.hexdigest()


def plan_class_images(model_source: str, prompt: str, folder: str | None, wanted: int, resolution: int,
                      sampler: str) -> ClassImageJob:
    """Count the usable class images in the folder. Each is decoded: a corrupt one that this tool
    wrote is deleted (and so drawn again, with its own seed); any other is named and replaced by a
    new one. A killed run's temporaries are removed; a torn or foreign manifest is rebuilt."""
    key = cache_key(model_source, prompt, resolution, sampler)
    path = Path(folder) if folder else cache_root() / "class_images" / key
    job = ClassImageJob(prompt, path, wanted, 0, key)
    if not path.is_dir():
        return job
    files.remove_stale_temps(path)
    intake = read_image_folder(path, role="class", allow_empty=True)
    job.found = len(intake.photos)
    if intake.skipped:
        for bad, _ in intake.skipped:
            if _OURS.fullmatch(bad.name):
                files.remove(bad)
        listed = ", ".join(f"{bad.name} ({why})" for bad, why in intake.skipped[:10])
        job.notes.append(f"{len(intake.skipped)} unusable file(s) in the class image folder {path}: {listed}; "
                         f"{'they are' if len(intake.skipped) > 1 else 'it is'} not used, and new class images are "
                         "generated in their place (this tool's own broken ones were deleted).")
    manifest, note = read_manifest(path, key, prompt, sampler)
    # another recipe's images matter when new ones are drawn beside them (step (b) reads step (a)'s as they are)
    if note and (job.missing or manifest.get("key") == key):
        job.notes.append(note)
    return job


def read_manifest(folder: Path, key: str, prompt: str, sampler: str) -> tuple[dict, str | None]:
    """-> (manifest, note). A manifest that is torn (a killed write before writes were atomic) or
    not ours is rebuilt from the images on disk and saved; one made for another (model, prompt,
    resolution, sampler) is kept, with a note: its images are used as they are."""
    path = folder / MANIFEST
    fresh = {"key": key, "prompt": prompt, "sampler": sampler, "images": {}}
    if not path.exists():
        return fresh, None
    try:
        manifest = json.loads(path.read_text())
        if not isinstance(manifest, dict) or not isinstance(manifest.get("images"), dict):
            raise ValueError("not a class-image manifest")
    except (ValueError, UnicodeDecodeError) as e:
        # seeds of rebuilt entries are unknown (None): the manifest records, the images decide
        fresh["images"] = {f.name: None for f in sorted(folder.iterdir()) if _OURS.fullmatch(f.name)}
        files.write_json(path, fresh)
        return fresh, (f"the class-image manifest {path} was unreadable ({str(e)[:80]}); it was rebuilt from the "
                       f"{len(fresh['images'])} class images in the folder.")
    if manifest.get("key") not in (None, key):
        return manifest, (f"the class images in {folder} were generated for another model, prompt, resolution or "
                          f"sampler (prompt {manifest.get('prompt')!r}); they are used as they are. Delete them, or "
                          "pass another --class_data_dir, to have them drawn for this run.")
    return manifest, None


def generate_class_images(job: ClassImageJob, pipe, *, seed: int, steps: int, guidance_scale: float,
                          batch_size: int, sampler: str, inputs: list | None = None, **pipe_kwargs) -> list[Path]:
    """Write the missing class images into job.folder; returns the new files. `inputs`: the input
    image of image i, for models that need one (a super-resolution model's low-res input)."""
    from ..core import events
    from ..core.sample import generate
    job.folder.mkdir(parents=True, exist_ok=True)
    manifest_path = job.folder / MANIFEST
    manifest, _ = read_manifest(job.folder, job.key, job.prompt, sampler)
    manifest.update({"key": job.key, "prompt": job.prompt, "sampler": sampler})
    # Image i always has seed (seed, i); skip indices whose file already exists (resume).
    todo, i = [], 0
    while len(todo) < job.missing:
        if not (job.folder / _name(i)).exists():
            todo.append(i)
        i += 1
    seeds = [seed * 100_003 + i for i in todo]
    written = []
    bar = tqdm(total=len(todo), desc="class images" if job.prompt else "unconditional images", unit="img")
    for k, image in generate(pipe, [job.prompt] * len(todo), seeds, steps=steps, guidance_scale=guidance_scale,
                             batch_size=batch_size, images=None if inputs is None else [inputs[i] for i in todo],
                             **pipe_kwargs):
        path = job.folder / _name(todo[k])
        kept = f"The {job.found + len(written)} class images already in {job.folder} are complete and kept."
        with files.disk_full_is_an_error(job.folder, f"class image {path.name}", kept):
            with files.atomic_path(path) as tmp:   # hidden while written: never read as a class image
                image.save(tmp, format="PNG")
            manifest["images"][path.name] = seeds[k]
            files.write_json(manifest_path, manifest)
        written.append(path)
        bar.update(1)
        events.emit("class_images", folder=str(job.folder), done=len(written), total=len(todo))
    bar.close()
    job.generated = len(written)
    return written


def _name(i: int) -> str:
    return f"class_{i:05d}.png"
