"""The micro world's words: classes (shape families), colors, contexts, and the caption grammar.

Contexts and property changes mirror DreamBench's prompt list so the paper's protocol runs here
with the same sentences. Captions name class, color and context, never an instance's pattern:
identity is what words cannot say, which is the situation DreamBooth exists for.
"""

from __future__ import annotations

import random
import re

CLASSES = ("ball", "box", "star", "pyramid", "ring", "can")

COLORS = {  # name -> base RGB
    "red": (205, 40, 40), "orange": (240, 140, 30), "yellow": (240, 215, 40), "green": (50, 160, 60),
    "blue": (40, 80, 210), "purple": (130, 50, 170), "pink": (240, 130, 180), "white": (235, 235, 235),
}

# context phrase as it appears in prompts -> background renderer name
CONTEXTS = {
    "on the beach": "beach",
    "in the snow": "snow",
    "in the jungle": "jungle",
    "on top of pink fabric": "pink_fabric",
    "on top of a wooden floor": "wooden_floor",
    "with a city in the background": "city",
    "floating on top of water": "water",
    "on top of a purple rug in a forest": "purple_rug",
    "on a cobblestone street": "cobblestone",
}

# Secondary colours patterns are drawn in (identity lives in these, not in the caption colour).
PATTERN_COLORS = ((20, 20, 20), (250, 250, 250), (250, 210, 40), (30, 60, 160), (200, 30, 30), (40, 150, 70),
                  (120, 70, 30), (150, 60, 190))


def caption(cls: str, color: str | None, context: str | None, rng: random.Random) -> str:
    """A training caption; parts are dropped at random so the model learns each word on its own."""
    noun = f"{color} {cls}" if color else cls
    article = "an" if noun[0] in "aeiou" else "a"
    start = rng.choice(["a photo of {a} {n}", "{a} {n}", "a picture of {a} {n}"]).format(a=article, n=noun)
    return f"{start} {context}" if context else start


def world_words() -> list[str]:
    """Every word a world caption can contain (the tokenizer must keep each one a single token)."""
    text = " ".join([*CLASSES, *COLORS, *CONTEXTS, "a an photo of picture"])
    return sorted(set(re.findall(r"[a-z]+", text)))


def parse_prompt(prompt: str) -> tuple[str | None, str | None, str | None]:
    """(class, colour, context phrase) named in a prompt, each None when absent."""
    p = " " + prompt.lower() + " "
    context = next((c for c in sorted(CONTEXTS, key=len, reverse=True) if c in p), None)
    if context:   # "on top of pink fabric" names no pink object: look for class and colour outside it
        p = p.replace(context, " ")
    cls = next((c for c in CLASSES if f" {c} " in p or f" {c}s " in p), None)
    color = next((c for c in COLORS if f" {c} " in p), None)
    return cls, color, context
