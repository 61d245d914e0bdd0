"""What the encoder trainers share: the resumable training loop, checkpoints without pickles,
the multi-positive contrastive loss, and the 32-px augmentation.

A checkpoint is a folder holding `model.safetensors` (weights), `optimizer.safetensors` (AdamW's
tensors, flattened to `state.<param>.<name>` keys) and `state.json` (step, param groups, the
optimizer's non-tensor values). It is written to a sibling folder and swapped in, so an interrupted
save leaves the previous checkpoint intact rather than a half-written one.
"""

from __future__ import annotations

import json
import math
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from transformers import PreTrainedModel

from ..encoders import to_64

Log = Callable[[str], Any]


def is_complete(folder: Path) -> bool:
    """A finished transformers folder: config and weights both there (they are renamed in last)."""
    return (folder / "config.json").is_file() and (folder / "model.safetensors").is_file()


def save_model_atomic(model: PreTrainedModel, folder: Path, info: dict[str, Any] | None = None) -> Path:
    """save_pretrained into a temporary sibling, then rename: `folder` exists only when complete."""
    tmp = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp, safe_serialization=True)
    if info is not None:
        (tmp / "training.json").write_text(json.dumps(info, indent=2))
    shutil.rmtree(folder, ignore_errors=True)
    tmp.rename(folder)
    return folder


# -- checkpoints ------------------------------------------------------------------------------

def save_checkpoint(folder: Path, model: torch.nn.Module, opt: torch.optim.Optimizer, step: int) -> None:
    state = opt.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, Any] = {}
    for idx, entries in state["state"].items():
        for name, value in entries.items():
            if torch.is_tensor(value):
                tensors[f"state.{idx}.{name}"] = value.detach().contiguous()
            else:
                scalars[f"state.{idx}.{name}"] = value
    tmp, old = folder.with_name(folder.name + ".tmp"), folder.with_name(folder.name + ".old")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    # clone: tied or shared parameters would otherwise make safetensors refuse the dict
    save_file({k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}, str(tmp / "model.safetensors"))
    save_file(tensors, str(tmp / "optimizer.safetensors"))
    (tmp / "state.json").write_text(json.dumps({"step": step, "param_groups": state["param_groups"],
                                                "scalars": scalars}))
    shutil.rmtree(old, ignore_errors=True)
    if folder.exists():
        folder.rename(old)
    tmp.rename(folder)
    shutil.rmtree(old, ignore_errors=True)


def load_checkpoint(folder: Path, model: torch.nn.Module, opt: torch.optim.Optimizer) -> int:
    """Restore model and optimizer; -> the step to continue from (0 when there is no checkpoint)."""
    old = folder.with_name(folder.name + ".old")
    if not (folder / "state.json").is_file() and (old / "state.json").is_file():
        folder = old                     # interrupted between the two renames of a save
    if not (folder / "state.json").is_file():
        return 0
    meta = json.loads((folder / "state.json").read_text())
    model.load_state_dict(load_file(str(folder / "model.safetensors")))
    entries: dict[int, dict[str, Any]] = {}
    for key, value in [*load_file(str(folder / "optimizer.safetensors")).items(), *meta["scalars"].items()]:
        _, idx, name = key.split(".", 2)
        entries.setdefault(int(idx), {})[name] = value
    opt.load_state_dict({"state": entries, "param_groups": meta["param_groups"]})
    return int(meta["step"])


# -- training loop ----------------------------------------------------------------------------

def lr_at(step: int, steps: int, peak: float, warmup: int) -> float:
    """Linear warm-up then cosine decay to 5% of peak: from-scratch transformers need the warm-up."""
    if step < warmup:
        return peak * (step + 1) / warmup
    t = (step - warmup) / max(1, steps - warmup)
    return peak * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * min(1.0, t))))


