"""Regenerate the micro-world pictures in docs/images (python docs/make_world_figures.py)."""

import random
from pathlib import Path

import numpy as np
from PIL import Image

from dreambooth.world.render import Scene, random_pattern, random_pose, render
from dreambooth.world.subjects import SUBJECTS, ideal_scene, photo_scenes
from dreambooth.world.vocab import CLASSES, COLORS, CONTEXTS

OUT = Path(__file__).parent / "images"


def save(rows: list[list[np.ndarray]], name: str, zoom: int = 2) -> None:
    grid = np.concatenate([np.concatenate(r, 1) for r in rows], 0)
    Image.fromarray(grid).resize((grid.shape[1] * zoom, grid.shape[0] * zoom), Image.NEAREST).save(OUT / name)


def main() -> None:
    OUT.mkdir(exist_ok=True)
    rng = random.Random(0)
    colors = list(COLORS)
    save([[render(random_pose(Scene(c, colors[(i + j) % 8], ctx, random_pattern(rng)), rng))
           for j, ctx in enumerate(CONTEXTS.values())] for i, c in enumerate(CLASSES)], "world_classes_contexts.png")
    save([[render(s) for s in photo_scenes(sub, 4)]
          + [render(ideal_scene(sub, f"a [V] {sub.cls} on the beach")),
             render(ideal_scene(sub, f"a red [V] {sub.cls} in the snow"))] for sub in SUBJECTS.values()],
         "world_subjects.png")
    # the same photos at the base model's 32x32: the coarse pattern survives, the fine mark does not
    save([[np.asarray(Image.fromarray(render(s)).resize((32, 32), Image.BOX)) for s in photo_scenes(sub, 4)]
          for sub in list(SUBJECTS.values())[:4]], "world_subjects_32px.png", zoom=4)


if __name__ == "__main__":
    main()
