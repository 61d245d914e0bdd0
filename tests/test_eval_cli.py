"""`dreambooth eval` end to end on a tiny trained model with tiny random CLIP and DINO encoders,
plus the errors a user without encoders sees, and the protocol's prompt lists."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from conftest import draw_subject
from transformers import CLIPConfig, CLIPModel, CLIPTokenizer, ViTConfig, ViTModel

from dreambooth.cli import main
from dreambooth.eval.encoders import FLAGS_HINT, EncoderUnavailable, load_clip, load_dino, resolve_encoders
from dreambooth.eval.protocol import LIVE_PROMPTS, OBJECT_PROMPTS, fill, prompt_templates, world_prompts
from dreambooth.tiny import build_clip_tokenizer
from dreambooth.world.vocab import parse_prompt

FIVE = ("dino", "clip_i", "clip_t", "pres", "div_dino")


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny models leave nothing to parallelise, and on a shared CPU idle threads spin: one thread
    ran the suite test 10x faster on the loaded 2-core machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def encoders(tmp_path_factory) -> tuple[Path, Path]:
    """A tiny random CLIPModel (with its tokenizer) and ViTModel, saved as transformers folders."""
    root = tmp_path_factory.mktemp("encoders")
    clip_dir = build_clip_tokenizer(root / "clip")
    tok = CLIPTokenizer.from_pretrained(clip_dir)
    torch.manual_seed(0)
    text = dict(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                max_position_embeddings=77, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                pad_token_id=tok.pad_token_id)
    vision = dict(image_size=32, patch_size=8, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                  num_attention_heads=2)
    CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=16)).save_pretrained(clip_dir)
    dino_dir = root / "dino"
    ViTModel(ViTConfig(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                       intermediate_size=64), add_pooling_layer=False).save_pretrained(dino_dir)
    return clip_dir, dino_dir


@pytest.fixture(scope="module")
def photos_dir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("dog")
    for i in range(3):
        draw_subject(i).save(folder / f"{i:02d}.png")
    return folder


@pytest.fixture(scope="module")
def trained(tiny_sd, photos_dir, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("trained") / "dog-model"
    assert main(["train", f"--model={tiny_sd}", f"--instance-data-dir={photos_dir}", "--class-name=dog",
                 "--max-train-steps=2", "--learning-rate=1e-3", "--report_to=none", f"--output-dir={out}"]) == 0
    return out


def test_eval_end_to_end_with_base_model(trained, tiny_sd, photos_dir, encoders, tmp_path):
    clip_dir, dino_dir = encoders
    out = tmp_path / "report"
    assert main(["eval", "--model", str(trained), "--instance-data-dir", str(photos_dir), "--class-name", "dog",
                 "--out", str(out), "--base-model", str(tiny_sd), "--clip-model", str(clip_dir),
                 "--dino-model", str(dino_dir), "--prompts", "2", "--images-per-prompt", "2", "--class-images", "2",
                 "--steps", "1", "--seed", "5"]) == 0
    record = json.loads((out / "metrics.json").read_text())
    identifier = json.loads((trained / "identifier.json").read_text())["identifier"]
    assert set(record["models"]) == {"dreambooth", "base_model"}
    for model in record["models"].values():
        figures = model["figures"]
        assert all(math.isfinite(figures[k]) for k in FIVE)
        assert all(-1 - 1e-6 <= figures[k] <= 1 + 1e-6 for k in ("dino", "clip_i", "clip_t", "pres"))
        assert 0 <= figures["div_dino"] <= 2 + 1e-6
        # a dog is a live subject: DreamBench's live list, identifier substituted, CLIP-T reads it without
        assert model["prompts"] == [f"a {identifier} dog in the jungle", f"a {identifier} dog in the snow"]
        assert model["clip_t_texts"] == ["a dog in the jungle", "a dog in the snow"]
        assert model["seeds"] == [5, 6] and model["class_seeds"] == [5, 6]
        assert model["class_prompt"] == "a photo of dog"
        assert len(model["per_prompt"]) == 2
    assert record["real_images"]["count"] == 3 and -1 <= record["real_images"]["dino"] <= 1
    assert record["settings"]["identifier"] == identifier and "dreambooth eval --model" in record["command"]
    assert record["paper_table1"]["DreamBooth, Stable Diffusion (paper)"]["clip_t"] == 0.305
    for name in ("report.md", "per_prompt.csv", "chart_fidelity.png", "chart_prior.png", "grid_dreambooth.png",
                 "grid_base_model.png", "class_dreambooth.png", "class_base_model.png"):
        assert (out / name).is_file(), name
    assert len((out / "per_prompt.csv").read_text().strip().splitlines()) == 1 + 2 * 2
    page = (out / "report.md").read_text()
    assert "![fidelity](chart_fidelity.png)" in page and "DIV-DINO" in page and "LPIPS" in page


def test_missing_encoders_say_what_to_pass(trained, photos_dir, tmp_path, capsys):
    args = ["eval", "--model", str(trained), "--instance-data-dir", str(photos_dir), "--class-name", "dog",
            "--out", str(tmp_path / "r")]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert FLAGS_HINT in err and "Traceback" not in err and "--clip-model and --dino-model" in err
    assert main(args + ["--clip-model", str(tmp_path / "nowhere"), "--dino-model", str(tmp_path / "nowhere")]) == 2
    err = capsys.readouterr().err
    assert "does not exist" in err and FLAGS_HINT in err
    assert not (tmp_path / "r").exists()          # nothing sampled, nothing written


def test_hub_id_offline_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(EncoderUnavailable, match="--clip-model /path/to/clip-vit-base-patch32"):
        load_clip("openai/clip-vit-base-patch32-not-cached")


def test_encoders_embed_to_unit_vectors_and_honour_preprocessor_config(encoders, tmp_path):
    clip_dir, dino_dir = encoders
    images = [draw_subject(0), draw_subject(1).resize((40, 90))]        # any size: center-cropped, resized
    clip, dino = load_clip(str(clip_dir)), load_dino(str(dino_dir))
    assert (clip.prep.size, clip.prep.mean[0], dino.prep.mean[0]) == (32, 0.48145466, 0.485)
    for emb in (clip.embed(images), dino.embed(images), clip.embed_text(["a dog", "a dog in the snow"])):
        assert emb.shape[0] == 2 and torch.allclose(emb.norm(dim=-1), torch.ones(2), atol=1e-5)
    (dino_dir / "preprocessor_config.json").write_text(json.dumps(
        {"crop_size": {"height": 48, "width": 48}, "image_mean": [0.5] * 3, "image_std": [0.5] * 3}))
    try:
        assert load_dino(str(dino_dir)).prep.size == 48
    finally:
        (dino_dir / "preprocessor_config.json").unlink()
    # a non-world model with no flags: the world's encoders do not apply
    with pytest.raises(EncoderUnavailable, match="not a micro-world model"):
        resolve_encoders(None, str(dino_dir), model=tmp_path)


def test_prompt_lists():
    assert len(OBJECT_PROMPTS) == len(LIVE_PROMPTS) == 25 and len(set(OBJECT_PROMPTS) & set(LIVE_PROMPTS)) == 15
    assert prompt_templates("dog") == LIVE_PROMPTS and prompt_templates("cat") == LIVE_PROMPTS
    assert prompt_templates("backpack") == OBJECT_PROMPTS and prompt_templates("stuffed animal") == OBJECT_PROMPTS
    assert prompt_templates("teddy bear") == LIVE_PROMPTS          # the head noun decides; say --prompt-list object
    assert prompt_templates("dog", "object", limit=3) == OBJECT_PROMPTS[:3]
    assert fill("a {0} {1} in the snow", "", "dog") == "a dog in the snow"
    assert fill("a red {0} {1}", "sks", "dog") == "a red sks dog"
    world = world_prompts()
    assert len(world) == 11                             # 9 contexts + red + purple
    for t in world:                                     # every one is understood by the world's grammar
        cls, color, context = parse_prompt(fill(t, "[V]", "ball"))
        assert cls == "ball" and (color or context)
