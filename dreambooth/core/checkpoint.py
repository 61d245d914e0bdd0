"""Resumable checkpoints: weights, optimizer and schedule state, all in safetensors/JSON.

No pickles: a checkpoint folder is user data and may come from anywhere. The data order, noise
and timesteps of step k are a pure function of (seed, k) (see batches.py), so the step number is
all the randomness state a resume needs.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from .. import files
from ..errors import DreamboothError

# torch and safetensors are imported inside the functions that need them: finding a checkpoint is
# one of the CLI's cheap checks, made before the heavy imports.

PREFIX = "checkpoint-"


def save_checkpoint(output_dir: Path, step: int, modules: dict, optimizer, lr_scheduler, limit: int | None,
                    interim: bool = False) -> Path:
    """Write checkpoint-STEP atomically (complete or absent). `interim` checkpoints (saved on a timer
    or a signal, not on the step schedule) are a safety net: the next checkpoint replaces them."""
    from safetensors.torch import save_file, save_model
    output_dir = Path(output_dir)
    final = output_dir / f"{PREFIX}{step}"
    tensors, meta = _flatten_optimizer(optimizer.state_dict())
    adapters = {name: _adapter_state(module) for name, module in modules.items()}   # None: the full module
    weights = {name: module.state_dict() if adapters[name] is None else adapters[name]
               for name, module in modules.items()}
    size = sum(_nbytes(t) for sd in [tensors, *weights.values()] for t in sd.values())
    files.require_free_space([(output_dir, size, f"checkpoint {final.name}")])
    last = list_checkpoints(output_dir)
    kept = (f"{last[-1]}, the last complete checkpoint, is intact." if last else "No earlier checkpoint exists.")
    with files.disk_full_is_an_error(output_dir, final.name, kept), files.atomic_path(final) as tmp:
        tmp.mkdir(parents=True)
        for name, module in modules.items():
            if adapters[name] is None:
                save_model(module, str(tmp / f"{name}.safetensors"))   # handles tied/shared weights
            else:
                save_file(adapters[name], tmp / f"{name}.safetensors")
        save_file(tensors, tmp / "optimizer.safetensors", metadata={"layout": json.dumps(meta)})
        (tmp / "state.json").write_text(json.dumps({"step": step, "lr_scheduler": lr_scheduler.state_dict(),
                                                    "interim": interim}, indent=1))
    for old in last:   # a newer checkpoint supersedes every interim one
        if old != final and _is_interim(old):
            files.discard(old)
    rotate(output_dir, limit)
    return final


def _nbytes(t) -> int:
    return t.numel() * t.element_size() if hasattr(t, "element_size") else 0


def _is_interim(folder: Path) -> bool:
    try:
        return bool(json.loads((folder / "state.json").read_text()).get("interim"))
    except (OSError, ValueError):
        return False


def list_checkpoints(output_dir: Path) -> list[Path]:
    found = [p for p in Path(output_dir).glob(f"{PREFIX}*") if re.fullmatch(rf"{PREFIX}\d+", p.name) and p.is_dir()]
    return sorted(found, key=lambda p: int(p.name[len(PREFIX):]))


def rotate(output_dir: Path, limit: int | None) -> None:
    if limit:
        for old in list_checkpoints(output_dir)[:-limit]:
            files.discard(old)


def find_checkpoint(output_dir: Path, spec: str) -> Path | None:
    """'latest' -> newest checkpoint in output_dir (or None); otherwise a folder that must exist."""
    if spec == "latest":
        found = list_checkpoints(output_dir)
        return found[-1] if found else None
    path = Path(spec) if Path(spec).is_absolute() or Path(spec).exists() else Path(output_dir) / spec
    if not (path / "state.json").exists():
        raise DreamboothError(f"--resume_from_checkpoint {spec}: {path} is not a checkpoint folder (no state.json). "
                              f"Use 'latest' or one of {[p.name for p in list_checkpoints(output_dir)] or 'none yet'}.")
    return path


def checkpoint_step(folder: Path) -> int:
    """The step a checkpoint continues from, without loading it (the plan reports it first)."""
    return int(json.loads((folder / "state.json").read_text())["step"])


def load_checkpoint(folder: Path, modules: dict, optimizer, lr_scheduler) -> int:
    """Restore everything saved by save_checkpoint; returns the step to continue from."""
    from safetensors.torch import load_file, load_model
    for name, module in modules.items():
        file = folder / f"{name}.safetensors"
        if not file.exists():
            raise DreamboothError(f"Checkpoint {folder} has no {file.name}, but this run trains '{name}'. "
                                  "Resume with the same --train_text_encoder setting the checkpoint was made with.")
        if _adapter_state(module) is None:
            load_model(module, str(file))
        else:
            _load_adapter(module, file)
    opt_file = folder / "optimizer.safetensors"
    from safetensors import safe_open
    with safe_open(opt_file, "pt") as f:
        meta = json.loads(f.metadata()["layout"])
    optimizer.load_state_dict(_unflatten_optimizer(load_file(opt_file), meta))
    state = json.loads((folder / "state.json").read_text())
    lr_scheduler.load_state_dict(state["lr_scheduler"])
    return int(state["step"])


def _adapter_state(module) -> dict | None:
    """A partly frozen module (a LoRA run) checkpoints only what trains; the frozen base is the
    base model's and is loaded from there. None for a fully trained module."""
    named = list(module.named_parameters())
    if all(p.requires_grad for _, p in named):
        return None
    return {n: p.detach().contiguous() for n, p in named if p.requires_grad}


def _load_adapter(module, file: Path) -> None:
    import torch
    from safetensors.torch import load_file
    saved = load_file(file)
    wanted = _adapter_state(module)
    if set(saved) != set(wanted) or any(saved[k].shape != wanted[k].shape for k in saved):
        raise DreamboothError(f"Checkpoint {file} holds other adapter weights than this run trains (different "
                              "--rank, --lora_layers, --use_dora or --train_text_encoder?). Resume with the settings "
                              "the checkpoint was made with.")
    with torch.no_grad():
        for name, param in module.named_parameters():
            if name in saved:
                param.copy_(saved[name])


def _flatten_optimizer(sd: dict) -> tuple[dict, dict]:
    import torch
    tensors, scalars = {}, {}
    for idx, per_param in sd["state"].items():
        for key, value in per_param.items():
            if torch.is_tensor(value):
                tensors[f"{idx}.{key}"] = value.detach().contiguous()
            else:
                scalars[f"{idx}.{key}"] = value
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def _unflatten_optimizer(tensors: dict, meta: dict) -> dict:
    state: dict[int, dict] = {}
    for flat, value in [*tensors.items(), *meta["scalars"].items()]:
        idx, key = flat.split(".", 1)
        state.setdefault(int(idx), {})[key] = value
    return {"state": state, "param_groups": meta["param_groups"]}
