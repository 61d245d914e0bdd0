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
import re
from pathlib import Path

import torch

from .. import files
from ..errors import DreamboothError


def identifier_token_ids(tokenizer, identifier: str) -> list[int]:
    """The vocabulary rows the identifier is spelled with (one for a well-chosen rare token)."""
    return sorted(set(tokenizer(identifier, add_special_tokens=False).input_ids)) if identifier else []


def open_identifier_rows(tower: torch.nn.Module, ids: list[int]) -> None:
    """Freeze `tower` and give its input embeddings a small trainable copy of rows `ids` (`rows`, (k, D)),
    which replaces those rows' lookups in the forward pass. Only the k rows are a parameter, so AdamW's
    moments and a checkpoint hold k x D numbers, not the whole table (SDXL's two: 101M). state_dict()
    writes them back into the table, so a saved text encoder has its usual keys with the learned rows."""
    tower.requires_grad_(False)
    emb = tower.get_input_embeddings()
    emb.register_parameter("rows", torch.nn.Parameter(emb.weight[ids].detach().clone()))
    emb.register_buffer("row_ids", torch.tensor(ids, device=emb.weight.device), persistent=False)
    emb.register_forward_hook(_substitute_rows)
    emb.register_state_dict_post_hook(_merge_rows)
    tower.trained_rows = list(ids)


def _substitute_rows(emb, inputs, out):
    match = (inputs[0].unsqueeze(-1) == emb.row_ids).to(out.dtype)             # (B, L, k) one-hot
    return torch.where(match.any(-1, keepdim=True).bool(), match @ emb.rows.to(out.dtype), out)


def _merge_rows(emb, state_dict, prefix, local_metadata) -> None:
    rows = state_dict.pop(prefix + "rows")
    table = state_dict[prefix + "weight"].clone()
    table[emb.row_ids] = rows.detach().to(table.dtype)
    state_dict[prefix + "weight"] = table


def trained_rows(module: torch.nn.Module) -> list[int] | None:
    """The rows a tower opened by `open_identifier_rows` trains; None for any other module."""
    return getattr(getattr(module, "module", module), "trained_rows", None)   # through a DDP wrapper too


def save_rows(modules: dict[str, torch.nn.Module], path: Path, metadata: dict[str, str]) -> Path:
    """A LoRA run's learned rows, beside its adapter: tower name -> (rows, dim), their token ids in the
    header. (The adapter file has no place for them; diffusers' advanced script also writes a separate
    embeddings file.)"""
    from safetensors.torch import save_file
    tensors = {name: m.get_input_embeddings().rows.detach().float().contiguous() for name, m in modules.items()}
    ids = {name: trained_rows(m) for name, m in modules.items()}
    with files.atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata={**metadata, "dreambooth.token_ids": json.dumps(ids)})
    return path


WEBUI_KEYS = {"sd": {"text_encoder": "emb_params"}, "sdxl": {"text_encoder": "clip_l", "text_encoder_2": "clip_g"}}


def save_webui(modules: dict[str, torch.nn.Module], pipe, identifier: str, family: str, folder: Path) -> Path | None:
    """The same rows as A1111 / ComfyUI's textual-inversion file: one vector per token of the identifier,
    in prompt order, under 'emb_params' (SD 1.x/2.x) or 'clip_l'/'clip_g' (SDXL). webui's trigger word is
    the file's name, so it is named after the identifier: the prompts that worked here work there.
    None where no such file can say it (another family, or an identifier that is not a plain word)."""
    if family not in WEBUI_KEYS or not re.fullmatch(r"[A-Za-z0-9_-]+", identifier):
        return None
    from safetensors.torch import save_file
    tensors = {}
    for name, m in modules.items():
        slot = {i: k for k, i in enumerate(trained_rows(m))}
        tokens = getattr(pipe, name.replace("text_encoder", "tokenizer"))(identifier, add_special_tokens=False)
        rows = m.get_input_embeddings().rows.detach().float()
        tensors[WEBUI_KEYS[family][name]] = rows[[slot[i] for i in tokens.input_ids]].contiguous()   # (n, D)
    path = Path(folder) / f"{identifier}.safetensors"
    with files.atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata={"format": "pt"})
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
