"""The micro world's encoders: micro-CLIP and the instance encoder (toy trainings, resume, helpers)."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from transformers import CLIPTextModel, CLIPTokenizer, ViTModel

from dreambooth.core.checkpoint import list_checkpoints
from dreambooth.tiny import build_clip_tokenizer
from dreambooth.world.encoders import (clip_image_embeds, clip_text_embeds, fill_template, instance_embeds,
                                       load_instance_encoder, load_world_clip, to_64, top1_retrieval, zero_shot)
from dreambooth.world.pretrain.clip import caption_matches, swap_attribute, train_clip
from dreambooth.world.pretrain.data import caption_attrs
from dreambooth.world.pretrain.common import multi_positive_nce
from dreambooth.world.pretrain.data import sample
from dreambooth.world.pretrain.instance import supcon_loss, train_instance_encoder
from dreambooth.world.pretrain.text import text_config, train_text_encoder
from dreambooth.world.vocab import CLASSES, world_words

CLIP_TOY = dict(steps=4, batch_size=12, cache_size=24, ckpt_every=2, log_every=1)
INSTANCE_TOY = dict(steps=4, groups=2, per_group=2, pool_per_group=2, views=2, ckpt_every=2, log_every=1)


class Interrupt(Exception):
    pass


def interrupt_after_first_checkpoint(lines: list[str]):
    def log(msg: str) -> None:
        lines.append(msg)
        if msg.startswith("checkpoint at step 2"):
            raise Interrupt
    return log


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory) -> Path:
    return build_clip_tokenizer(tmp_path_factory.mktemp("tok") / "tokenizer", extra_words=world_words())


def _interrupted_then_resumed(train, out: Path) -> list[str]:
    """Run `train` until its first checkpoint, 'crash', check the checkpoint, run again to the end."""
    first: list[str] = []
    with pytest.raises(Interrupt):
        train(out, interrupt_after_first_checkpoint(first))
    ckpt = next(out.glob(".*-ckpt"))
    saved = list_checkpoints(ckpt)[-1]
    assert json.loads((saved / "state.json").read_text())["step"] == 2
    assert load_file(str(saved / "optimizer.safetensors"))                   # AdamW moments, no pickle
    assert not list(ckpt.rglob("*.bin")) and not list(ckpt.rglob("*.pt"))
    second: list[str] = []
    train(out, second.append)
    assert any(m.startswith("resuming at step 2") for m in second)
    assert sum(m.startswith("step ") for m in second) == 2                  # only steps 3 and 4 ran again
    assert not ckpt.exists()                                                 # finished: checkpoint cleaned up
    return second


def _same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.allclose(sa[k], sb[k], atol=1e-6) for k in sa)


def test_clip_trains_resumes_and_saves_loadable_folders(tmp_path, tokenizer_dir):
    def train(out: Path, log):
        train_text_encoder(out, tokenizer_dir, steps=2, batch_size=8, pool=16, log=lambda m: None)
        return train_clip(out, tokenizer_dir, log=log, **CLIP_TOY)

    _interrupted_then_resumed(train, tmp_path / "resumed")
    train(tmp_path / "straight", lambda m: None)
    resumed = load_world_clip(tmp_path / "resumed" / "clip")
    assert _same_weights(resumed, load_world_clip(tmp_path / "straight" / "clip"))  # resume is exact
    info = json.loads((tmp_path / "resumed" / "clip" / "training.json").read_text())
    assert info["steps"] == 4 and info["resumed_from"] == 2

    text = CLIPTextModel.from_pretrained(tmp_path / "resumed" / "text_encoder")
    assert text.config.hidden_size == 128 and text.config.max_position_embeddings == 77
    assert _same_weights(text, resumed.text_model)      # the text tower is locked: CLIP left it as it was
    quiet: list[str] = []
    assert train(tmp_path / "resumed", quiet.append) == tmp_path / "resumed" / "clip" and quiet == []  # done: no-op

    model, tok = load_world_clip(tmp_path / "resumed" / "clip"), CLIPTokenizer.from_pretrained(tokenizer_dir)
    for size in (32, 64):
        emb = clip_image_embeds(model, torch.rand(3, 3, size, size) * 2 - 1)
        assert emb.shape == (3, 128) and torch.allclose(emb.norm(dim=1), torch.ones(3), atol=1e-5)
    txt = clip_text_embeds(model, tok, ["a photo of a ball", "an orange can on the beach"])
    assert txt.shape == (2, 128) and torch.allclose(txt.norm(dim=1), torch.ones(2), atol=1e-5)
    pred = zero_shot(model, tok, torch.rand(5, 3, 32, 32) * 2 - 1, list(CLASSES), ["a photo of a {}", "a {}"])
    assert pred.shape == (5,) and pred.dtype == torch.long and int(pred.max()) < len(CLASSES)


def test_instance_encoder_trains_resumes_and_saves_a_vit_folder(tmp_path):
    def train(out: Path, log):
        return train_instance_encoder(out, log=log, **INSTANCE_TOY)

    _interrupted_then_resumed(train, tmp_path / "resumed")
    train(tmp_path / "straight", lambda m: None)
    folder = tmp_path / "resumed" / "instance"
    assert _same_weights(ViTModel.from_pretrained(folder, add_pooling_layer=False),
                         ViTModel.from_pretrained(tmp_path / "straight" / "instance", add_pooling_layer=False))
    model = load_instance_encoder(folder)
    assert model.config.image_size == 64 and model.config.patch_size == 8 and model.pooler is None
    for size in (32, 64):
        emb = instance_embeds(model, torch.rand(4, 3, size, size) * 2 - 1)
        assert emb.shape == (4, 128) and torch.allclose(emb.norm(dim=1), torch.ones(4), atol=1e-5)


def test_to_64_upsamples_32_and_keeps_64():
    x = torch.rand(2, 3, 32, 32)
    assert to_64(x).shape == (2, 3, 64, 64)
    y = torch.rand(2, 3, 64, 64)
    assert to_64(y) is y
    with pytest.raises(ValueError):
        to_64(torch.rand(3, 64, 64))


def test_retrieval_arithmetic_on_hand_made_embeddings():
    gallery = torch.eye(4)                       # four items, ids 10, 11, 12, 13
    gallery_ids = [10, 11, 12, 13]
    queries = F.normalize(torch.tensor([[1.0, 0.1, 0, 0],       # -> item 0: right
                                        [0.9, 0.5, 0, 0],       # -> item 0, but it is 11: wrong
                                        [0, 0, 0.2, 1.0],       # -> item 3, but it is 12: wrong...
                                        [0, 0, 0.1, 1.0]]), dim=1)
    ids = [10, 11, 12, 13]
    assert top1_retrieval(queries, gallery, ids, gallery_ids) == 0.5
    # ...unless the candidates leave only the right one among the plausible: query 2 may see items 0-2
    assert top1_retrieval(queries, gallery, ids, gallery_ids, [[0, 1], [1, 2], [0, 1, 2], [2, 3]]) == 1.0


def test_zero_shot_templates_fix_articles():
    assert fill_template("a photo of a {} ball", "orange") == "a photo of an orange ball"
    assert fill_template("a photo of a {}", "ring") == "a photo of a ring"
    assert fill_template("a photo of a ring {}", "on the beach") == "a photo of a ring on the beach"


def test_caption_matching_counts_unsaid_attributes_as_agreeing():
    images = torch.tensor([[0, 1, 2], [0, 3, 2], [1, 1, 2]])
    captions = torch.tensor([[0, 1, 2], [0, -1, -1], [1, 1, -1]])
    assert caption_matches(images, captions).tolist() == [[True, True, False], [False, True, False],
                                                          [False, False, True]]


def test_contrastive_losses():
    logits = torch.randn(5, 5)
    one = torch.eye(5, dtype=torch.bool)
    assert torch.allclose(multi_positive_nce(logits, one), F.cross_entropy(logits, torch.arange(5)))
    ids = torch.tensor([0, 0, 1, 1, 2, 2])
    perfect = F.one_hot(ids, 3).float()          # views of an instance identical, instances orthogonal
    assert supcon_loss(perfect, ids) < 0.01 < supcon_loss(perfect[torch.tensor([0, 2, 1, 4, 3, 5])], ids)


def test_hard_negative_captions_change_exactly_one_named_attribute():
    rng = random.Random(0)
    for i in range(200):
        s = sample(0, i)
        attrs = caption_attrs(s.caption)
        assert attrs[0] == s.cls and attrs[1] in (-1, s.color) and attrs[2] in (-1, s.context)
        text, new = swap_attribute(s.caption, attrs, rng)
        assert caption_attrs(text) == new                    # the new caption says what its attrs say
        assert sum(a != b for a, b in zip(attrs, new)) == 1 and all(n >= 0 for a, n in zip(attrs, new) if a >= 0)


def test_text_encoder_learns_to_read_class_colour_and_context_from_captions(tmp_path, tokenizer_dir):
    logs: list[str] = []
    train_text_encoder(tmp_path, tokenizer_dir, steps=60, batch_size=64, pool=512, log=logs.append)
    losses = [float(m.split("loss=")[1].split()[0]) for m in logs if m.startswith("step ")]
    assert losses[-1] < 0.5 * losses[0]                            # it learns, on captions alone
    text = CLIPTextModel.from_pretrained(tmp_path / "text_encoder")
    tok = CLIPTokenizer.from_pretrained(tokenizer_dir)
    torch.manual_seed(0)                                           # the stage's seed: its initial weights
    init = CLIPTextModel(text_config(tok)).embeddings.token_embedding.weight
    trained = text.embeddings.token_embedding.weight
    rare, word = tok.convert_tokens_to_ids("sks</w>"), tok.convert_tokens_to_ids("ball</w>")
    # rare tokens never occur in captions: the identifier's embedding is exactly as initialised
    assert torch.equal(trained[rare], init[rare]) and not torch.equal(trained[word], init[word])
    assert not (tmp_path / ".text-ckpt").exists()                  # finished: checkpoint cleaned up