def make_optimizer(model: torch.nn.Module, lr: float, weight_decay: float) -> torch.optim.AdamW:
    # No decay on norms, biases, embeddings and the temperature (1-D or special parameters):
    # decaying them only fights the normalisation.
    decay, plain = [], []
    for name, p in model.named_parameters():
        (decay if p.ndim >= 2 and "embedding" not in name else plain).append(p)
    return torch.optim.AdamW([{"params": decay, "weight_decay": weight_decay}, {"params": plain, "weight_decay": 0.0}],
                             lr=lr, betas=(0.9, 0.98), eps=1e-6)


def train_loop(model: torch.nn.Module, loss_fn: Callable[[int], tuple[torch.Tensor, dict[str, float]]], *,
               steps: int, ckpt_dir: Path, lr: float, warmup: int, weight_decay: float = 0.05,
               ckpt_every: int = 200, log_every: int = 50, log: Log = print,
               on_step: Callable[[int], None] | None = None) -> dict[str, Any]:
    """Run `loss_fn(step)` from the last checkpoint up to `steps`; -> run info (steps done here, time).

    loss_fn must be a pure function of the step (its randomness seeded from it), so a resumed run
    sees the same batches an uninterrupted one would have.
    """
    opt = make_optimizer(model, lr, weight_decay)
    start = load_checkpoint(ckpt_dir, model, opt)
    if start:
        log(f"resuming at step {start} from {ckpt_dir}")
    model.train()
    t0, cpu0, window = time.time(), time.process_time(), []
    for step in range(start, steps):
        if on_step is not None:
            on_step(step)
        for group in opt.param_groups:
            group["lr"] = lr_at(step, steps, lr, warmup)
        loss, stats = loss_fn(step)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        window.append(stats)
        done = step + 1
        if done % log_every == 0 or done == steps:
            mean = {k: sum(s[k] for s in window) / len(window) for k in window[0]}
            log(f"step {done}/{steps} " + " ".join(f"{k}={v:.4f}" for k, v in mean.items())
                + f" ({time.time() - t0:.0f}s)")
            window = []
        if done % ckpt_every == 0 and done < steps:
            save_checkpoint(ckpt_dir, model, opt, done)
            log(f"checkpoint at step {done}")
    model.eval()
    # CPU seconds next to wall seconds: on a shared machine the wall clock says little on its own
    return {"steps": steps, "resumed_from": start, "seconds_this_run": round(time.time() - t0, 1),
            "cpu_seconds_this_run": round(time.process_time() - cpu0, 1)}


def step_generator(seed: int, step: int, salt: int = 0) -> torch.Generator:
    """Per-step RNG: batches depend only on (seed, step), never on how often the run was resumed."""
    return torch.Generator().manual_seed((seed * 1_000_003 + step) * 7919 + salt)


# -- loss and augmentation --------------------------------------------------------------------

def multi_positive_nce(logits: torch.Tensor, positive: torch.Tensor, exclude: torch.Tensor | None = None) -> torch.Tensor:
    """Cross-entropy of each row against the uniform distribution over its positives.

    With one positive per row this is InfoNCE (CLIP's loss); with several it is SupCon's "L_out".
    Plain InfoNCE would push apart a caption and an image that match it merely because they are
    not paired in the batch ("a ball" fits every ball); counting them as positives avoids that.
    `exclude` removes entries (an anchor's similarity to itself) from the softmax altogether.
    """
    if exclude is not None:
        logits = logits.masked_fill(exclude, float("-inf"))
        positive = positive & ~exclude
    logp = F.log_softmax(logits, dim=1).masked_fill(~positive, 0.0)
    return -(logp.sum(1) / positive.sum(1).clamp(min=1)).mean()


def down_up(images: torch.Tensor, p: float, gen: torch.Generator) -> torch.Tensor:
    """With probability p per image: box-downsample 64 -> 32 and upsample back (what a 32-px base
    model sample looks like after `to_64`), so the encoders judge 32-px samples as they judge renders."""
    pick = torch.rand(images.shape[0], generator=gen) < p
    if not pick.any():
        return images
    out = images.clone()
    out[pick] = to_64(F.avg_pool2d(images[pick], 2))
    return out
