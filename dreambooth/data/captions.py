"""Per-photo prompts read from caption files beside the photos (dog1.jpg + dog1.txt), the layout of
kohya sd-scripts, OneTrainer and SimpleTuner's text-file captions.

Why: with one prompt for every photo ('a photo of [V] dog') whatever the photos share besides the
subject (the same lawn, the same sofa) is bound to [V] as well, and later prompts cannot move the
subject elsewhere. A caption that names the rest ('a photo of [V] dog on a lawn') gives those
pixels a word of their own. A caption writes the identifier as [V] or <id> (or spells it out).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

from dreambooth.errors import DreamboothError

from ..core.identifier import PLACEHOLDERS, fill_identifier
from .intake import TEXT_SUFFIXES, Photo


def normalize_extension(extension: str) -> str:
    """'txt' and '.txt' both mean '.txt' (kohya's flag takes the dot)."""
    extension = extension.strip()
    return extension if extension.startswith(".") else f".{extension}"


def caption_files(photos: Sequence[Photo], extension: str) -> list[Path | None]:
    """The caption file beside each photo (same name, `extension`), or None."""
    extension = normalize_extension(extension)
    paths = [ph.path.with_suffix(extension) for ph in photos]
    return [p if p.is_file() else None for p in paths]


def read_caption(path: Path) -> str:
    """A caption file's text on one line (line breaks and runs of spaces become one space)."""
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise DreamboothError(f"The caption file {path} is not UTF-8 text. Save it as UTF-8 (any text editor "
                              "can) and run again.") from None
    except OSError as exc:
        raise DreamboothError(f"Cannot read the caption file {path} ({exc.strerror or exc}). "
                              "Check its permissions.") from None
    return " ".join(text.split())


def photo_prompts(photos: Sequence[Photo], extension: str | None, identifier: str,
                  instance_prompt: str) -> tuple[list[str], list[str]]:
    """-> (one prompt per photo, plan notes). Without `extension` every photo gets the instance prompt.

    With it, a photo's caption file is its prompt ([V] / <id> filled with the identifier) and a photo
    without one keeps the instance prompt. A caption must name the identifier: a photo whose prompt
    lacks it teaches the subject to the class word instead."""
    if not extension:
        return [instance_prompt] * len(photos), []
    extension = normalize_extension(extension)
    files = caption_files(photos, extension)
    if not any(files):
        folder = photos[0].path.parent if photos else Path(".")
        example = photos[0].path.with_suffix(extension).name if photos else f"photo{extension}"
        raise DreamboothError(
            f"--caption_extension {extension} was given, but no photo in {folder} has a caption file beside it "
            f"(expected e.g. {example} next to {photos[0].path.name if photos else 'photo.png'}). Write one "
            f"line per photo such as 'a photo of [V] dog on a lawn', or drop --caption_extension to use "
            f"--instance_prompt for every photo.")
    prompts, missing = [], []
    for ph, path in zip(photos, files):
        if path is None:
            missing.append(ph.path.name)
            prompts.append(instance_prompt)
            continue
        caption = read_caption(path)
        if not caption:
            raise DreamboothError(f"The caption file {path} is empty. Write the photo's prompt in it, e.g. "
                                  f"'a photo of [V] dog on a lawn', or delete the file to use --instance_prompt.")
        prompt = fill_identifier(caption, identifier)
        if identifier and not re.search(rf"(?<![\w]){re.escape(identifier)}(?![\w])", prompt):
            raise DreamboothError(
                f"The caption in {path} ({caption!r}) does not name the subject's identifier {identifier!r}. "
                f"DreamBooth binds the subject to the identifier only through prompts that contain it: write "
                f"{' or '.join(PLACEHOLDERS[:2])} where the subject is named, e.g. 'a photo of [V] dog on a lawn'.")
        prompts.append(prompt)
    notes = [f"{len(photos) - len(missing)} of {len(photos)} photos are trained on their {extension} captions"
             + (f"; {', '.join(missing)} use{'s' if len(missing) == 1 else ''} the instance prompt" if missing else "")
             + f" (e.g. {next(p for p, f in zip(prompts, files) if f)!r})."]
    return prompts, notes


def unused_captions_note(photos: Sequence[Photo], extension: str | None) -> list[str]:
    """A hint when caption files sit beside the photos but no --caption_extension reads them."""
    if extension:
        return []
    for suffix in TEXT_SUFFIXES:
        n = sum(f is not None for f in caption_files(photos, suffix))
        if n:
            return [f"{n} photo{'s have' if n > 1 else ' has'} a {suffix} caption beside it, unused: every photo "
                    f"is trained on the instance prompt. Pass --caption_extension {suffix} to train on the captions."]
    return []
