"""What intake makes of a run's photos, for the Photos tab: used or skipped (and why), the notes,
and the crops the model will train on. It calls the training code's own intake and view making."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from ..config import TrainJob
from ..data.captions import caption_files, read_caption, unused_captions_note
from ..data.intake import photo_notes, read_image_folder
from ..errors import DreamboothError

SHOWN = 128   # crops are tiny for the micro world (32 px): shown at least this large, pixels kept sharp


@dataclass
class PhotoReport:
    rows: list[list[str]]                      # [file, 'used' / 'skipped', why]
    notes: list[str]
    crops: list[tuple[Image.Image, str]]      # (view the model sees, caption)
    resolution: int | None

    def summary(self) -> str:
        used = sum(r[1] == "used" for r in self.rows)
        text = f"{used} photo{'s' if used != 1 else ''} used, {len(self.rows) - used} skipped"
        return text + (f"; the model sees {self.resolution} px crops." if self.resolution else ".")


def model_resolution(job: TrainJob) -> int | None:
    """The training size: the form's, else the model folder's own (the micro world's by default)."""
    if job.data.resolution:
        return job.data.resolution
    from ..core.model_folder import native_resolution
    from ..world.defaults import WORLD_BASE
    folder = Path(job.model.pretrained_model_name_or_path or WORLD_BASE).expanduser()
    return native_resolution(folder) if folder.is_dir() else None


def photo_report(folder: Path, job: TrainJob) -> PhotoReport:
    """Read `folder` as training would; raises DreamboothError (the CLI's message) when nothing is usable."""
    extension = job.data.caption_extension
    intake = read_image_folder(folder, role="instance", caption_extension=extension)
    rows = [[p.path.name, "used", ""] for p in intake.photos] + [[p.name, "skipped", why] for p, why in intake.skipped]
    resolution = model_resolution(job)
    if resolution is None:
        return PhotoReport(rows, intake.notes, [], None)
    from ..data.batches import make_views
    d = job.data
    views, source = make_views([p.image for p in intake.photos], resolution, center_crop=d.center_crop,
                               random_flip=d.random_flip, random_views=d.random_crop_views, seed=job.train.seed)
    scale = max(1, -(-SHOWN // resolution))
    labels = crop_labels(intake.photos, extension)
    crops = [(v.resize((resolution * scale,) * 2, Image.NEAREST), labels[i]) for v, i in zip(views, source)]
    notes = intake.notes + unused_captions_note(intake.photos, extension) + photo_notes(intake.photos, resolution)
    return PhotoReport(rows, notes, crops, resolution)


def crop_labels(photos: list, extension: str | None) -> list[str]:
    """Each photo's name and, when captions are on, the caption it trains on (as written: [V] unfilled)."""
    if not extension:
        return [ph.path.name for ph in photos]
    return [f"{ph.path.name}: {read_caption(f)}" if f else f"{ph.path.name}: no caption (the instance prompt)"
            for ph, f in zip(photos, caption_files(photos, extension))]


def report_or_error(folder: Path, job: TrainJob) -> tuple[PhotoReport | None, str]:
    """(report, '') or (None, the message to show)."""
    if not folder.is_dir():
        return None, "No photos yet: upload 3-20 photos or pick a micro-world subject."
    try:
        return photo_report(folder, job), ""
    except DreamboothError as e:
        return None, str(e)
