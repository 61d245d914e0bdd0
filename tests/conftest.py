"""Shared fixtures: tiny random models of the real architectures, built once per test session
and saved to disk, so every test loads them through the same code a user's model goes through."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

from dreambooth.tiny import build_tiny_if, build_tiny_sd

os.environ.setdefault("HF_HUB_OFFLINE", "1")   # never wait on a network that is not there


@pytest.fixture(scope="session")
def tiny_sd(tmp_path_factory) -> Path:
    return build_tiny_sd(tmp_path_factory.mktemp("models") / "tiny-sd")


@pytest.fixture(scope="session")
def tiny_sd_v(tmp_path_factory) -> Path:
    return build_tiny_sd(tmp_path_factory.mktemp("models") / "tiny-sd-v", prediction_type="v_prediction")


@pytest.fixture(scope="session")
def tiny_if(tmp_path_factory) -> Path:
    return build_tiny_if(tmp_path_factory.mktemp("models") / "tiny-if")


def draw_subject(seed: int, size: int = 72) -> Image.Image:
    """A 'photo' of one subject: the same striped disc on a varied background and position."""
    rng = np.random.default_rng(seed)
    im = Image.new("RGB", (size + 8 * (seed % 2), size), tuple(int(c) for c in rng.integers(0, 255, 3)))
    d = ImageDraw.Draw(im)
    x, y = rng.integers(4, size // 3, 2)
    d.ellipse([x, y, x + size // 2, y + size // 2], fill=(200, 40, 40))
    for k in range(3):
        d.line([x, y + 8 + 8 * k, x + size // 2, y + 8 + 8 * k], fill=(250, 250, 0), width=2)
    return im


@pytest.fixture
def photos(tmp_path) -> Path:
    folder = tmp_path / "photos"
    folder.mkdir()
    for i in range(4):
        draw_subject(i).save(folder / f"{i:02d}.jpg")
    return folder


@pytest.fixture(autouse=True)
def isolated_cache(tmp_path, monkeypatch) -> Path:
    """Class images go to a per-test cache, never the user's home."""
    cache = tmp_path / "cache"
    monkeypatch.setenv("DREAMBOOTH_CACHE", str(cache))
    return cache
