"""The micro world's judges: micro-CLIP (text-image agreement; `clipnet.WorldCLIP`) and the instance
encoder (the world's DINO, a transformers ViTModel: subject fidelity), plus the scoring helpers.

Images everywhere are float tensors (B, 3, H, W) in [-1, 1], as `pretrain.data` renders them and as
diffusion pipelines decode them; no mean/std normalisation (the encoders were trained on [-1, 1]).
micro-CLIP reads 32 px (64-px renders are box-filtered to it); the instance encoder reads 64 px, and
32-px images are upsampled bilinearly to it, the same way its training augmented renders.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from transformers import ViTModel

from .clipnet import WorldCLIP

SIZE = 64
_CHUNK = 256          # images per forward pass in the no-grad helpers: bounds memory on big sets


def to_64(images: torch.Tensor) -> torch.Tensor:
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"expected images (B, 3, H, W), got {tuple(images.shape)}")
    if images.shape[-2:] == (SIZE, SIZE):
        return images
    return F.interpolate(images.float(), size=(SIZE, SIZE), mode="bilinear", align_corners=False,
                         antialias=images.shape[-1] > SIZE)


def load_world_clip(folder: str | Path) -> WorldCLIP:
    return WorldCLIP.from_pretrained(folder)


def load_instance_encoder(folder: str | Path) -> ViTModel:
    return ViTModel.from_pretrained(folder, dtype=torch.float32, add_pooling_layer=False).eval()


# -- differentiable features (training) -------------------------------------------------------

def clip_image_features(model: WorldCLIP, images: torch.Tensor) -> torch.Tensor:
    """Any size: the tower box-filters to its own 32 px (base samples are 32 px already)."""
    return F.normalize(model.get_image_features(images), dim=-1)


def clip_text_features(model, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """micro-CLIP or a transformers CLIPModel (`dreambooth eval` reads any CLIP's text through here;
    transformers' get_text_features returns an output object whose pooler_output is the projection)."""
    out = model.get_text_features(input_ids=input_ids, attention_mask=attention_mask)
    return F.normalize(getattr(out, "pooler_output", out), dim=-1)


def instance_features(model: ViTModel, images: torch.Tensor) -> torch.Tensor:
    """The CLS token after the final LayerNorm, L2-normalised: no extra head, so the saved folder is
    a plain ViTModel and what training optimised is exactly what evaluation measures."""
    return F.normalize(model(pixel_values=to_64(images)).last_hidden_state[:, 0], dim=-1)


# -- evaluation helpers -----------------------------------------------------------------------

@torch.no_grad()
def clip_image_embeds(model: WorldCLIP, images: torch.Tensor) -> torch.Tensor:
    return torch.cat([clip_image_features(model, c) for c in images.split(_CHUNK)])


@torch.no_grad()
def clip_text_embeds(model: WorldCLIP, tokenizer: Any, texts: Sequence[str]) -> torch.Tensor:
    # pad to the longest: the text tower is causal and pools at the first end token, so padding
    # after it cannot change the embedding
    enc = tokenizer(list(texts), padding=True, truncation=True, return_tensors="pt")
    return clip_text_features(model, enc.input_ids, enc.attention_mask)


@torch.no_grad()
def instance_embeds(model: ViTModel, images: torch.Tensor) -> torch.Tensor:
    return torch.cat([instance_features(model, c) for c in images.split(_CHUNK)])


def fix_articles(text: str) -> str:
    """'a orange' -> 'an orange', 'an red' -> 'a red' (world captions are always grammatical)."""
    text = re.sub(r"\b([Aa])n (?=[^aeiouAEIOU\W])", r"\1 ", text)
    return re.sub(r"\b([Aa]) (?=[aeiouAEIOU])", r"\1n ", text)


def fill_template(template: str, label: str) -> str:
    """template.format(label) with English articles fixed ("a {}" + "orange" -> "an orange")."""
    return fix_articles(template.format(label))


@torch.no_grad()
def zero_shot(model: WorldCLIP, tokenizer: Any, images: torch.Tensor, labels: Sequence[str],
              template: str | Sequence[str]) -> torch.Tensor:
    """-> (B,) index into `labels` of each image's best-matching prompt.

    Several templates form a prompt ensemble (CLIP's practice): each label's text embeddings are
    averaged over the templates, e.g. "a photo of a {} ball", "a photo of a {} box", ... to ask
    about colour without favouring one class.
    """
    templates = [template] if isinstance(template, str) else list(template)
    text = clip_text_embeds(model, tokenizer, [fill_template(t, lab) for lab in labels for t in templates])
    text = F.normalize(text.view(len(labels), len(templates), -1).mean(1), dim=-1)
    return (clip_image_embeds(model, images) @ text.T).argmax(dim=1)


def top1_retrieval(queries: torch.Tensor, gallery: torch.Tensor, query_ids: Sequence[int],
                   gallery_ids: Sequence[int], candidates: Sequence[Sequence[int]] | None = None) -> float:
    """Fraction of queries whose most similar gallery item (cosine; embeddings L2-normalised) has
    the query's id. candidates[q], when given, restricts query q to those gallery indices (e.g. the
    subjects of its class)."""
    sims = queries @ gallery.T
    hits = 0
    for q in range(len(query_ids)):
        allowed = list(range(len(gallery_ids))) if candidates is None else list(candidates[q])
        best = allowed[int(sims[q, allowed].argmax())]
        hits += int(gallery_ids[best] == query_ids[q])
    return hits / max(1, len(query_ids))


def gates(out_dir: str | Path, tokenizer_dir: str | Path) -> dict[str, float]:
    """Both encoders' quality gates on held-out renders (see pretrain.clip / pretrain.instance)."""
    from .pretrain.clip import clip_gates
    from .pretrain.instance import instance_gates

    out_dir = Path(out_dir)
    return {**clip_gates(out_dir, Path(tokenizer_dir)), **instance_gates(out_dir)}
