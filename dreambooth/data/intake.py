"""Read a folder of user photos into clean RGB images, and shape them for training.

Everything a user can get wrong here (missing folder, junk files, an output folder that
would be read back as training data) ends up either in ``Intake.skipped`` or in a
``DreamboothError`` that names the folder and says what to do.
"""

from __future__ import annotations

import hashlib
import os
import random
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from PIL import Image, ImageOps, UnidentifiedImageError

if TYPE_CHECKING:   # numpy and torch are imported where arrays are made: the CLI's path checks run before
    import torch     # either loads (numpy alone took 5 s on a loaded 2-core machine)

from dreambooth.errors import DreamboothError

ACCEPTED_FORMATS = "JPEG, PNG, WebP, BMP, TIFF or GIF"
# Caption files beside the photos (data/captions.py): read as text, never reported as "not an image".
TEXT_SUFFIXES = (".txt", ".caption")
_MAX_LISTED = 10  # keep summaries and error messages to one readable paragraph


@dataclass(frozen=True)
class Photo:
    path: Path
    image: Image.Image  # RGB, 8-bit, EXIF orientation already applied


@dataclass
class Intake:
    photos: list[Photo]
    skipped: list[tuple[Path, str]]  # (file, human-readable reason)
    folder: Path | None = None
    role: str = "instance"
    notes: list[str] = field(default_factory=list)   # usable but odd: duplicates, huge files, ignored subfolders

    def summary(self) -> str:
        n = len(self.photos)
        text = f"{n} {self.role} image{'' if n == 1 else 's'}"
        if self.folder is not None:
            text += f" from {self.folder}"
        if not self.skipped:
            return text + "."
        return f"{text}; skipped {len(self.skipped)}: {_list_skipped(self.skipped)}."


def _list_skipped(skipped: Sequence[tuple[Path, str]]) -> str:
    parts = [f"{path.name} ({reason})" for path, reason in skipped[:_MAX_LISTED]]
    if len(skipped) > _MAX_LISTED:
        parts.append(f"and {len(skipped) - _MAX_LISTED} more")
    return ", ".join(parts)


def read_image_folder(
    folder: Path, *, role: str = "instance", min_size: int = 1, allow_empty: bool = False,
    caption_extension: str | None = None,
) -> Intake:
    """Decode every regular, non-hidden file in ``folder`` (not recursive), sorted by name. Caption
    files (.txt, .caption, or ``caption_extension``) are left to data/captions.py.

    ``allow_empty`` returns an empty Intake instead of raising when nothing is usable
    (for folders that are filled in later, such as generated class images).
    """
    folder = Path(folder)
    check_image_folder(folder, role)
    try:
        entries = sorted(folder.iterdir(), key=lambda p: p.name)
    except OSError as exc:
        raise DreamboothError(
            f"Cannot list the {role} image folder {folder} ({exc.strerror or exc}). Check its permissions."
        ) from exc

    photos: list[Photo] = []
    skipped: list[tuple[Path, str]] = []
    subfolders: list[str] = []
    notes: list[str] = []
    seen: dict[str, Path] = {}
    texts = {*TEXT_SUFFIXES, *([caption_extension.lower()] if caption_extension else [])}
    captions: list[str] = []
    for path in entries:
        if path.name.startswith("."):
            continue  # .DS_Store, editor swap files and the like are never photos
        if path.suffix.lower() in texts:
            captions.append(path.name)   # read by data/captions.py
            continue
        if path.is_dir():
            subfolders.append(path.name)
            continue
        if not path.is_file():
            if path.is_symlink():
                skipped.append((path, "broken symbolic link"))
            continue
        image, reason = _load(path, notes)
        if image is not None and min(image.size) < min_size:
            image, reason = None, f"too small: {image.width}x{image.height}, shorter side must be >= {min_size} px"
        if image is None:
            skipped.append((path, reason))
            continue
        digest = hashlib.sha1(image.tobytes() + repr(image.size).encode()).hexdigest()
        if digest in seen:
            notes.append(f"{path.name} is the same picture as {seen[digest].name}, so it counts twice; delete one "
                         "copy unless that is meant.")
        seen.setdefault(digest, path)
        photos.append(Photo(path, image))
    if subfolders and photos:
        notes.append(f"subfolder{'s' if len(subfolders) > 1 else ''} {', '.join(subfolders[:_MAX_LISTED])} of "
                     f"{folder} {'are' if len(subfolders) > 1 else 'is'} not read: only images directly in the "
                     "folder are used; move any photos you meant up into it.")

    if not photos and not allow_empty:
        found = f"It has no usable files: {_list_skipped(skipped)}." if skipped else \
            f"It holds only caption files ({', '.join(captions[:_MAX_LISTED])})." if captions else "It is empty."
        if subfolders:
            found += f" Subfolders are not searched ({', '.join(subfolders[:_MAX_LISTED])})."
        raise DreamboothError(
            f"No usable {role} images in {folder}. {found} "
            f"Put {ACCEPTED_FORMATS} photos directly in that folder and run again."
        )
    return Intake(photos, skipped, folder, role, notes)


