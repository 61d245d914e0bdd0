"""Shared fixtures: tiny random models of the real architectures, built once per test session
and saved to disk, so every test loads them through the same code a user's model goes through."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from dreambooth.tiny import build_tiny_if, build_tiny_sd, build_tiny_sdxl

os.environ.setdefault("HF_HUB_OFFLINE", "1")   # never wait on a network that is not there


@pytest.fixture(scope="session")
def tiny_sd(tmp_path_factory) -> Path:
    return build_tiny_sd(tmp_path_factory.mktemp("models") / "tiny-sd")


@pytest.fixture(scope="session")
def tiny_sd_v(tmp_path_factory) -> Path:
    return build_tiny_sd(tmp_path_factory.mktemp("models") / "tiny-sd-v", prediction_type="v_prediction")


@pytest.fixture(scope="session")
def tiny_sdxl(tmp_path_factory) -> Path:
    return build_tiny_sdxl(tmp_path_factory.mktemp("models") / "tiny-sdxl")


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


@pytest.fixture(scope="session")
def world(tmp_path_factory) -> Path:
    """The world's folders (tokenizer, text_encoder, clip, instance, base) as `dreambooth world pretrain`
    lays them out, with small random encoders; the base and SR models get one toy training step."""
    from transformers import CLIPTextConfig, CLIPTokenizer, ViTConfig, ViTModel

    from dreambooth.tiny import build_clip_tokenizer
    from dreambooth.world.clipnet import WorldCLIP
    from dreambooth.world.pretrain.diffusion import DiffusionRun, train_diffusion
    from dreambooth.world.vocab import world_words

    out = tmp_path_factory.mktemp("world")
    tok = CLIPTokenizer.from_pretrained(build_clip_tokenizer(out / "tokenizer", world_words()))
    torch.manual_seed(0)
    small = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2)
    text = dict(vocab_size=len(tok), max_position_embeddings=77, bos_token_id=tok.bos_token_id,
                eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id, **small)
    clip = WorldCLIP(CLIPTextConfig(**text), width=32, projection_dim=16)
    clip.text_model.save_pretrained(out / "text_encoder")
    clip.save_pretrained(out / "clip")
    vit = ViTModel(ViTConfig(image_size=64, patch_size=16, **small), add_pooling_layer=False)
    vit.save_pretrained(out / "instance")
    for name in ("clip", "instance"):       # world pretraining's mark on its encoders
        (out / name / "training.json").write_text(json.dumps({"toy": "random weights"}))
    for kind in ("base", "sr"):
        run = DiffusionRun(kind=kind, scale="toy", steps=1, batch_size=2, cache_size=4, checkpoint_every=1)
        train_diffusion(run, out, out / "tokenizer", out / "text_encoder", lambda msg: None)
    return out
