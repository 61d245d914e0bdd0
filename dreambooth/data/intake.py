"""Read a folder of user photos into clean RGB images, and shape them for training.

Everything a user can get wrong here (missing folder, junk files, an output folder that
would be read back as training data) ends up either in ``Intake.skipped`` or in a
``DreamboothError`` that names the folder and says what to do.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from dreambooth.errors import DreamboothError

ACCEPTED_FORMATS = "JPEG, PNG, WebP, BMP, TIFF or GIF"
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
    folder: Path, *, role: str = "instance", min_size: int = 1, allow_empty: bool = False
) -> Intake:
    """Decode every regular, non-hidden file in ``folder`` (not recursive), sorted by name.

    ``allow_empty`` returns an empty Intake instead of raising when nothing is usable
    (for folders that are filled in later, such as generated class images).
    """
    folder = Path(folder)
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
    try:
        entries = sorted(folder.iterdir(), key=lambda p: p.name)
    except OSError as exc:
        raise DreamboothError(
            f"Cannot list the {role} image folder {folder} ({exc.strerror or exc}). Check its permissions."
        ) from exc

    photos: list[Photo] = []
    skipped: list[tuple[Path, str]] = []
    subfolders: list[str] = []
    for path in entries:
        if path.name.startswith("."):
            continue  # .DS_Store, editor swap files and the like are never photos
        if path.is_dir():
            subfolders.append(path.name)
            continue
        if not path.is_file():
            if path.is_symlink():
                skipped.append((path, "broken symbolic link"))
            continue
        image, reason = _load(path)
        if image is not None and min(image.size) < min_size:
            image, reason = None, f"too small: {image.width}x{image.height}, shorter side must be >= {min_size} px"
        if image is None:
            skipped.append((path, reason))
        else:
            photos.append(Photo(path, image))

    if not photos and not allow_empty:
        found = f"It has no usable files: {_list_skipped(skipped)}." if skipped else "It is empty."
        if subfolders:
            found += f" Subfolders are not searched ({', '.join(subfolders[:_MAX_LISTED])})."
        raise DreamboothError(
            f"No usable {role} images in {folder}. {found} "
            f"Put {ACCEPTED_FORMATS} photos directly in that folder and run again."
        )
    return Intake(photos, skipped, folder, role)


def _load(path: Path) -> tuple[Image.Image | None, str]:
    """Return (RGB image, "") or (None, reason); never raises for a bad file."""
    if path.suffix.lower() in {".heic", ".heif"}:
        return None, "HEIC/HEIF is not supported, convert it to JPEG or PNG"
    try:
        with Image.open(path) as im:
            im.load()  # decode now so truncated files are caught here, not mid-training
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
    """Refuse an output folder that is, or is inside, an input folder."""
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
    array = np.array(to_rgb(image), dtype=np.uint8)  # copy: torch wants a writable buffer
    return torch.from_numpy(array).permute(2, 0, 1).float().div(127.5).sub(1.0)


def to_pil(tensor: torch.Tensor) -> Image.Image:
    """Inverse of ``to_tensor``; values outside [-1, 1] are clamped."""
    if tensor.ndim != 3 or tensor.shape[0] != 3:
        raise ValueError(f"expected a (3, H, W) tensor, got shape {tuple(tensor.shape)}")
    t = torch.nan_to_num(tensor.detach().float().cpu()).clamp(-1.0, 1.0)
    array = t.add(1.0).mul(127.5).round().to(torch.uint8).permute(1, 2, 0).numpy()
    return Image.fromarray(array)
