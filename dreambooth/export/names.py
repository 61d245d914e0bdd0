"""The names of what an export writes, with no heavy import: training, `dreambooth generate` and the
UI's downloads agree on them through here.

OUT/ holds a diffusers pipeline (model_index.json and component folders; with --output_single_file
also OUT/OUT_NAME.safetensors) or a LoRA adapter (pytorch_lora_weights.safetensors; with
--output_kohya_format also the kohya layout). A cascade's step (b) writes the same into OUT/sr/.
"""

from __future__ import annotations

from pathlib import Path

INDEX = "model_index.json"                          # a diffusers pipeline folder
WEIGHTS = "pytorch_lora_weights.safetensors"        # LoRA in diffusers' layout
KOHYA = "pytorch_lora_weights_kohya.safetensors"    # LoRA in kohya's layout (A1111, ComfyUI)
EMBEDDINGS = "identifier_embeddings.safetensors"    # a LoRA run's learned identifier rows (--train_text_encoder_ti)
SR_SUBDIR = "sr"                                    # step (b)'s output inside step (a)'s
SR_HINT = "dreambooth_sr.json"                      # an SR pipeline's low-res size and best sampling (ours)
EXPORT_MARKERS = (INDEX, WEIGHTS)                   # an output folder holding one of these holds an export


def has_export(folder: Path) -> bool:
    return any((Path(folder) / name).exists() for name in EXPORT_MARKERS)


def single_file_name(output_dir: Path) -> str:
    """The single-file checkpoint of a full fine-tune is named after its output folder."""
    return f"{Path(output_dir).resolve().name}.safetensors"


def weight_files(folder: Path) -> list[Path]:
    """The one-file weights an export folder holds: its LoRA (diffusers' and kohya's layouts, and the
    identifier rows that go with it) or its single-file checkpoint (only a pipeline folder has one; a LoRA
    folder's own name is not looked up)."""
    folder = Path(folder)
    names = [WEIGHTS, EMBEDDINGS, KOHYA] + ([single_file_name(folder)] if (folder / INDEX).exists() else [])
    webui = webui_embedding(folder)
    return [folder / name for name in dict.fromkeys(names) if (folder / name).is_file()] + ([webui] if webui else [])


def webui_embedding(folder: Path) -> Path | None:
    """A LoRA run's identifier rows as A1111's textual-inversion file (--output_kohya_format with
    --train_text_encoder_ti), named IDENTIFIER.safetensors: webui's trigger word is the file's name."""
    import json
    try:
        identifier = json.loads((Path(folder) / "identifier.json").read_text())["identifier"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    path = Path(folder) / f"{identifier}.safetensors"
    return path if identifier and (Path(folder) / WEIGHTS).is_file() and path.is_file() else None
