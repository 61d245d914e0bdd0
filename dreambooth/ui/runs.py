"""The UI's work folder: one folder per run, holding everything about it.

WORK/runs/RUN/ holds photos/ (the uploads, renamed safely), request.yaml (the settings trained),
model/ (the CLI's output folder), log.txt and events.jsonl (what the worker printed and reported),
status.json (queued / running / done / stopped / failed), gallery/ (rendered prompts) and
downloads/ (what the Results tab hands out). A run is named by the time it was made; names from the
browser are checked against the folders that exist.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from ..data.captions import normalize_extension
from ..data.intake import TEXT_SUFFIXES
from ..errors import DreamboothError
from ..export.names import SR_SUBDIR, has_export, single_file_name, webui_embedding, weight_files
from ..files import write_json

MIN_PHOTOS, MAX_PHOTOS = 3, 20
MAX_PHOTO_BYTES = 25 * 2**20          # a phone photo is a few MB; anything larger is refused unread
_RUN_NAME = re.compile(r"\d{8}-\d{6}(-\d+)?")


@dataclass(frozen=True)
class RunFolder:
    root: Path

    @property
    def name(self) -> str:
        return self.root.name

    photos = property(lambda self: self.root / "photos")
    model = property(lambda self: self.root / "model")
    request = property(lambda self: self.root / "request.yaml")
    log = property(lambda self: self.root / "log.txt")
    events = property(lambda self: self.root / "events.jsonl")
    status_file = property(lambda self: self.root / "status.json")
    gallery = property(lambda self: self.root / "gallery")
    downloads = property(lambda self: self.root / "downloads")

    def status(self) -> dict:
        try:
            return json.loads(self.status_file.read_text())
        except (OSError, ValueError):
            return {"state": "draft"}

    def set_status(self, state: str, message: str = "", **extra) -> None:
        write_json(self.status_file, {"state": state, "message": message, "time": time.time(), **extra})


def runs_dir(work_dir: Path) -> Path:
    return Path(work_dir) / "runs"


def new_run(work_dir: Path) -> RunFolder:
    base = time.strftime("%Y%m%d-%H%M%S")
    root = runs_dir(work_dir) / base
    n = 1
    while root.exists():
        n += 1
        root = runs_dir(work_dir) / f"{base}-{n}"
    root.mkdir(parents=True)
    return RunFolder(root)


def list_runs(work_dir: Path) -> list[RunFolder]:
    """Every run under the work folder, newest first."""
    folder = runs_dir(work_dir)
    found = [p for p in folder.iterdir() if p.is_dir() and _RUN_NAME.fullmatch(p.name)] if folder.is_dir() else []
    return [RunFolder(p) for p in sorted(found, key=lambda p: p.name, reverse=True)]


def open_run(work_dir: Path, name: str) -> RunFolder:
    """A run by name; only names of existing run folders are accepted (no paths from the browser)."""
    if not isinstance(name, str) or not _RUN_NAME.fullmatch(name) or not (runs_dir(work_dir) / name).is_dir():
        raise DreamboothError(f"There is no run named {name!r} under {runs_dir(work_dir)}. Pick one from the list.")
    return RunFolder(runs_dir(work_dir) / name)


def safe_name(name: str, taken: set[str]) -> str:
    """A file name with no folder part, no leading dot and only plain characters, unique in `taken`."""
    stem = Path(str(name).replace("\\", "/")).name
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", stem).lstrip("._-")[:80] or "photo"
    candidate, n = stem, 1
    while candidate.lower() in taken:
        n += 1
        p = Path(stem)
        candidate = f"{p.stem}-{n}{p.suffix}"
    taken.add(candidate.lower())
    return candidate


def store_uploads(run: RunFolder, uploads: list[tuple[str, Path]], caption_extension: str | None = None) -> list[Path]:
    """Copy uploaded files (original name, temporary path) into RUN/photos/ under safe names. The
    files are only copied here; intake later opens them as images with Pillow, nothing else.
    Caption files (dog1.txt beside dog1.jpg) come along and do not count as photos."""
    texts = {*TEXT_SUFFIXES, *([normalize_extension(caption_extension).lower()] if caption_extension else [])}
    n_photos = sum(Path(name).suffix.lower() not in texts for name, _ in uploads)
    if not MIN_PHOTOS <= n_photos <= MAX_PHOTOS:
        raise DreamboothError(f"Upload {MIN_PHOTOS} to {MAX_PHOTOS} photos of the subject; got {n_photos}"
                              + (f" (and {len(uploads) - n_photos} caption files)" if n_photos < len(uploads) else "")
                              + ". DreamBooth works from a few photos: 3-5 varied ones are enough.")
    too_big = [(n, p.stat().st_size) for n, p in uploads if p.stat().st_size > MAX_PHOTO_BYTES]
    if too_big:
        name, size = too_big[0]
        raise DreamboothError(f"{Path(name).name} is {size / 2**20:.0f} MB; photos are limited to "
                              f"{MAX_PHOTO_BYTES // 2**20} MB each. Save a smaller JPEG of it (a few megapixels "
                              "trains the same) and upload again.")
    if run.photos.exists():
        shutil.rmtree(run.photos)    # a new upload replaces the run's earlier photos
    run.photos.mkdir(parents=True)
    taken: set[str] = set()
    stored = []
    for name, path in uploads:
        target = run.photos / safe_name(name, taken)
        shutil.copyfile(path, target)
        stored.append(target)
    return stored


def store_subject(run: RunFolder, subject: str, n: int = 5) -> list[Path]:
    """Render n photos of a micro-world subject into RUN/photos/ (the offline way to try the tool)."""
    from ..world.subjects import get_subject, write_photos
    if run.photos.exists():
        shutil.rmtree(run.photos)
    return write_photos(get_subject(subject), n, run.photos)


def finished(run: RunFolder) -> bool:
    """Whether the run's model folder holds an export (a pipeline, or a LoRA adapter)."""
    return has_export(run.model)


