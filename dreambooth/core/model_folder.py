"""What a model folder says about itself, from its JSON files alone: no torch, no weights read.

The CLI asks these questions before the heavy imports, so a wrong --model, pickled weights or a
resolution the model cannot take are refused in about a second.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

from ..errors import DreamboothError

PICKLED = {".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle"}
_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?")


def read_model_index(folder: Path) -> dict:
    return json.loads((Path(folder) / "model_index.json").read_text())


def is_super_resolution(source: str) -> bool | None:
    """Whether a local pipeline folder is a super-resolution model, from its model_index.json alone
    (no weights loaded); None when `source` is not a local pipeline folder."""
    index = Path(source).expanduser() / "model_index.json"
    if not index.exists():
        return None
    return any(name in ("image_noising_scheduler", "low_res_scheduler") for name in json.loads(index.read_text()))


def locate(source: str, flag: str = "--model", revision: str | None = None) -> Path:
    """The pipeline folder `source` names: a local folder, or a hub id's snapshot in the local cache;
    or a single-file .safetensors checkpoint (returned as is: the caller reads it as a file). Anything
    else is refused with what to do."""
    path = Path(source).expanduser()
    if path.is_file():
        if path.suffix == ".safetensors":   # a single-file SD / SDXL checkpoint (read with --original_config)
            return path
        if path.suffix in PICKLED:
            raise DreamboothError(f"{flag} {source} is not a .safetensors file. Checkpoints in other formats (.ckpt, "
                                  ".pt) are Python pickles that can run code when opened, so dreambooth does not open "
                                  "them; convert it to safetensors on a machine you trust, or pass a diffusers folder.")
        raise DreamboothError(f"{flag} {source} is a single file but not a .safetensors checkpoint; dreambooth reads "
                              "diffusers pipeline folders (model_index.json, unet/, text_encoder/, ...) and single-file "
                              "SD / SDXL checkpoints in .safetensors.")
    if path.is_dir():
        if not (path / "model_index.json").exists():
            raise DreamboothError(f"{flag} {source} is not a diffusers pipeline folder: it has no model_index.json. "
                                  f"Point {flag} at the folder that contains model_index.json.")
        return path
    cached = _hub_cache(source, revision) if _HUB_ID.fullmatch(source) else None
    if cached is None:
        raise DreamboothError(
            f"{flag} {source} is neither a folder here ({path.absolute()} does not exist) nor a model in the local "
            "hub cache. No model hub is reachable from this machine: download the model on a connected one "
            "(`huggingface-cli download ID --local-dir FOLDER`), copy the folder here and pass "
            f"{flag} FOLDER; if you meant a folder, check the path.")
    return cached


def _hub_cache(repo_id: str, revision: str | None) -> Path | None:
    try:
        from huggingface_hub import try_to_load_from_cache
        found = try_to_load_from_cache(repo_id, "model_index.json", revision=revision)
    except Exception:   # a malformed id or an unreadable cache: not a cached model either way
        return None
    return Path(found).parent if isinstance(found, str) else None


def require_safetensors(folder: Path, flag: str = "--model") -> None:
    """Refuse a pipeline whose weights exist only as pickles: loading one can run any code it holds."""
    index = read_model_index(folder)
    for name, spec in index.items():
        part = Path(folder) / name
        if name.startswith("_") or not isinstance(spec, list) or not part.is_dir():
            continue
        files = [f for f in part.iterdir() if f.is_file()]
        pickled = [f for f in files if f.suffix in PICKLED]
        if pickled and not any(f.suffix == ".safetensors" for f in files):
            raise DreamboothError(
                f"{flag} {folder} holds pickled weights ({name}/{pickled[0].name}) and no .safetensors file there. "
                "dreambooth reads safetensors only, because loading a pickle can run any code hidden in it. "
                "Convert the folder once, on a machine where you trust where it came from: `python -c \"from "
                f"diffusers import DiffusionPipeline as P; P.from_pretrained('{folder}').save_pretrained("
                f"'{folder}-safetensors', safe_serialization=True)\"`, then pass {flag} {folder}-safetensors.")


def resolution_multiple(vae_config: dict | None, unet_config: dict) -> int:
    """Image sizes must be a multiple of this: the VAE's downscale (latent models; their pipelines
    also demand a multiple of 8) times the UNet's halvings, so every level has a whole size."""
    vae = 2 ** (len(vae_config["block_out_channels"]) - 1) if vae_config else 1
    unet = 2 ** (len(unet_config.get("block_out_channels", [0])) - 1)
    return math.lcm(8, vae * unet) if vae_config else unet


def folder_resolution_multiple(folder: Path) -> int | None:
    """resolution_multiple from a local folder's configs (None when they are not all there)."""
    configs = {}
    for name in ("unet", "vae"):
        file = Path(folder) / name / "config.json"
        configs[name] = json.loads(file.read_text()) if file.exists() else None
    if configs["unet"] is None:
        return None
    return resolution_multiple(configs["vae"], configs["unet"])


def check_resolution(resolution: int | None, multiple: int | None, source: str) -> None:
    if resolution is None or multiple is None or resolution % multiple == 0:
        return
    low, high = resolution // multiple * multiple, -(-resolution // multiple) * multiple
    sizes = f"{low} or {high}" if low else f"{high}"
    raise DreamboothError(f"--resolution {resolution} does not fit the model {source}: its images must be a multiple "
                          f"of {multiple} px (its VAE and UNet halve the size step by step). Use --resolution "
                          f"{sizes}, or leave --resolution out for the model's own size.")


def native_resolution(folder: Path) -> int | None:
    """The image size a local pipeline folder trains at by default, from its configs (None if unknown)."""
    unet = Path(folder) / "unet" / "config.json"
    if not unet.exists():
        return None
    size = json.loads(unet.read_text()).get("sample_size")
    vae = Path(folder) / "vae" / "config.json"
    scale = 2 ** (len(json.loads(vae.read_text())["block_out_channels"]) - 1) if vae.exists() else 1
    return int(size if isinstance(size, int) else size[0]) * scale if size else None
