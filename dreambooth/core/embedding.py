"""Pivotal tuning (--train_text_encoder_ti): the identifier's token embeddings learn with the UNet.

Why: a frozen text encoder hears a rare token only faintly. In the micro world the identifier "nnx"
moves the encoding of "a photo of star on the beach" by 0.17 of its norm where a colour word moves it
by 0.37-0.41, so the UNet must amplify a whisper, and what it learns for "[V] star" leaks into "star".
Only the identifier's rows of the input-embedding table open: every prompt without the identifier
encodes exactly as before, so the text encoder cannot drift the way a fully trained one does.
A full fine-tune saves the rows inside its text encoder; a LoRA run saves them beside its adapter.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from .. import files
from ..errors import DreamboothError


def identifier_token_ids(tokenizer, identifier: str) -> list[int]:
    """The vocabulary rows the identifier is spelled with (one for a well-chosen rare token)."""
    return sorted(set(tokenizer(identifier, add_special_tokens=False).input_ids)) if identifier else []


def open_identifier_rows(tower: torch.nn.Module, ids: list[int]) -> None:
    """Freeze `tower` except rows `ids` of its input embeddings. The whole table becomes a parameter,
    but a gradient hook zeroes every other row, and the optimizer gives the group no weight decay
    (`trained_rows`), so AdamW leaves those rows bit for bit as they were."""
    tower.requires_grad_(False)
    weight = tower.get_input_embeddings().weight
    weight.requires_grad_(True)
    mask = torch.zeros(weight.shape[0], 1, dtype=weight.dtype, device=weight.device)
    mask[ids] = 1
    weight.register_hook(lambda grad: grad * mask.to(grad.device, grad.dtype))
    tower.trained_rows = list(ids)


def trained_rows(module: torch.nn.Module) -> list[int] | None:
    """The rows a tower opened by `open_identifier_rows` trains; None for any other module."""
    return getattr(getattr(module, "module", module), "trained_rows", None)   # through a DDP wrapper too


def save_rows(modules: dict[str, torch.nn.Module], path: Path, metadata: dict[str, str]) -> Path:
    """A LoRA run's learned rows, beside its adapter: tower name -> (rows, dim), their token ids in the
    header. (The adapter file has no place for them; diffusers' advanced script also writes a separate
    embeddings file.)"""
    from safetensors.torch import save_file
    tensors = {name: m.get_input_embeddings().weight[trained_rows(m)].detach().float().contiguous()
               for name, m in modules.items()}
    ids = {name: trained_rows(m) for name, m in modules.items()}
    with files.atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata={**metadata, "dreambooth.token_ids": json.dumps(ids)})
    return path


def load_rows(pipe, path: Path) -> None:
    """Write the rows saved by `save_rows` into the pipeline's text encoders."""
    from safetensors import safe_open
    with safe_open(str(path), "pt") as f:
        ids = json.loads((f.metadata() or {}).get("dreambooth.token_ids", "{}"))
        tensors = {name: f.get_tensor(name) for name in f.keys()}
    for name, rows in tensors.items():
        tower = getattr(pipe, name, None)
        weight = None if tower is None else tower.get_input_embeddings().weight
        if weight is None or name not in ids or max(ids[name]) >= weight.shape[0] or rows.shape[1] != weight.shape[1]:
            raise DreamboothError(f"{path} holds learned identifier rows for a {name} this model does not have, or "
                                  "not of its size: pass the base model the LoRA was trained on as --model.")
        with torch.no_grad():
            weight[ids[name]] = rows.to(weight.device, weight.dtype)
