"""The world's text encoder: a CLIPTextModel trained on captions alone, then frozen for good.

Why a stage of its own: every other model hangs on it (the base and SR models cross-attend to it,
micro-CLIP's text tower *is* it), so it must exist first and never change. Trained jointly with
CLIP from scratch it sat in a deadlock on a CPU budget (captions of different shapes embed alike
until images differ by shape, and the reverse), and jointly with the base UNet it would move under
the SR model. A text-only objective breaks the tie in seconds: from the pooled (EOS) output, linear
heads must read the caption's class, colour and context (or "not named"). Token states keep each
word's identity through the residual stream, which is what the UNets' cross-attention reads.
Rare tokens never occur in captions, so their embeddings stay at their seeded random values: the
weak prior that DreamBooth's identifier wants, as on Stable Diffusion.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

from ..vocab import CLASSES, COLORS
from .common import Log, is_complete, save_model_atomic, step_generator, train_loop
from .data import CONTEXT_PHRASES, caption_attrs, sample

HEADS = (len(CLASSES) + 1, len(COLORS) + 1, len(CONTEXT_PHRASES) + 1)   # +1: attribute not named


def text_config(tokenizer: CLIPTokenizer, width: int = 128) -> CLIPTextConfig:
    """Width 128 is the cross-attention width of both world UNets and micro-CLIP's text width."""
    return CLIPTextConfig(vocab_size=len(tokenizer), hidden_size=width, intermediate_size=4 * width,
                          num_hidden_layers=4, num_attention_heads=4,
                          max_position_embeddings=tokenizer.model_max_length, bos_token_id=tokenizer.bos_token_id,
                          eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)


def train_text_encoder(out_dir: Path, tokenizer_dir: Path, *, steps: int = 400, batch_size: int = 256, seed: int = 0,
                       pool: int = 20000, log: Log = print) -> Path:
    """Train into out_dir/text_encoder (a CLIPTextModel folder); returns at once when it is complete."""
    final = Path(out_dir) / "text_encoder"
    if is_complete(final):
        return final
    t0 = time.time()
    tokenizer = CLIPTokenizer.from_pretrained(tokenizer_dir)
    torch.manual_seed(seed)
    model = CLIPTextModel(text_config(tokenizer))
    heads = torch.nn.Linear(model.config.hidden_size, sum(HEADS))
    trainee = torch.nn.ModuleDict({"text": model, "heads": heads})
    captions = [sample(seed, i).caption for i in range(pool)]
    enc = tokenizer(captions, padding=True, return_tensors="pt")
    # missing attribute (-1) -> the extra "not named" class at the end of each head
    targets = torch.tensor([caption_attrs(c) for c in captions])                      # (pool, 3)
    targets = torch.where(targets < 0, torch.tensor(HEADS) - 1, targets)

    def loss_fn(step: int) -> tuple[torch.Tensor, dict[str, float]]:
        idx = torch.randint(0, pool, (batch_size,), generator=step_generator(seed, step))
        pooled = model(input_ids=enc.input_ids[idx], attention_mask=enc.attention_mask[idx]).pooler_output
        logits = heads(pooled).split(HEADS, dim=1)
        losses = [F.cross_entropy(lg, targets[idx, k]) for k, lg in enumerate(logits)]
        acc = torch.stack([(lg.argmax(1) == targets[idx, k]) for k, lg in enumerate(logits)]).all(0).float().mean()
        return torch.stack(losses).sum(), {"loss": sum(x.item() for x in losses), "acc": acc.item()}

    info = train_loop(trainee, loss_fn, steps=steps, ckpt_dir=Path(out_dir) / ".text-ckpt", lr=1e-3,
                      warmup=min(50, steps // 10 + 1), log_every=50, log=log)
    info.update(seed=seed, batch_size=batch_size, seconds_total_this_run=round(time.time() - t0, 1))
    save_model_atomic(model, final, info)
    shutil.rmtree(Path(out_dir) / ".text-ckpt", ignore_errors=True)     # the finished folder supersedes it
    log(f"text encoder saved to {final} ({time.time() - t0:.0f}s)")
    return final