def check_image_folder(folder: Path, role: str) -> None:
    """The folder exists and is a folder (a path check: no image is opened)."""
    if not folder.exists():
        raise DreamboothError(
            f"The {role} image folder {folder} does not exist. "
            f"Check the path, or create it and put your {role} photos in it."
        )
    if not folder.is_dir():
        raise DreamboothError(
            f"The {role} image path {folder} is a file, not a folder. "
            f"Pass the folder that contains the {role} photos instead."
        )


def photo_notes(photos: Sequence[Photo], resolution: int) -> list[str]:
    """One line per photo that will train poorly at `resolution`: well below it (upscaled, so
    blurry) or far from square (each view is a square crop, so most of the picture is never seen)."""
    notes = []
    for ph in photos:
        w, h = ph.image.size
        if min(w, h) * 1.5 < resolution:   # a slight upscale is harmless
            notes.append(f"{ph.path.name} is {w}x{h}, smaller than the {resolution} px training size: it is "
                         f"upscaled {resolution / min(w, h):.1f}x and will look blurry to the model.")
        if max(w, h) > 2.5 * min(w, h):
            notes.append(f"{ph.path.name} is {w}x{h}: each training view is a square crop of it, so it shows at "
                         f"most 1/{max(w, h) / min(w, h):.0f} of the picture; crop it around the subject yourself.")
    return notes


def _load(path: Path, notes: list[str]) -> tuple[Image.Image | None, str]:
    """Return (RGB image, "") or (None, reason); never raises for a bad file. A very large image is
    decoded with a note instead of Pillow's raw warning."""
    if path.suffix.lower() in {".heic", ".heif"}:
        return None, "HEIC/HEIF is not supported, convert it to JPEG or PNG"
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                im.load()  # decode now so truncated files are caught here, not mid-training
                if any(issubclass(w.category, Image.DecompressionBombWarning) for w in caught):
                    notes.append(f"{path.name} is {im.width}x{im.height} ({im.width * im.height / 1e6:.0f} "
                                 "megapixels): decoding it takes a lot of memory; a copy of a few megapixels "
                                 "trains the same.")
                return to_rgb(ImageOps.exif_transpose(im)), ""
    except UnidentifiedImageError:
        return None, "not an image"
    except Image.DecompressionBombError:
        return None, "too large to decode safely"
    except PermissionError:
        return None, "permission denied"
    except (OSError, SyntaxError, ValueError) as exc:
        # Pillow reports truncated or corrupt data as OSError/SyntaxError with a useful message.
        return None, f"truncated or corrupt: {exc}"


def to_rgb(image: Image.Image) -> Image.Image:
    """Convert any Pillow mode to 8-bit RGB; transparency becomes white, not black."""
    if image.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I", "F"):
        return _high_depth_to_rgb(image)
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in image.info:
        rgba = image.convert("RGBA")  # also honours P/L/RGB tRNS transparency
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return image.convert("RGB") if image.mode != "RGB" else image


def _high_depth_to_rgb(image: Image.Image) -> Image.Image:
    # Pillow's own convert() clips 16-bit values at 255, so scale explicitly.
    import numpy as np
    values = np.nan_to_num(np.asarray(image, dtype=np.float64))
    peak = float(values.max(initial=0.0))
    if image.mode.startswith("I;16"):
        full = 65535.0
    elif image.mode == "F" and peak <= 1.0:
        full = 1.0  # float images are conventionally 0..1
    else:
        # 'I' and other 'F' data carry no bit depth: pick the smallest usual range that fits.
        full = next((r for r in (255.0, 65535.0) if peak <= r), peak)
    gray = np.clip(np.round(values * (255.0 / full)), 0, 255).astype(np.uint8)
    return Image.fromarray(gray).convert("RGB")


