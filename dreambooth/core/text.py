"""Prompts -> the UNet's text conditioning, built as each pipeline builds it at inference.

One text tower (SD 1.x/2.x, DeepFloyd IF, the micro world): the encoder's hidden states. Two towers
(SDXL): both encoders' penultimate hidden states side by side, plus the second encoder's projected
pooled embedding, which the UNet takes as an added condition. A frozen tower runs once on the
distinct prompts (the instance prompt or the photos' captions, and the class prompt) and its output is cached; a trained one (full or LoRA) runs every step on token ids
tokenized once.
"""

from __future__ import annotations

from typing import Callable

import torch

from .embedding import trained_rows
from .models import Model, encode_text, tokenize

Tensor = torch.Tensor
TOWERS = (("tokenizer", "text_encoder"), ("tokenizer_2", "text_encoder_2"))


def tower_names(pipe) -> list[str]:
    """The pipeline's text encoders, in the order their outputs are concatenated."""
    return [enc for tok, enc in TOWERS if getattr(pipe, enc, None) is not None and getattr(pipe, tok, None) is not None]


def encode(encoders: list[torch.nn.Module], ids: list[Tensor], masks: list[Tensor | None], dual: bool):
    """-> (B, L, D) hidden states, or for SDXL ((B, L, D1 + D2), (B, P) pooled), as the pipelines encode."""
    if not dual:
        return encode_text(encoders[0], ids[0], masks[0])
    hidden, pooled = [], None
    for te, i in zip(encoders, ids):
        out = te(i.to(next(te.parameters()).device), output_hidden_states=True, return_dict=True)
        hidden.append(out.hidden_states[-2])   # SDXL conditions on the penultimate layer of both towers
        pooled = getattr(out, "text_embeds", pooled)   # the projection tower's pooled output
    return torch.cat(hidden, dim=-1), pooled


def _pick(cond, index: Tensor):
    return tuple(c[index] for c in cond) if isinstance(cond, tuple) else cond[index]


def conditioning(model: Model, encoders: dict[str, torch.nn.Module], view_prompts: list[str], class_prompt: str | None,
                 t, n_prompted: int | None = None) -> Callable[[list[int], list[int], Tensor | None], object]:
    """(instance view indices, class view indices, dropped) -> the conditioning of a batch laid out
    [instance views ; class views]; rows where `dropped` (B,) is True get the empty prompt's, as
    classifier-free guidance encodes its unconditional half (zeros where the pipeline forces them, SDXL).
    So do class views from `n_prompted` on: the model's samples of the empty prompt. `view_prompts`: each
    instance view's prompt (its photo's caption, or the instance prompt). `encoders`: each tower by
    name, the trained ones as wrapped for training."""
    prompts = list(dict.fromkeys(view_prompts + ([class_prompt] if class_prompt else []) + [""]))   # distinct
    view_row = torch.tensor([prompts.index(p) for p in view_prompts])
    class_row = prompts.index(class_prompt) if class_prompt else -1
    empty_row = prompts.index("")
    zeros = bool(getattr(model.pipe.config, "force_zeros_for_empty_prompt", False))
    names = tower_names(model.pipe)
    towers = [encoders.get(n, getattr(model.pipe, n)) for n in names]
    tokens = [tokenize(getattr(model.pipe, tok), prompts, t.tokenizer_max_length) for tok, enc in TOWERS if enc in names]
    use_mask = t.text_encoder_use_attention_mask if t.text_encoder_use_attention_mask is not None \
        else model.use_attention_mask
    ids = [i for i, _ in tokens]
    masks = [m if use_mask else None for _, m in tokens]

    def unprompted(inst: list[int], cls: list[int], dropped: Tensor | None) -> Tensor | None:
        """(B,) rows that get the unconditional encoding: dropped, or a sample of the empty prompt."""
        blank_views = torch.tensor([False] * len(inst) + [n_prompted is not None and c >= n_prompted for c in cls])
        return (blank_views | dropped.cpu()) if dropped is not None else (blank_views if blank_views.any() else None)

    def rows(inst: list[int], cls: list[int], dropped: Tensor | None) -> Tensor:
        r = torch.cat([view_row[inst], torch.full((len(cls),), class_row)])
        return r if dropped is None else torch.where(dropped, empty_row, r)

    def blank(cond, dropped: Tensor | None):
        if not zeros or dropped is None or not dropped.any():
            return cond
        keep = lambda c: c * (~dropped).to(c.device, c.dtype).view(-1, *[1] * (c.dim() - 1))   # noqa: E731
        return tuple(keep(c) for c in cond) if isinstance(cond, tuple) else keep(cond)

    live = _live_prompts(encoders, names, ids)   # (prompts,) True: its encoding moves as the towers train
    if live.all():
        table = None
    else:
        with torch.no_grad():
            table = encode(towers, ids, masks, model.added_cond)     # (prompts, L, D), computed once
        table = tuple(c.detach() for c in table) if isinstance(table, tuple) else table.detach()
    if live.any():
        def per_step(inst: list[int], cls: list[int], dropped: Tensor | None = None):
            dropped = unprompted(inst, cls, dropped)
            # each distinct prompt once (a batch repeats the class prompt and often a caption), and only
            # those the training moves: the towers' forward and backward are pivotal tuning's extra cost
            r, spread = torch.unique(rows(inst, cls, dropped), return_inverse=True)
            moving = live[r]
            m = r[moving]
            fresh = encode(towers, [i[m] for i in ids], [None if k is None else k[m] for k in masks],
                           model.added_cond) if moving.any() else None
            cond = fresh if moving.all() else _put(_pick(table, r.to(_device(table))), moving, fresh)
            return blank(_pick(cond, spread.to(_device(cond))), dropped)
        return per_step
    if t.pre_compute_text_embeddings:
        for te in towers:
            te.to("cpu")   # frees accelerator memory; still saved with the pipeline at the end

    def cached(inst: list[int], cls: list[int], dropped: Tensor | None = None):
        dropped = unprompted(inst, cls, dropped)
        return blank(_pick(table, rows(inst, cls, dropped).to(_device(table))), dropped)
    return cached


def _live_prompts(encoders: dict[str, torch.nn.Module], names: list[str], ids: list[Tensor]) -> Tensor:
    """(prompts,) bool: the prompts whose encoding changes as training goes. Nothing trains: none. A tower
    trained whole or by LoRA: every prompt. Pivotal tuning (only the identifier's rows train): the prompts
    that hold one of those rows; the class prompt and the empty one encode the same every step."""
    n = len(ids[0])
    trained = [(name, encoders[name]) for name in names if name in encoders]
    if not trained:
        return torch.zeros(n, dtype=torch.bool)
    if any(trained_rows(m) is None for _, m in trained):
        return torch.ones(n, dtype=torch.bool)
    live = torch.zeros(n, dtype=torch.bool)
    for name, m in trained:
        live |= torch.isin(ids[names.index(name)], torch.tensor(trained_rows(m))).any(-1)
    return live


def _put(cond, at: Tensor, fresh):
    """`cond` with the rows where `at` (B,) is True replaced by `fresh`'s (which carry the gradient)."""
    if fresh is None:
        return cond
    where = (at.nonzero().flatten().to(_device(cond)),)
    return tuple(c.index_put(where, f) for c, f in zip(cond, fresh)) if isinstance(cond, tuple) \
        else cond.index_put(where, fresh)


def _device(cond) -> torch.device:
    return (cond[0] if isinstance(cond, tuple) else cond).device