def zip_model(run: RunFolder) -> Path:
    """RUN/downloads/RUN-model.zip: the exported folder (pipeline or LoRA, with step (b)'s sr/) without
    its resumable checkpoints, and without the single-file checkpoint, which is offered on its own."""
    if not finished(run):
        raise DreamboothError(f"Run {run.name} has no finished model yet: train it to the end first.")
    run.downloads.mkdir(exist_ok=True)
    base = run.downloads / f"{run.name}-model"
    staging = run.downloads / "staging"
    shutil.rmtree(staging, ignore_errors=True)
    single = single_file_name(run.model)

    def skip(folder: str, names: list[str]) -> list[str]:   # the single file by name at the top level only
        return [n for n in names if n.startswith(("checkpoint-", ".")) or (n == single and Path(folder) == run.model)]
    shutil.copytree(run.model, staging / "model", ignore=skip)
    made = shutil.make_archive(str(base), "zip", root_dir=staging)
    shutil.rmtree(staging, ignore_errors=True)
    return Path(made)


def weight_downloads(run: RunFolder) -> list[Path]:
    """The run's one-file weights (its LoRA in diffusers' and kohya's layouts, or its single-file
    checkpoint; step (b)'s from model/sr/ too), linked into RUN/downloads/ as RUN-NAME or RUN-sr-NAME,
    so two files named alike (a cascade's two LoRAs) stay apart in the browser."""
    run.downloads.mkdir(exist_ok=True)
    webui = webui_embedding(run.model)    # keeps its name: webui reads it as the prompt's trigger word
    return [_link(path, run.downloads / (path.name if path == webui else f"{prefix}-{path.name}"))
            for prefix, folder in ((run.name, run.model), (f"{run.name}-{SR_SUBDIR}", run.model / SR_SUBDIR))
            for path in weight_files(folder)]


def _link(source: Path, target: Path) -> Path:
    """`target` becomes `source`'s content at once: a hard link (no copy of gigabytes), else a copy,
    made beside it and renamed in, so a download never sees half a file or an earlier export."""
    temp = target.with_name(f".{target.name}.part")
    temp.unlink(missing_ok=True)
    try:
        os.link(source, temp)
    except OSError:          # a file system without hard links
        shutil.copyfile(source, temp)
    os.replace(temp, target)
    return target
