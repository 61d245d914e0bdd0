"""micro-CLIP (`clipnet.WorldCLIP`) trained contrastively on (render, caption) pairs.

Its text tower is the world's text encoder (stage `text`), frozen: the same weights the base and
SR models cross-attend to, as CLIP's text tower is Stable Diffusion's text encoder. Its conv image
tower reads 32 px, the base model's resolution, so it judges base samples as it judges renders.
Because the text tower is frozen and captions come from a finite grammar, each caption's pooled
text output is computed once and cached: a step costs the image tower and the projections only.
"""

from __future__ import annotations

import math
import random
import re
import shutil
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from transformers import CLIPTextModel, CLIPTokenizer

from ..clipnet import WorldCLIP
from ..encoders import fix_articles, load_world_clip, zero_shot
from ..vocab import CLASSES, COLORS
from .common import Log, is_complete, multi_positive_nce, save_model_atomic, step_generator, train_loop
from .data import CONTEXT_PHRASES, RenderCache, caption_attrs, render_batch, sample

# Evaluation draws from its own stream, so gate figures are never measured on training renders.
HELDOUT_STREAM = 1_000_000_007

# Zero-shot templates (reported with the gates). Colour and context are asked through a prompt
# ensemble over the six classes: every training caption names its class, so "a red ball" is
# in-distribution where a class-less "a red object" ("object" is not even a world word) is not.
CLASS_TEMPLATE = "a photo of a {}"
COLOR_TEMPLATES = tuple(f"a photo of a {{}} {c}" for c in CLASSES)
CONTEXT_TEMPLATES = tuple(f"a photo of a {c} {{}}" for c in CLASSES)


def build_clip(text_encoder: CLIPTextModel) -> WorldCLIP:
    """micro-CLIP whose text tower is `text_encoder`'s weights, frozen (locked-text tuning: only the
    image tower and both projections learn, so micro-CLIP reads captions as the base model does)."""
    model = WorldCLIP(text_encoder.config)
    model.text_model.load_state_dict(text_encoder.state_dict())
    model.text_model.requires_grad_(False)
    return model


class TextCache:
    """Pooled outputs of the frozen text tower, computed once per distinct caption."""

    def __init__(self, model: WorldCLIP, tokenizer: CLIPTokenizer):
        self.model, self.tokenizer, self.rows, self.table = model, tokenizer, {}, torch.zeros(0, model.text_config.hidden_size)

    @torch.no_grad()
    def __call__(self, texts: Sequence[str]) -> torch.Tensor:
        new = sorted({t for t in texts if t not in self.rows})
        if new:
            enc = self.tokenizer(new, padding=True, return_tensors="pt")
            self.rows.update({t: len(self.rows) + i for i, t in enumerate(new)})
            self.table = torch.cat([self.table, self.model.text_pooled(enc.input_ids, enc.attention_mask)])
        return self.table[[self.rows[t] for t in texts]]


def caption_matches(image_attrs: torch.Tensor, caption_attrs: torch.Tensor) -> torch.Tensor:
    """(B, B) bool: caption j describes image i, i.e. every attribute it names agrees.

    image_attrs (B, 3) = (class, colour, context) indices; caption_attrs the same with -1 where the
    caption leaves the attribute out ("a ball" matches any ball)."""
    img, cap = image_attrs[:, None, :], caption_attrs[None, :, :]
    return ((cap == img) | (cap < 0)).all(-1)


_WORDS: tuple[Sequence[str], ...] = (CLASSES, list(COLORS), CONTEXT_PHRASES)


def swap_attribute(text: str, attrs: Sequence[int], rng: random.Random) -> tuple[str, tuple[int, ...]]:
    """A hard-negative caption (NegCLIP): `text` with one attribute it names replaced by another value.

    Why: in a random batch almost no caption shares an image's colour and context yet names another
    class, so plain CLIP negatives barely ask for shape, which a small ViT then learns last (colour
    and backdrop are one patch away). Colour, when named, is swapped twice as often as class or
    context: a half-and-half "split" object in two base-like colours is the world's hardest call
    (which half is the body), while backdrops are learned almost at once."""
    k = rng.choice([0] + [1, 1] * (attrs[1] >= 0) + [2] * (attrs[2] >= 0))
    words = _WORDS[k]
    new = rng.choice([i for i in range(len(words)) if i != attrs[k]])
    out = list(attrs)
    out[k] = new
    return fix_articles(re.sub(rf"\b{words[attrs[k]]}\b", words[new], text, count=1)), tuple(out)


