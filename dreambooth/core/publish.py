"""Put a finished export (the pipeline folder and the files that describe it) in place, atomically.

The new files are written into a hidden folder beside the old ones, then swapped in by renames
recorded in a journal. The old pipeline's model_index.json goes first and the new one comes last, so
diffusers (which needs that file) loads either the old complete pipeline or the new complete one,
never a mix. A kill -9 during the swap leaves the journal: the next run, or `dreambooth generate`,
finishes it. Checkpoints, logs and validation grids beside the pipeline are not touched.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Callable

from .. import files

JOURNAL = ".export-swap.json"
INDEX = "model_index.json"
LORA_FILES = ("pytorch_lora_weights.safetensors", "pytorch_lora_weights_kohya.safetensors")   # export/lora.py


def publish(out: Path, write: Callable[[Path], None], size: int, what: str, kept: str) -> None:
    """`write(folder)` fills an empty folder with the new outputs (about `size` bytes); they then
    replace the old ones in `out`. `kept`: what stays intact if the disk fills up."""
    out = Path(out)
    files.require_free_space([(out, size, what)])
    staging = files.temp_path(out / "export")
    files.remove(staging)
    with files.disk_full_is_an_error(out, what, kept):
        try:
            staging.mkdir(parents=True)
            write(staging)
        except BaseException:
            files.remove(staging)
            raise
    entries = sorted(p.name for p in staging.iterdir())
    journal = {"staging": staging.name, "old": files.temp_path(out / "export-old").name, "entries": entries,
               "remove": [n for n in _pipeline_parts(out) if n not in entries]}
    files.write_json(out / JOURNAL, journal)
    _swap(out, journal)


def finish_interrupted_export(folder: Path) -> bool:
    """Complete a swap that a killed run left half done; True when there was one."""
    path = Path(folder) / JOURNAL
    if not path.exists():
        return False
    _swap(Path(folder), json.loads(path.read_text()))
    return True


def _pipeline_parts(out: Path) -> list[str]:
    """The entries of the export now in `out`: model_index.json and its component folders, and the
    LoRA files of a LoRA run (a new export replaces all of them)."""
    lora = [name for name in LORA_FILES if (out / name).exists()]
    if not (out / INDEX).exists():
        return lora
    index = json.loads((out / INDEX).read_text())
    return [INDEX] + [name for name, spec in index.items() if isinstance(spec, list) and (out / name).exists()] + lora


def _swap(out: Path, journal: dict) -> None:
    """Idempotent: every step checks what is already done, so a rerun after a kill completes it."""
    staging, old = out / journal["staging"], out / journal["old"]
    old.mkdir(exist_ok=True)

    def retire(name: str) -> None:
        if (out / name).exists():
            files.remove(old / name)
            os.replace(out / name, old / name)

    if (staging / INDEX).exists():
        retire(INDEX)   # from here on no loader takes the folder for a pipeline until the new index lands
    for name in journal["remove"]:
        if name not in journal["entries"]:
            retire(name)
    for name in journal["entries"]:
        if name != INDEX and (staging / name).exists():   # still there: `out/name`, if any, is the old one
            retire(name)
            os.replace(staging / name, out / name)
    if (staging / INDEX).exists():
        os.replace(staging / INDEX, out / INDEX)
    files.remove(out / JOURNAL)
    files.remove(staging)
    files.remove(old)
