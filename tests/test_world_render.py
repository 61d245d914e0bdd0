"""The micro world's renderer, vocabulary and subjects."""

from __future__ import annotations

import dataclasses
import random

import numpy as np
import pytest
from PIL import Image

from dreambooth.cli import main
from dreambooth.world.render import Scene, random_pattern, random_pose, render
from dreambooth.world.subjects import SUBJECTS, ideal_scene, photo_scenes, subject_scene
from dreambooth.world.vocab import CLASSES, COLORS, CONTEXTS, caption, parse_prompt, world_words


def test_world_size_meets_the_spec():
    assert len(CLASSES) >= 6 and len(COLORS) >= 8 and len(CONTEXTS) >= 8
    assert len(SUBJECTS) >= 12
    per_class = {c: [s for s in SUBJECTS.values() if s.cls == c] for c in CLASSES}
    assert sum(len(v) >= 2 for v in per_class.values()) >= 4


def test_render_is_deterministic_and_64px():
    scene = random_pose(Scene("star", "red", "beach", random_pattern(random.Random(1))), random.Random(2))
    a, b = render(scene), render(scene)
    assert a.shape == (64, 64, 3) and a.dtype == np.uint8 and np.array_equal(a, b)


def test_same_class_subjects_share_colour_but_not_pattern():
    for s in SUBJECTS.values():
        twins = [t for t in SUBJECTS.values() if t.cls == s.cls and t.name != s.name]
        assert all(t.color == s.color and t.pattern != s.pattern for t in twins)


def test_identity_survives_context_but_differs_between_twins():
    """Same pose: swapping the context changes only the background, swapping the twin changes the object."""
    a, b = SUBJECTS["striped_ball"], SUBJECTS["dotted_ball"]
    pose = dict(x=0.5, y=0.5, scale=0.25, rotation=0.3)
    sa = Scene(a.cls, a.color, "beach", a.pattern, **pose)
    obj = np.hypot(*np.mgrid[-1:1:64j, -1:1:64j]) < 0.35          # pixels well inside the ball
    beach, snow = render(sa), render(Scene(a.cls, a.color, "snow", a.pattern, **pose))
    twin = render(Scene(b.cls, b.color, "beach", b.pattern, **pose))
    assert np.abs(beach[obj].astype(int) - snow[obj]).mean() < 3        # object identical across contexts
    assert np.abs(beach[obj].astype(int) - twin[obj]).mean() > 20       # the twin's object differs
    assert np.abs(beach[~obj].astype(int) - snow[~obj]).mean() > 40     # the context really changed


@pytest.mark.parametrize("name", sorted(SUBJECTS))
def test_fine_mark_is_visible_at_64_but_blurred_at_32(name):
    s = SUBJECTS[name]
    with_mark = subject_scene(s, "snow")
    without = dataclasses.replace(with_mark, pattern=dataclasses.replace(s.pattern, mark_pos=(9.0, 9.0)))
    hi = np.abs(render(with_mark).astype(int) - render(without)).sum(-1)
    lo = np.abs(np.asarray(Image.fromarray(render(with_mark)).resize((32, 32), Image.BOX)).astype(int)
                - np.asarray(Image.fromarray(render(without)).resize((32, 32), Image.BOX))).sum(-1)
    assert hi.max() > 150                 # crisp at 64x64
    assert lo.max() < hi.max() * 0.85     # weaker once downsampled to 32x32


def test_captions_never_mention_the_pattern():
    rng = random.Random(0)
    words = set(world_words())
    for _ in range(50):
        cap = caption(rng.choice(CLASSES), rng.choice([None, *COLORS]), rng.choice([None, *CONTEXTS]), rng)
        assert set(cap.split()) <= words
        assert not {"stripes", "dots", "split", "emblem", "mark"} & set(cap.split())


def test_prompt_parsing_and_ideal_render():
    assert parse_prompt("a red sks ball on the beach") == ("ball", "red", "on the beach")
    assert parse_prompt("a photo of sks star") == ("star", None, None)
    # colour words inside a context phrase do not recolour the object
    assert parse_prompt("a sks ball on top of pink fabric") == ("ball", None, "on top of pink fabric")
    assert parse_prompt("a white box on top of a purple rug in a forest")[:2] == ("box", "white")
    s = SUBJECTS["split_ring"]
    scene = ideal_scene(s, "a red [V] ring in the snow")
    assert (scene.color, scene.context, scene.pattern) == ("red", "snow", s.pattern)
    assert ideal_scene(s, "a photo of [V] ring").context == s.home[0]


def test_photos_vary_pose_and_context():
    scenes = photo_scenes(SUBJECTS["bar_can"], 5)
    assert len({(sc.x, sc.y) for sc in scenes}) == 5 and len({sc.context for sc in scenes}) == 2


def test_world_photos_command(tmp_path, capsys):
    assert main(["world", "photos", "--subject", "disc_star", "-n", "3", "--out", str(tmp_path / "p")]) == 0
    files = sorted((tmp_path / "p").glob("*.png"))
    assert len(files) == 3 and Image.open(files[0]).size == (64, 64)
    assert sorted(p.name for p in (tmp_path / "p").glob("*.txt")) == [f.with_suffix(".txt").name for f in files]
    assert main(["world", "photos", "--subject", "nope", "-n", "1", "--out", str(tmp_path / "q")]) == 2
    assert "disc_star" in capsys.readouterr().err
