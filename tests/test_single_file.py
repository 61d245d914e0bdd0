"""Single-file checkpoints in the original SD / SDXL layout: written by a full fine-tune, read back by
diffusers' own `from_single_file` (with a configs-only folder, so every weight must come from the file),
and accepted as --model."""

from __future__ import annotations

import shutil

import pytest
import torch
from diffusers import DiffusionPipeline, StableDiffusionPipeline, StableDiffusionXLPipeline
from safetensors import safe_open

from dreambooth.cli import main

FAST = ["--report_to=none", "--learning-rate=1e-3", "--max-train-steps=2", "--train-text-encoder"]


def configs_only(model, dest):
    """The model's folder without a single weight: config, scheduler and tokenizer files."""
    shutil.copytree(model, dest, ignore=shutil.ignore_patterns("*.safetensors"))
    return dest


@pytest.mark.parametrize("fixture, cls", [("tiny_sd", StableDiffusionPipeline), ("tiny_sdxl", StableDiffusionXLPipeline)])
def test_full_fine_tune_round_trips_through_from_single_file(request, fixture, cls, photos, tmp_path):
    model = request.getfixturevalue(fixture)
    out = tmp_path / "dog-model"
    assert main(["train", f"--model={model}", f"--instance-data-dir={photos}", "--class-name=dog",
                 "--output-single-file", f"--output-dir={out}"] + FAST) == 0
    file = out / "dog-model.safetensors"
    with safe_open(str(file), "pt") as f:
        keys, meta = set(f.keys()), f.metadata()
    assert "model.diffusion_model.input_blocks.0.0.weight" in keys and "first_stage_model.encoder.conv_in.weight" in keys
    assert meta["dreambooth.class_name"] == "dog"
    tuned = DiffusionPipeline.from_pretrained(out)
    back = cls.from_single_file(str(file), config=str(configs_only(model, tmp_path / "cfg")))
    for name in ("unet", "vae", "text_encoder", "text_encoder_2"):
        if getattr(tuned, name, None) is None:
            continue
        a, b = getattr(tuned, name).state_dict(), getattr(back, name).state_dict()
        assert a.keys() == b.keys()
        assert all(torch.equal(a[k], b[k]) for k in a), name
    before = DiffusionPipeline.from_pretrained(model).text_encoder.state_dict()
    assert any(not torch.equal(before[k], back.text_encoder.state_dict()[k]) for k in before)   # the tuned one


def test_single_file_as_model_input(tiny_sd, photos, tmp_path, capsys):
    file = tmp_path / "base.safetensors"
    from dreambooth.export.single_file import save_single_file
    save_single_file(DiffusionPipeline.from_pretrained(tiny_sd), "sd", file)
    cfg = configs_only(tiny_sd, tmp_path / "cfg")
    out = tmp_path / "out"
    assert main(["train", f"--model={file}", f"--original-config={cfg}", f"--instance-data-dir={photos}",
                 "--class-name=dog", "--lora", "--report_to=none", "--max-train-steps=1", f"--output-dir={out}"]) == 0
    assert (out / "pytorch_lora_weights.safetensors").exists()
    # offline and without its configuration, a clear error naming the flag
    assert main(["train", f"--model={file}", f"--instance-data-dir={photos}", "--class-name=dog",
                 f"--output-dir={tmp_path / 'o2'}"]) == 2
    err = capsys.readouterr().err
    assert "--original_config" in err and "Traceback" not in err
    pickle = tmp_path / "model.ckpt"
    pickle.write_bytes(b"not opened")
    assert main(["train", f"--model={pickle}", f"--instance-data-dir={photos}", "--class-name=dog",
                 f"--output-dir={tmp_path / 'o3'}"]) == 2
    assert "pickles" in capsys.readouterr().err


def test_single_file_refused_for_other_families(tiny_if, photos, tmp_path, capsys):
    assert main(["train", f"--model={tiny_if}", f"--instance-data-dir={photos}", "--class-name=dog",
                 "--output-single-file", f"--output-dir={tmp_path / 'out'}"]) == 2
    assert "--output_single_file" in capsys.readouterr().err
