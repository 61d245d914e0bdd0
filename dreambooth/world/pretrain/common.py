"""What the encoder trainers share: the resumable training loop (checkpoints are the trainer's
own, `core.checkpoint`: safetensors + JSON, atomic), the multi-positive contrastive loss, and the
32-px augmentation.
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
from tqdm.auto import tqdm
from transformers import PreTrainedModel

from ...core import checkpoint as ckpt
from ..encoders import to_64
from . import cores

Log = Callable[[str], Any]

# Row of this process's progress bars: `pretrain` runs stages in side-by-side processes, one row each.
PROGRESS_ROW = 0


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
    for group in opt.param_groups:          # LambdaLR scales this peak by lr_at's factor
        group["lr"] = lr
    schedule = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_at(s, steps, 1.0, warmup))
    start = 0
    if ckpt.list_checkpoints(ckpt_dir):
        start = ckpt.load_checkpoint(ckpt.list_checkpoints(ckpt_dir)[-1], {"model": model}, opt, schedule)
        log(f"resuming at step {start} from {ckpt_dir}")
    model.train()
    t0, cpu0, window = time.time(), time.process_time(), []
    window_start = t0
    bar = tqdm(range(start, steps), initial=start, total=steps, desc=ckpt_dir.name.strip(".").removesuffix("-ckpt"),
               unit="step", position=PROGRESS_ROW, mininterval=5)
    for step in bar:
        if on_step is not None:
            on_step(step)
        loss, stats = loss_fn(step)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        schedule.step()
        window.append(stats)
        done = step + 1
        if done % log_every == 0 or done == steps:
            mean = {k: sum(s[k] for s in window) / len(window) for k in window[0]}
            bar.set_postfix({k: f"{v:.3f}" for k, v in list(mean.items())[:2]})
            log(f"step {done}/{steps} " + " ".join(f"{k}={v:.4f}" for k, v in mean.items())
                + f" ({time.time() - t0:.0f}s)")
            cores.SHARE.after_window((time.time() - window_start) / len(window))
            window, window_start = [], time.time()
        if done % ckpt_every == 0 and done < steps:
            ckpt.save_checkpoint(ckpt_dir, done, {"model": model}, opt, schedule, limit=1)
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
