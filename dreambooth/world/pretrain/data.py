"""Training data for pretraining: random world scenes (never a named subject) with captions.

Scenes come from a seeded generator, so a dataset is a pure function of (seed, index): any stage
can re-create the exact images it trained on, and resumed runs see the same data.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import numpy as np
import torch

from ..render import Scene, random_pattern, random_pose, render
from ..vocab import CLASSES, COLORS, CONTEXTS, caption, parse_prompt

CONTEXT_PHRASES = list(CONTEXTS)


@dataclass
class Sample:
    scene: Scene
    caption: str
    cls: int          # index into CLASSES
    color: int        # index into COLORS
    context: int      # index into CONTEXT_PHRASES


def sample(seed: int, index: int, *, drop_words: bool = True) -> Sample:
    """The index-th training example of the stream `seed`."""
    rng = random.Random(f"world/{seed}/{index}")
    cls, color, phrase = rng.choice(CLASSES), rng.choice(list(COLORS)), rng.choice(CONTEXT_PHRASES)
    scene = random_pose(Scene(cls, color, CONTEXTS[phrase], random_pattern(rng)), rng)
    # Captions sometimes leave out colour or context, so each word is learned on its own.
    say_color = not drop_words or rng.random() > 0.15
    say_context = not drop_words or rng.random() > 0.15
    text = caption(cls, color if say_color else None, phrase if say_context else None, rng)
    return Sample(scene, text, CLASSES.index(cls), list(COLORS).index(color), CONTEXT_PHRASES.index(phrase))


def render_batch(samples: list[Sample], size: int = 64) -> torch.Tensor:
    """-> (B, 3, size, size) float in [-1, 1]; size 32 is the 64 render box-filtered down."""
    images = np.stack([render(s.scene) for s in samples]).astype(np.float32)       # (B, 64, 64, 3)
    if size != 64:
        f = 64 // size
        images = images.reshape(len(samples), size, f, size, f, 3).mean(axis=(2, 4))
    return torch.from_numpy(images).permute(0, 3, 1, 2) / 127.5 - 1


class RenderCache:
    """A fixed pool of rendered examples held in memory (uint8), so training steps do not wait on
    the renderer. Index i of the pool is `sample(seed, i)`."""

    def __init__(self, seed: int, size: int, n: int, drop_words: bool = True):
        self.samples = [sample(seed, i, drop_words=drop_words) for i in range(n)]
        images = [render(s.scene) for s in self.samples]
        self.images64 = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).contiguous()   # (N, 3, 64, 64) uint8
        self.size = size

    def __len__(self) -> int:
        return len(self.samples)

    def batch(self, indices: list[int], size: int | None = None) -> torch.Tensor:
        """-> (B, 3, s, s) float in [-1, 1] at `size` (default: the cache's size)."""
        x = self.images64[indices].float()
        s = size or self.size
        if s != 64:
            x = torch.nn.functional.avg_pool2d(x, 64 // s)
        return x / 127.5 - 1


def caption_attrs(text: str) -> tuple[int, int, int]:
    _, _, phrase = parse_prompt(text)
    # the context phrase goes first: "... a white box on top of a purple rug" names no purple object
    cls, color, _ = parse_prompt(text.replace(phrase, " ") if phrase else text)
    return (CLASSES.index(cls) if cls else -1, list(COLORS).index(color) if color else -1,
            CONTEXT_PHRASES.index(phrase) if phrase else -1)
