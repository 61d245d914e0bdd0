"""From images to the five figures: embed with the encoders, then apply `metrics`.

The real images are embedded once (`Reference`) and every model's samples are scored against them,
so a report comparing several models pays for the real images once.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import torch
from PIL import Image

from . import metrics as m
from .encoders import Encoders
from .protocol import Samples

Tensor = torch.Tensor
METRICS = ("dino", "clip_i", "clip_t", "pres", "div_dino")
LABELS = {"dino": "DINO", "clip_i": "CLIP-I", "clip_t": "CLIP-T", "pres": "PRES", "div_dino": "DIV-DINO",
          "dino_ideal": "DINO vs ideal", "context_read": "context read"}


@dataclass
class Reference:
    """The subject's real images, embedded."""
    dino: Tensor                      # (R, D_dino)
    clip: Tensor                      # (R, D_clip)
    count: int

    def self_similarity(self) -> dict[str, float]:
        """The paper's 'Real Images' row: real images against one another (distinct pairs only)."""
        if self.count < 2:
            return {}
        return {"dino": m.mean_distinct_pairs_cosine(self.dino), "clip_i": m.mean_distinct_pairs_cosine(self.clip)}


def embed_reference(images: list[Image.Image], encoders: Encoders) -> Reference:
    return Reference(encoders.dino.embed(images), encoders.clip.embed(images), len(images))


@dataclass
class Embedded:
    """One Samples' embeddings, kept so a second reference (ideal renders) costs no new forward pass."""
    dino: Tensor                      # (N, D_dino)
    clip: Tensor                      # (N, D_clip)
    text: Tensor                      # (P, D_clip)
    class_dino: Tensor | None         # (M, D_dino) or None without class samples


def embed_samples(samples: Samples, encoders: Encoders) -> Embedded:
    return Embedded(encoders.dino.embed(samples.images), encoders.clip.embed(samples.images),
                    encoders.clip.embed_text(samples.texts),
                    encoders.dino.embed(samples.class_images) if samples.class_images else None)


@dataclass
class Figures:
    """One model's figures; pres/div_dino are None without class samples, dino_ideal without ideal renders."""
    dino: float
    clip_i: float
    clip_t: float
    pres: float | None = None
    div_dino: float | None = None
    dino_ideal: float | None = None   # micro world: mean DINO between a prompt's samples and its ideal renders
    context_read: float | None = None  # micro world: share of samples whose context micro-CLIP reads as the prompt's
    per_prompt: list[dict] = field(default_factory=list)

    def headline(self) -> dict[str, float | None]:
        return {k: v for k, v in asdict(self).items() if k != "per_prompt"}


def score(samples: Samples, real: Reference, encoders: Encoders, ideal: Samples | None = None,
          embedded: Embedded | None = None) -> Figures:
    """All figures for one model's samples (pass `embedded` when already computed)."""
    e = embedded or embed_samples(samples, encoders)
    n_prompts = len(samples.prompts)
    figures = Figures(dino=m.subject_fidelity(e.dino, real.dino), clip_i=m.subject_fidelity(e.clip, real.clip),
                      clip_t=m.prompt_fidelity(e.text, e.clip, samples.prompt_index))
    figures.context_read = context_read(samples, e, encoders)
    if e.class_dino is not None:
        figures.pres = m.preservation(real.dino, e.class_dino)
        figures.div_dino = m.diversity_dino(e.class_dino) if len(samples.class_images) >= 2 else None
    columns = {"dino": m.per_group_fidelity(e.dino, real.dino, samples.prompt_index, n_prompts),
               "clip_i": m.per_group_fidelity(e.clip, real.clip, samples.prompt_index, n_prompts),
               "clip_t": m.per_group_prompt_fidelity(e.text, e.clip, samples.prompt_index)}
    if ideal is not None:
        ideal_dino = encoders.dino.embed(ideal.images)
        columns["dino_ideal"] = m.paired_fidelity(e.dino, ideal_dino, samples.prompt_index, ideal.prompt_index,
                                                  n_prompts)
        figures.dino_ideal = _nanmean(columns["dino_ideal"])
    seeds = [[s for s, i in zip(samples.seeds, samples.prompt_index) if i == p] for p in range(n_prompts)]
    figures.per_prompt = [{"prompt": samples.prompts[p], "seeds": seeds[p], **{k: col[p] for k, col in columns.items()}}
                          for p in range(n_prompts)]
    return figures


def context_read(samples: Samples, e: Embedded, encoders: Encoders) -> float | None:
    """Micro world only: the share of samples whose context micro-CLIP reads zero-shot as their prompt's
    (as `dreambooth world gates` reads base samples). Why: CLIP-T's raw cosine scores the world's ideal
    renders below the untouched base model, so it cannot say whether a prompt's context was drawn."""
    if not encoders.clip.prep.world:
        return None
    from ..world.encoders import fill_template
    from ..world.pretrain.clip import CONTEXT_TEMPLATES
    from ..world.pretrain.data import CONTEXT_PHRASES
    from ..world.vocab import parse_prompt
    truth = [CONTEXT_PHRASES.index(c) if (c := parse_prompt(t)[2]) else -1 for t in samples.texts]
    text = encoders.clip.embed_text([fill_template(t, c) for c in CONTEXT_PHRASES for t in CONTEXT_TEMPLATES])
    labels = text.view(len(CONTEXT_PHRASES), len(CONTEXT_TEMPLATES), -1).mean(1)         # prompt ensemble
    return m.zero_shot_accuracy(e.clip, labels, [truth[p] for p in samples.prompt_index])


def _nanmean(values: list[float]) -> float:
    kept = [v for v in values if not math.isnan(v)]
    return sum(kept) / len(kept) if kept else float("nan")


def mean_figures(all_figures: list[Figures]) -> dict[str, float | None]:
    """Average the headline figures over subjects (None stays None when no subject has it)."""
    out: dict[str, float | None] = {}
    for key in (*METRICS, "dino_ideal", "context_read"):
        values = [getattr(f, key) for f in all_figures if getattr(f, key) is not None]
        out[key] = sum(values) / len(values) if values else None
    return out
