"""The committed micro-world models: present, within budget, loadable by the libraries' own classes,
producing the right shapes, and used by `dreambooth train` when no --model is given."""

from __future__ import annotations

import json

import torch
from diffusers import DiffusionPipeline
from PIL import Image
from transformers import CLIPTokenizer

from dreambooth.cli.main import main
from dreambooth.world.defaults import MODELS, WORLD_BASE, WORLD_SR
from dreambooth.world.encoders import clip_image_embeds, clip_text_embeds, instance_embeds, load_instance_encoder, load_world_clip


def test_shipped_models_are_all_there_in_safetensors_and_within_40_mb():
    for name in ("base", "sr", "clip", "instance"):
        assert (MODELS / name).is_dir(), name
    files = [p for p in MODELS.rglob("*") if p.is_file()]
    assert not [p for p in files if p.suffix in (".bin", ".pt", ".pkl", ".ckpt")]       # no pickles
    assert sum(p.stat().st_size for p in files) < 40 * 2**20
    for name in ("base", "sr"):                                                     # how they were made
        assert json.loads((MODELS / name / "pretrain.json").read_text())["kind"] == name


def test_base_and_sr_pipelines_run_in_diffusers_at_their_sizes():
    torch.set_num_threads(1)
    base, sr = DiffusionPipeline.from_pretrained(WORLD_BASE), DiffusionPipeline.from_pretrained(WORLD_SR)
    assert (type(base).__name__, type(sr).__name__) == ("IFPipeline", "IFSuperResolutionPipeline")
    g = torch.Generator().manual_seed(0)
    low = base("a red ball on the beach", num_inference_steps=2, output_type="pt", clean_caption=False,
               generator=g).images
    high = sr(image=low, prompt="a red ball on the beach", num_inference_steps=2, noise_level=50,
              output_type="pt", clean_caption=False, generator=g).images
    assert low.shape == (1, 3, 32, 32) and high.shape == (1, 3, 64, 64) and torch.isfinite(high).all()


def test_world_encoders_embed_images_and_text():
    clip, inst = load_world_clip(MODELS / "clip"), load_instance_encoder(MODELS / "instance")
    tok = CLIPTokenizer.from_pretrained(WORLD_BASE / "tokenizer")
    images = torch.rand(2, 3, 32, 32) * 2 - 1
    for emb in (clip_image_embeds(clip, images), clip_text_embeds(clip, tok, ["a ball", "a red box in the snow"]),
                instance_embeds(inst, images)):
        assert emb.shape[0] == 2 and torch.allclose(emb.norm(dim=1), torch.ones(2), atol=1e-5)


def test_train_without_a_model_personalizes_the_world_models_both_steps(tmp_path, capfd):
    torch.set_num_threads(1)
    photos = tmp_path / "photos"
    assert main(["world", "photos", "--subject", "striped_star", "-n", "3", "--out", str(photos)]) == 0
    out = tmp_path / "out"
    assert main(["train", "--instance-data-dir", str(photos), "--class-name", "star", "--output-dir", str(out),
                 "--max-train-steps", "2", "--sr-max-train-steps", "2", "--num-class-images", "2",
                 "--class-inference-steps", "2", "--validation-steps", "100"]) == 0
    assert json.loads((out / "plan.json").read_text()) and (out / "sr" / "model_index.json").exists()
    resolved = (out / "dreambooth.yaml").read_text()
    assert str(WORLD_BASE) in resolved and "with_prior_preservation: true" in resolved    # the preset applied
    grid = tmp_path / "grid.png"
    assert main(["generate", "--model", str(out), "--prompt", "a <id> star in the snow", "-n", "2",
                 "--steps", "2", "--sr-steps", "2", "--out", str(grid)]) == 0
    assert Image.open(grid).size == (128, 64)                                      # cascade: 64 px images
    printed = capfd.readouterr()
    for noise in ("requires torchvision", "Expected types for text_encoder", "Loading pipeline components"):
        assert noise not in printed.out + printed.err, noise     # nothing a user cannot act on
    assert "class images" in printed.err and "train" in printed.err    # one bar per phase