def check_output_dir(output_dir: Path, input_dirs: Sequence[Path]) -> None:
    """Refuse an output folder that is a file, cannot be written, or is (inside) an input folder."""
    output_dir = Path(output_dir)
    if output_dir.exists() and not output_dir.is_dir():
        raise DreamboothError(f"The output folder {output_dir} is an existing file, not a folder. Choose another "
                              f"--output_dir (for example {output_dir.with_name(output_dir.name + '-model')}).")
    parent = next(p for p in [output_dir.absolute(), *output_dir.absolute().parents] if p.exists())
    if not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
        raise DreamboothError(f"The output folder {output_dir} cannot be written here ({parent} is not a writable "
                              "folder). Choose an --output_dir you can write to.")
    out_real = Path(output_dir).resolve()
    for input_dir in input_dirs:
        in_real = Path(input_dir).resolve()
        if out_real != in_real and in_real not in out_real.parents:
            continue
        where = "the same folder as" if out_real == in_real else "inside"
        aliased = Path(output_dir).absolute() != out_real or Path(input_dir).absolute() != in_real
        real = f" (real paths: {out_real} and {in_real})" if aliased else ""
        sibling = in_real.parent / f"{in_real.name}-output"
        raise DreamboothError(
            f"The output folder {output_dir} is {where} the input folder {input_dir}{real}. "
            f"Checkpoints and samples saved there would be read back as training photos on the next run. "
            f"Choose an output folder outside it, for example {sibling}."
        )


def fit_square(
    image: Image.Image, resolution: int, *, crop: str = "center", rng: random.Random | None = None
) -> Image.Image:
    """Scale so the shorter side is ``resolution``, then crop a ``resolution`` square."""
    if resolution <= 0:
        raise ValueError(f"resolution must be positive, got {resolution}")
    if crop not in ("center", "random"):
        raise ValueError(f"crop must be 'center' or 'random', got {crop!r}")
    image = to_rgb(image)
    w, h = image.size
    scale = resolution / min(w, h)
    # Offset of the crop along the long side, in resized pixels, as if we resized then cropped.
    slack = max(round(max(w, h) * scale) - resolution, 0)
    if crop == "center":
        offset = slack / 2
    else:
        offset = (rng.randint if rng is not None else random.randint)(0, slack)
    # Resample straight from the crop box in source coordinates: one resampling pass and no
    # rounding of the intermediate size, so the square is never slightly stretched.
    side = min(w, h)
    start = min(offset / scale, max(w, h) - side)  # rounding must not push the box off the image
    box = (start, 0.0, start + side, float(side)) if w >= h else (0.0, start, float(side), start + side)
    out = image.resize((resolution, resolution), Image.Resampling.LANCZOS, box=box, reducing_gap=3.0)
    # SDXL conditions on (original size, crop top-left in resized pixels): record where this crop came from.
    cut = round(start * scale)
    out.info["dreambooth_crop"] = (h, w, 0, cut) if w >= h else (h, w, cut, 0)
    return out


def to_tensor(image: Image.Image) -> torch.Tensor:
    """(3, H, W) float32 in [-1, 1], the range the VAE expects."""
    import numpy as np
    import torch
    array = np.array(to_rgb(image), dtype=np.uint8)  # copy: torch wants a writable buffer
    return torch.from_numpy(array).permute(2, 0, 1).float().div(127.5).sub(1.0)


def to_pil(tensor: torch.Tensor) -> Image.Image:
    """Inverse of ``to_tensor``; values outside [-1, 1] are clamped."""
    import torch
    if tensor.ndim != 3 or tensor.shape[0] != 3:
        raise ValueError(f"expected a (3, H, W) tensor, got shape {tuple(tensor.shape)}")
    t = torch.nan_to_num(tensor.detach().float().cpu()).clamp(-1.0, 1.0)
    array = t.add(1.0).mul(127.5).round().to(torch.uint8).permute(1, 2, 0).numpy()
    return Image.fromarray(array)
