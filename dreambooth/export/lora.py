"""LoRA files: diffusers' layout (`pipe.load_lora_weights(folder)` reads it) and kohya's (A1111,
ComfyUI), both written with diffusers' own converters, with the run described in the header.

diffusers' kohya converter assumes alpha = rank; the fix below makes the file say what was trained.
(DoRA is not written in kohya's layout: diffusers' kohya reader drops DoRA magnitudes, so nothing here
could check them; outputs.py refuses the combination.) SD 1.x files name their one text encoder `lora_te_`
(kohya's SD 1.x spelling, which A1111 expects); SDXL's are `lora_te1_` / `lora_te2_`.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from diffusers.utils import convert_state_dict_to_diffusers, convert_state_dict_to_kohya
from peft.utils import get_peft_model_state_dict
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from .names import KOHYA, WEIGHTS  # noqa: F401 (the file names; re-exported)

KOHYA_BASE = {"sd": "sd_v1", "sdxl": "sdxl_base_v1-0"}
SPEC_ARCH = {"sd": "stable-diffusion-v1/lora", "sdxl": "stable-diffusion-xl-v1-base/lora"}


def adapter_state(name: str, module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """One component's adapter in peft's layout. CLIP text encoders keep the 'text_model.' level in
    their keys, as every reader expects (transformers 5 dropped it from CLIPTextModel's own names)."""
    sd = get_peft_model_state_dict(module)
    flat_clip = name != "unet" and module.config.model_type.startswith("clip") and not hasattr(module, "text_model")
    return {f"text_model.{k}": v for k, v in sd.items()} if flat_clip else sd


def save_lora(pipe, modules: dict[str, torch.nn.Module], folder: Path, metadata: dict[str, str]) -> Path:
    """pytorch_lora_weights.safetensors through the pipeline class's own save_lora_weights; each
    component's LoraConfig goes in the header too, so diffusers rebuilds alpha, DoRA and targets exactly."""
    kwargs = {}
    for name, module in modules.items():
        kwargs[f"{name}_lora_layers"] = convert_state_dict_to_diffusers(adapter_state(name, module))
        kwargs[f"{name}_lora_adapter_metadata"] = module.peft_config["default"].to_dict()
    type(pipe).save_lora_weights(folder, **kwargs)
    path = folder / WEIGHTS
    add_metadata(path, metadata)
    return path


def add_metadata(path: Path, extra: dict[str, str]) -> None:
    with safe_open(str(path), "pt") as f:
        meta = f.metadata() or {}
    tmp = path.with_name(f".{path.name}.tmp")
    save_file(load_file(path), tmp, metadata={**meta, **extra})
    os.replace(tmp, path)


def save_kohya(modules: dict[str, torch.nn.Module], path: Path, family: str, alpha: float,
               metadata: dict[str, str]) -> Path:
    """The same adapters in the kohya / A1111 layout."""
    peft = {f"{name}.{k}": v for name, m in modules.items() for k, v in adapter_state(name, m).items()}
    kohya = convert_state_dict_to_kohya(peft)
    fixed = {}
    for key, value in kohya.items():
        if key.endswith(".alpha"):
            value = torch.tensor(float(alpha))          # the converter writes the rank here
        if family == "sd":
            key = key.replace("lora_te1_", "lora_te_")
        fixed[key] = value
    save_file(fixed, path, metadata={"format": "pt", **metadata})
    return path


def describe(run, family: str) -> dict[str, str]:
    """The header every LoRA file carries: ours, plus the kohya/modelspec keys A1111 shows."""
    a, job = run.job.adapter, run.job
    alpha = a.lora_alpha or a.rank
    trigger = " ".join(w for w in (run.identifier, job.data.class_name) if w) or run.instance_prompt
    meta = {"dreambooth.identifier": run.identifier, "dreambooth.class_name": job.data.class_name or "",
            "dreambooth.instance_prompt": run.instance_prompt, "dreambooth.base_model": str(run.model.source),
            "dreambooth.rank": str(a.rank), "dreambooth.alpha": str(alpha), "dreambooth.dora": str(a.use_dora).lower(),
            "dreambooth.trained": json.dumps(sorted(run.trainable)),
            "ss_network_module": "networks.lora", "ss_network_dim": str(a.rank), "ss_network_alpha": str(alpha),
            "ss_output_name": Path(run.output_dir).resolve().name, "modelspec.sai_model_spec": "1.0.0",
            "modelspec.title": Path(run.output_dir).resolve().name, "modelspec.trigger_phrase": trigger}
    if family in KOHYA_BASE:
        meta.update({"ss_base_model_version": KOHYA_BASE[family], "modelspec.architecture": SPEC_ARCH[family]})
    return meta


def read_identifier(path: Path) -> str | None:
    """The identifier a LoRA file was trained with, from its header (None for files made elsewhere)."""
    with safe_open(str(path), "pt") as f:
        return (f.metadata() or {}).get("dreambooth.identifier") or None
