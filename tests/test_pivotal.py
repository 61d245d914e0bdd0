"""Pivotal tuning (--train_text_encoder_ti): the identifier's embedding rows learn, nothing else in
the text encoders moves, on tiny models of the real architectures (one and two text towers)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoTokenizer

from dreambooth.cli import main

FAST = ["--class_inference_steps=2", "--report_to=none", "--max-train-steps=2", "--checkpointing-steps=2",
        "--text-encoder-lr=1e-2", "--class-name=dog"]


def tower_files(folder: Path) -> dict[str, Path]:
    return {name: folder / name / "model.safetensors" for name in ("text_encoder", "text_encoder_2")
            if (folder / name / "model.safetensors").exists()}


def identifier_rows(model: Path, tower: str, identifier: str) -> list[int]:
    tok = AutoTokenizer.from_pretrained(model / tower.replace("text_encoder", "tokenizer"))
    return tok(identifier, add_special_tokens=False).input_ids


@pytest.mark.parametrize("fixture", ["tiny_sd", "tiny_sdxl"])
def test_only_the_identifiers_rows_learn(fixture, photos, tmp_path, request):
    model = request.getfixturevalue(fixture)
    out = tmp_path / "out"
    # default weight decay 1e-2 at lr 1e-2: decoupled decay alone would move every row of the table
    assert main(["train", f"--model={model}", f"--instance-data-dir={photos}", f"--output-dir={out}",
                 "--train_text_encoder_ti", "--with-prior-preservation", "--num-class-images=2"] + FAST) == 0
    identifier = json.loads((out / "identifier.json").read_text())["identifier"]
    towers = tower_files(model)
    assert towers and set(tower_files(out)) == set(towers)
    for tower, file in towers.items():
        before, after = load_file(file), load_file(out / tower / "model.safetensors")
        assert set(after) == set(before)                                  # the usual keys, rows merged back
        changed = {k for k in before if not torch.equal(before[k], after[k])}
        assert len(changed) == 1 and next(iter(changed)).endswith("token_embedding.weight")
        key = next(iter(changed))
        rows = (before[key] != after[key]).any(dim=1).nonzero().flatten().tolist()
        assert rows == identifier_rows(model, tower, identifier)          # that row, and no other
        saved = load_file(out / "checkpoint-2" / f"{tower}.safetensors")  # resumable: the row, not the table
        assert [tuple(v.shape) for v in saved.values()] == [(len(rows), before[key].shape[1])]
    unet = "unet/diffusion_pytorch_model.safetensors"
    assert any(not torch.equal(a, load_file(out / unet)[k]) for k, a in load_file(model / unet).items())
    plan = json.loads((out / "plan.json").read_text())["trainable"]
    dim = load_file(towers["text_encoder"])[key_of(towers["text_encoder"])].shape[1]
    assert plan["text_encoder"]["lr"] == 1e-2 and plan["text_encoder"]["trainable_params"] == dim


def key_of(file: Path) -> str:
    return next(k for k in load_file(file) if k.endswith("token_embedding.weight"))


def test_resume_restores_the_learned_row(tiny_sd, photos, tmp_path, capsys):
    args = ["train", f"--model={tiny_sd}", f"--instance-data-dir={photos}", "--train_text_encoder_ti",
            "--checkpointing-steps=1"] + [a for a in FAST if not a.startswith("--checkpointing")]
    assert main(args + [f"--output-dir={tmp_path / 'straight'}"]) == 0
    (tmp_path / "split").mkdir()
    import shutil
    shutil.copytree(tmp_path / "straight" / "checkpoint-1", tmp_path / "split" / "checkpoint-1")
    assert main(args + [f"--output-dir={tmp_path / 'split'}", "--resume-from-checkpoint=latest"]) == 0
    te = "text_encoder/model.safetensors"
    key = key_of(tiny_sd / te)
    torch.testing.assert_close(load_file(tmp_path / "split" / te)[key], load_file(tmp_path / "straight" / te)[key])


@pytest.mark.parametrize("extra, says", [
    (["--pre_compute_text_embeddings"], "--pre_compute_text_embeddings"),
    (["--instance_prompt=a photo of dog"], "a common word"),
])
def test_combinations_it_cannot_serve_are_refused(extra, says, tiny_sd, photos, tmp_path, capsys):
    argv = ["train", f"--model={tiny_sd}", f"--instance-data-dir={photos}", f"--output-dir={tmp_path / 'out'}",
            "--train_text_encoder_ti"] + FAST + extra
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and says in err.strip().splitlines()[-1]


@pytest.mark.parametrize("fixture", ["tiny_sd", "tiny_sdxl"])
def test_a_lora_run_saves_the_rows_beside_its_adapter_and_generate_loads_them(fixture, photos, tmp_path, request):
    from dreambooth.core.generate import open_model
    from dreambooth.export.names import EMBEDDINGS, WEIGHTS
    model_dir = request.getfixturevalue(fixture)
    out = tmp_path / "lora"
    assert main(["train", f"--model={model_dir}", f"--instance-data-dir={photos}", f"--output-dir={out}", "--lora",
                 "--train_text_encoder_ti"] + FAST) == 0
    assert (out / WEIGHTS).is_file() and (out / EMBEDDINGS).is_file()
    identifier = json.loads((out / "identifier.json").read_text())["identifier"]
    model, _ = open_model(str(out))                                      # the LoRA folder: base + adapter + rows
    saved = load_file(out / EMBEDDINGS)
    assert set(saved) == set(tower_files(model_dir))
    for tower, file in tower_files(model_dir).items():
        [row] = identifier_rows(model_dir, tower, identifier)
        base = load_file(file)[key_of(file)]
        assert saved[tower].shape == (1, base.shape[1]) and not torch.equal(saved[tower][0], base[row])
        table = getattr(model.pipe, tower).get_input_embeddings().weight.detach()
        torch.testing.assert_close(table[row], saved[tower][0])
        others = torch.ones(len(table), dtype=torch.bool)
        others[row] = False
        assert torch.equal(table[others], base[others])


@pytest.mark.parametrize("fixture", ["tiny_sd", "tiny_sdxl"])
def test_the_kohya_layout_brings_the_rows_as_a_webui_embedding(fixture, photos, tmp_path, request):
    """--output_kohya_format: the rows also go out as A1111's textual-inversion file, named after the
    identifier, which diffusers' own textual-inversion loader (an independent reader) turns into the
    same text encodings as our loaded LoRA folder gives the identifier."""
    from diffusers import DiffusionPipeline

    from dreambooth.core.generate import open_model
    from dreambooth.export.names import weight_files
    model_dir = request.getfixturevalue(fixture)
    out = tmp_path / "lora"
    assert main(["train", f"--model={model_dir}", f"--instance-data-dir={photos}", f"--output-dir={out}", "--lora",
                 "--train_text_encoder_ti", "--output-kohya-format"] + FAST) == 0
    identifier = json.loads((out / "identifier.json").read_text())["identifier"]
    webui = out / f"{identifier}.safetensors"
    assert webui in weight_files(out)
    saved = load_file(webui)
    keys = {"text_encoder": "emb_params"} if fixture == "tiny_sd" else {"text_encoder": "clip_l",
                                                                         "text_encoder_2": "clip_g"}
    assert set(saved) == set(keys.values())
    base = DiffusionPipeline.from_pretrained(model_dir)
    if fixture == "tiny_sd":
        base.load_textual_inversion(str(webui), token="<webui>")              # A1111's 'emb_params' file
    else:
        for tower, key in keys.items():
            base.load_textual_inversion(saved[key], token="<webui>", text_encoder=getattr(base, tower),
                                        tokenizer=getattr(base, tower.replace("text_encoder", "tokenizer")))
    ours, _ = open_model(str(out))
    for tower in keys:
        def encode(pipe, word):
            tok = getattr(pipe, tower.replace("text_encoder", "tokenizer"))
            return getattr(pipe, tower)(tok(f"a photo of {word} dog", return_tensors="pt").input_ids)[0]
        with torch.no_grad():
            webui_read, ours_read = encode(base, "<webui>"), encode(ours.pipe, identifier)
            torch.testing.assert_close(webui_read, ours_read)
            assert not torch.allclose(encode(base, identifier), ours_read)       # the rows did learn
