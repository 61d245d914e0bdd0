"""The world's named subjects, their "photos", and the ideal render of any prompt about them.

Subjects are hand-made instances that pretraining never renders (pretraining draws random
patterns). Each class has two subjects of the SAME colour that differ only in pattern and mark, so
subject fidelity must tell two instances of one class apart, as DreamBench's two dogs must be.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, replace
from pathlib import Path

from PIL import Image

from .. import files

from .render import Pattern, Scene, random_pose, render
from .vocab import CONTEXTS, parse_prompt

INK, SNOW, GOLD, NAVY, RED, LEAF, BROWN, VIOLET = ((20, 20, 20), (250, 250, 250), (250, 210, 40), (30, 60, 160),
                                                   (200, 30, 30), (40, 150, 70), (120, 70, 30), (150, 60, 190))


@dataclass(frozen=True)
class Subject:
    name: str
    cls: str
    color: str
    pattern: Pattern
    home: tuple[str, ...]      # the contexts its photos are taken in (as a user's photos are)


SUBJECTS = {s.name: s for s in [
    Subject("striped_ball", "ball", "red", Pattern("stripes", 0.4, 3.0, SNOW, mark="tick", mark_pos=(0.3, -0.4), mark_color=NAVY),
            ("wooden_floor", "pink_fabric")),
    Subject("dotted_ball", "ball", "red", Pattern("dots", 0.2, 3.2, GOLD, mark="slash", mark_pos=(-0.35, 0.3), mark_color=SNOW),
            ("wooden_floor", "cobblestone")),
    Subject("cross_box", "box", "blue", Pattern("emblem", 0.0, 3.0, SNOW, emblem="cross", mark="dot2",
                                                mark_pos=(0.5, 0.55), mark_color=RED), ("wooden_floor", "city")),
    Subject("split_box", "box", "blue", Pattern("split", 2.2, 3.0, GOLD, mark="corner", mark_pos=(-0.5, -0.5), mark_color=RED),
            ("pink_fabric", "cobblestone")),
    Subject("striped_star", "star", "yellow", Pattern("stripes", 1.2, 3.6, INK, mark="hbar", mark_pos=(0.0, 0.15), mark_color=RED),
            ("beach", "wooden_floor")),
    Subject("disc_star", "star", "yellow", Pattern("emblem", 0.0, 3.0, RED, emblem="disc", mark="vbar",
                                                   mark_pos=(0.0, -0.55), mark_color=NAVY), ("snow", "city")),
    Subject("dotted_pyramid", "pyramid", "green", Pattern("dots", 0.7, 3.4, SNOW, mark="tick", mark_pos=(0.1, 0.5), mark_color=RED),
            ("beach", "cobblestone")),
    Subject("chevron_pyramid", "pyramid", "green", Pattern("emblem", 0.0, 3.0, GOLD, emblem="chevron", mark="dot2",
                                                           mark_pos=(0.0, -0.3), mark_color=RED), ("snow", "wooden_floor")),
    Subject("striped_ring", "ring", "purple", Pattern("stripes", 2.6, 2.4, GOLD, mark="slash", mark_pos=(0.7, 0.2), mark_color=LEAF),
            ("pink_fabric", "city")),
    Subject("split_ring", "ring", "purple", Pattern("split", 0.9, 3.0, SNOW, mark="hbar", mark_pos=(-0.7, 0.1), mark_color=RED),
            ("wooden_floor", "beach")),
    Subject("bar_can", "can", "orange", Pattern("emblem", 0.0, 3.0, NAVY, emblem="bar", mark="corner",
                                                mark_pos=(0.3, 0.6), mark_color=SNOW), ("cobblestone", "snow")),
    Subject("dotted_can", "can", "orange", Pattern("dots", 1.9, 3.8, BROWN, mark="vbar", mark_pos=(-0.3, -0.6), mark_color=NAVY),
            ("city", "pink_fabric")),
]}


def get_subject(name: str) -> Subject:
    from ..errors import DreamboothError
    if name not in SUBJECTS:
        raise DreamboothError(f"Unknown micro-world subject {name!r}. The subjects are: {', '.join(SUBJECTS)}.")
    return SUBJECTS[name]


def subject_scene(subject: Subject, context: str, color: str | None = None) -> Scene:
    return Scene(cls=subject.cls, color=color or subject.color, context=context, pattern=subject.pattern)


def photo_scenes(subject: Subject, n: int, seed: int = 0) -> list[Scene]:
    """n "photos": the subject at home, in varied poses (what a user's photo folder holds)."""
    rng = random.Random(f"photos/{subject.name}/{seed}")
    return [random_pose(subject_scene(subject, subject.home[i % len(subject.home)]), rng) for i in range(n)]


def photo_caption(subject: Subject, scene: Scene) -> str:
    """What a careful user would write beside the photo: the subject as [V] and where it is."""
    phrase = next(p for p, c in CONTEXTS.items() if c == scene.context)
    return f"a photo of [V] {subject.cls} {phrase}"


def write_photos(subject: Subject, n: int, out: Path, seed: int = 0) -> list[Path]:
    """n photos as PNG files, each with its caption beside it (.txt; train on them with --caption_extension .txt)."""
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, scene in enumerate(photo_scenes(subject, n, seed)):
        path = out / f"{subject.name}_{i:02d}.png"
        with files.atomic_path(path) as tmp:     # a later `train` reads these: never half-written
            Image.fromarray(render(scene)).save(tmp, format="PNG")
        files.write_text(path.with_suffix(".txt"), photo_caption(subject, scene) + "\n")
        paths.append(path)
    return paths


def ideal_scene(subject: Subject, prompt: str, seed: int = 0) -> Scene:
    """What a perfect model would draw for a prompt about the subject ("a red [V] ring on the beach"):
    the subject, recoloured if the prompt names a colour, in the prompt's context (or at home)."""
    _, color, phrase = parse_prompt(prompt)
    context = CONTEXTS[phrase] if phrase else subject.home[0]
    rng = random.Random(f"ideal/{subject.name}/{prompt}/{seed}")
    return random_pose(replace(subject_scene(subject, context), color=color or subject.color), rng)