# Every class-only caption the grammar can produce ("a ball", "a photo of a ball", ...): each step,
# every image is also asked to pick its class among them (see loss_fn).
CLASS_CAPTIONS = [(fix_articles(start.format(a="a", n=c)), (k, -1, -1)) for k, c in enumerate(CLASSES)
                  for start in ("a photo of {a} {n}", "{a} {n}", "a picture of {a} {n}")]
CLASS_CAPTION_ATTRS = torch.tensor([a for _, a in CLASS_CAPTIONS])


def train_clip(out_dir: Path, tokenizer_dir: Path, *, steps: int, batch_size: int = 128, seed: int = 0,
               cache_size: int = 20000, log: Log = print, lr: float = 2e-3, ckpt_every: int = 200,
               log_every: int = 50) -> Path:
    """Train micro-CLIP into out_dir/clip (WorldCLIP) on the frozen text tower out_dir/text_encoder.

    Checkpoints every `ckpt_every` steps into out_dir/.clip-ckpt and resumes from there; returns at
    once when out_dir/clip is already complete."""
    out_dir = Path(out_dir)
    final = out_dir / "clip"
    if is_complete(final):
        return final
    t0 = time.time()
    tokenizer = CLIPTokenizer.from_pretrained(tokenizer_dir)
    torch.manual_seed(seed)                     # initial weights (overwritten when resuming)
    model = build_clip(CLIPTextModel.from_pretrained(out_dir / "text_encoder"))
    text_cache = TextCache(model, tokenizer)
    cache = RenderCache(seed, 32, cache_size)
    log(f"micro-CLIP: rendered {cache_size} training images in {time.time() - t0:.0f}s")
    captions = [s.caption for s in cache.samples]
    image_attrs = torch.tensor([(s.cls, s.color, s.context) for s in cache.samples])
    attrs_of = [caption_attrs(c) for c in captions]
    batch_size = min(batch_size, cache_size)
    # Auxiliary linear probe on the image tower (trained, checkpointed, never saved with the model):
    # contrastive learning alone starts in a deadlock for shape: class captions embed alike until
    # images differ by class, and images need not differ until captions do. Colour and backdrop
    # escape it in a few hundred steps (one patch shows them); shape took >1000 steps to reach
    # 45%. Predicting the caption's attributes from the image breaks the deadlock from step 0.
    probe = torch.nn.Linear(model.width, len(CLASSES) + len(COLORS) + len(CONTEXT_PHRASES))
    trainee = torch.nn.ModuleDict({"clip": model, "probe": probe})
    splits = (len(CLASSES), len(COLORS), len(CONTEXT_PHRASES))

    def loss_fn(step: int) -> tuple[torch.Tensor, dict[str, float]]:
        # CLIP's own guard: a temperature below 1/100 makes the logits too sharp to train
        model.logit_scale.data.clamp_(max=math.log(100))
        gen = step_generator(seed, step)
        idx = torch.randperm(len(cache), generator=gen)[:batch_size].tolist()
        images = cache.batch(idx)                                               # (B, 3, 32, 32)
        flip = torch.rand(batch_size, generator=gen) < 0.5     # captions never say left or right
        images[flip] = images[flip].flip(-1)
        rng = random.Random(f"clip-negatives/{seed}/{step}")
        negatives = [swap_attribute(captions[i], attrs_of[i], rng) for i in idx]
        texts = [captions[i] for i in idx] + [t for t, _ in negatives] + [t for t, _ in CLASS_CAPTIONS]
        text_attrs = torch.tensor([attrs_of[i] for i in idx] + [a for _, a in negatives])
        pooled = model.image_pooled(images)
        img = F.normalize(model.visual_projection(pooled), dim=-1)          # = clip_image_features
        txt = F.normalize(model.text_projection(text_cache(texts)), dim=-1)   # = clip_text_features
        logits = model.logit_scale.exp() * img @ txt.T                         # (B, 2B + 18)
        pairs, by_class = logits[:, :2 * batch_size], logits[:, 2 * batch_size:]
        positive = caption_matches(image_attrs[idx], text_attrs)
        # image -> text sees the hard negatives, text -> image the real captions only
        clip_loss = (multi_positive_nce(pairs, positive)
                     + multi_positive_nce(pairs[:, :batch_size].T, positive[:, :batch_size].T)) / 2
        # ...and each image picks its class among all class-only captions (zero-shot classification
        # as a loss): the full 6-way shape signal a random batch lacks, at the cost of 18 captions
        class_positive = image_attrs[idx, :1] == CLASS_CAPTION_ATTRS[None, :, 0]
        class_loss = multi_positive_nce(by_class, class_positive)
        probe_logits = probe(pooled).split(splits, dim=1)
        probe_loss = torch.stack([F.cross_entropy(lg, image_attrs[idx, k]) for k, lg in enumerate(probe_logits)]).sum()
        acc = (positive[torch.arange(batch_size), pairs.argmax(1)]).float().mean()
        class_acc = class_positive[torch.arange(batch_size), by_class.argmax(1)].float().mean()
        return clip_loss + class_loss + probe_loss, {
            "clip": clip_loss.item(), "class": class_loss.item(), "probe": probe_loss.item(), "i2t_acc": acc.item(),
            "class_acc": class_acc.item(), "scale": model.logit_scale.exp().item()}

    info = train_loop(trainee, loss_fn, steps=steps, ckpt_dir=out_dir / ".clip-ckpt", lr=lr, warmup=min(100, steps // 10 + 1),
                      ckpt_every=ckpt_every, log_every=log_every, log=log)
    info.update(seed=seed, batch_size=batch_size, cache_size=cache_size, seconds_total_this_run=round(time.time() - t0, 1))
    save_model_atomic(model, final, info)
    shutil.rmtree(out_dir / ".clip-ckpt", ignore_errors=True)     # the finished folder supersedes it
    log(f"micro-CLIP saved to {final} ({time.time() - t0:.0f}s)")
    return final


def heldout_set(n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """n renders from the held-out stream -> (images (n, 3, 64, 64) in [-1, 1], attrs (n, 3))."""
    samples = [sample(HELDOUT_STREAM, i) for i in range(n)]
    return render_batch(samples), torch.tensor([(s.cls, s.color, s.context) for s in samples])


def zero_shot_accuracy(model: WorldCLIP, tokenizer: Any, images: torch.Tensor, attrs: torch.Tensor) -> dict[str, float]:
    tasks: Sequence[tuple[str, list[str], Any]] = (("class", list(CLASSES), CLASS_TEMPLATE),
                                                    ("color", list(COLORS), COLOR_TEMPLATES),
                                                    ("context", CONTEXT_PHRASES, CONTEXT_TEMPLATES))
    return {name: (zero_shot(model, tokenizer, images, labels, tpl) == attrs[:, k]).float().mean().item()
            for k, (name, labels, tpl) in enumerate(tasks)}


def clip_gates(out_dir: Path, tokenizer_dir: Path, n: int = 720) -> dict[str, float]:
    """Zero-shot accuracy on n held-out renders for class, colour and context (gate: >= 0.95 each at
    64 px); also reported for the same renders box-downsampled to 32 px (base-model resolution)."""
    model = load_world_clip(Path(out_dir) / "clip")
    tokenizer = CLIPTokenizer.from_pretrained(tokenizer_dir)
    images, attrs = heldout_set(n)
    small = torch.nn.functional.avg_pool2d(images, 2)
    out = {f"clip/{k}": v for k, v in zero_shot_accuracy(model, tokenizer, images, attrs).items()}
    out.update({f"clip/{k}@32": v for k, v in zero_shot_accuracy(model, tokenizer, small, attrs).items()})
    return out
