"""SDXL on a tiny random model of its real architecture (two CLIP towers, the "text_time" added
conditioning): conditioning built exactly as StableDiffusionXLPipeline builds it, full and LoRA
DreamBooth with prior preservation, and the outputs loaded back by diffusers."""

from __future__ import annotations

import json

import torch
from diffusers import DiffusionPipeline
from PIL import Image
from safetensors.torch import load_file

from dreambooth.cli import main
from dreambooth.config import TrainJob
from dreambooth.core.identifier import is_single_token
from dreambooth.core.models import ModelConfig, load_model, time_ids
from dreambooth.core.text import conditioning
from dreambooth.data.intake import fit_square

FAST = ["--class_inference_steps=2", "--report_to=none", "--with-prior-preservation", "--num-class-images=2"]


def sample(pipe, prompt):
    pipe.set_progress_bar_config(disable=True)
    return pipe(prompt, num_inference_steps=2, generator=torch.Generator().manual_seed(0), output_type="pt").images


def test_text_conditioning_matches_the_pipeline(tiny_sdxl):
    model = load_model(ModelConfig(pretrained_model_name_or_path=str(tiny_sdxl)))
    hidden, pooled = conditioning(model, {}, ["a photo of sks dog"], "a photo of dog", TrainJob().train)([0], [0])
    ref, _, ref_pooled, _ = model.pipe.encode_prompt(["a photo of sks dog", "a photo of dog"],
                                                     do_classifier_free_guidance=False)
    assert hidden.shape[-1] == model.unet.config.cross_attention_dim    # both towers, side by side
    torch.testing.assert_close(hidden, ref)
    torch.testing.assert_close(pooled, ref_pooled)
    # a dropped caption gets the unconditional half exactly as the pipeline makes it (zeros when it forces them)
    _, neg, _, neg_pooled = model.pipe.encode_prompt(["a photo of sks dog"], do_classifier_free_guidance=True)
    hidden, pooled = conditioning(model, {}, ["a photo of sks dog"], "a photo of dog",
                                  TrainJob().train)([0], [0], torch.tensor([True, False]))
    torch.testing.assert_close(hidden[:1], neg)
    torch.testing.assert_close(pooled[:1], neg_pooled)
    torch.testing.assert_close(hidden[1:], ref[1:])
    # so does a sample of the empty prompt (--num_unconditional_images), class view 1 here
    hidden, pooled = conditioning(model, {}, ["a photo of sks dog"], "a photo of dog", TrainJob().train,
                                  n_prompted=1)([0], [1, 0])
    torch.testing.assert_close(hidden[1:2], neg)
    torch.testing.assert_close(pooled[1:2], neg_pooled)
    torch.testing.assert_close(hidden[[0, 2]], ref)


def test_time_ids_follow_each_crop():
    photo = Image.new("RGB", (120, 60))
    view = fit_square(photo, 30, crop="center")       # resized to 60x30, cut 15 px from the left
    assert time_ids([view], 30).tolist() == [[60.0, 120.0, 0.0, 15.0, 30.0, 30.0]]
    assert time_ids([view], 30, crop_h=0, crop_w=0).tolist() == [[60.0, 120.0, 0.0, 0.0, 30.0, 30.0]]
    # a generated class image at the training size: what the pipeline itself passes at inference
    assert time_ids([Image.new("RGB", (30, 30))], 30).tolist() == [[30.0, 30.0, 0.0, 0.0, 30.0, 30.0]]


def test_sdxl_full_dreambooth_with_prior(tiny_sdxl, photos, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["train", f"--model={tiny_sdxl}", f"--instance-data-dir={photos}", "--class-name=dog",
                 "--learning-rate=1e-3", "--max-train-steps=2", f"--output-dir={out}"] + FAST) == 0
    assert "(0 found, 2 to generate)" in capsys.readouterr().out
    pipe = DiffusionPipeline.from_pretrained(out)
    assert type(pipe).__name__ == "StableDiffusionXLPipeline"
    unet = "unet/diffusion_pytorch_model.safetensors"
    before, after = load_file(tiny_sdxl / unet), load_file(out / unet)
    assert any(not torch.equal(before[k], after[k]) for k in before)
    identifier = json.loads((out / "identifier.json").read_text())["identifier"]
    assert is_single_token(pipe.tokenizer, identifier) and is_single_token(pipe.tokenizer_2, identifier)


def test_sdxl_lora_with_both_text_encoders_loads_in_both_layouts(tiny_sdxl, photos, tmp_path):
    out = tmp_path / "out"
    assert main(["train", f"--model={tiny_sdxl}", f"--instance-data-dir={photos}", "--class-name=dog", "--lora",
                 "--rank=4", "--train-text-encoder", "--learning-rate=1e-2", "--max-train-steps=3",
                 "--output-kohya-format", f"--output-dir={out}"] + FAST) == 0
    plan = json.loads((out / "plan.json").read_text())
    assert set(plan["trainable"]) == {"unet", "text_encoder", "text_encoder_2"}
    keys = set(load_file(out / "pytorch_lora_weights.safetensors"))
    assert {k.split(".")[0] for k in keys} == {"unet", "text_encoder", "text_encoder_2"}
    kohya = set(load_file(out / "pytorch_lora_weights_kohya.safetensors"))
    assert {k.split("_")[1] for k in kohya} == {"unet", "te1", "te2"}
    prompt = f"a photo of {json.loads((out / 'identifier.json').read_text())['identifier']} dog"
    images = {}
    for name in ("pytorch_lora_weights.safetensors", "pytorch_lora_weights_kohya.safetensors", None):
        pipe = DiffusionPipeline.from_pretrained(tiny_sdxl)
        if name:
            pipe.load_lora_weights(str(out), weight_name=name)
        images[name] = sample(pipe, prompt)
    diffusers_layout, kohya_layout, base = images.values()
    torch.testing.assert_close(kohya_layout, diffusers_layout, atol=1e-5, rtol=1e-4)
    assert (diffusers_layout - base).abs().max() > 0.01


def test_diffusers_sdxl_lora_command_verbatim(tiny_sdxl, photos, tmp_path, capsys):
    """diffusers' train_dreambooth_lora_sdxl.py README command (paths, sizes, step counts changed; bf16 for
    fp16 on this CPU; no --push_to_hub), with its Prodigy and kohya options, plus --lora."""
    import shlex
    out = tmp_path / "out"
    argv = ["train", "--lora"] + shlex.split(
        f"--pretrained_model_name_or_path={tiny_sdxl} --instance_data_dir={photos} "
        f"--pretrained_vae_model_name_or_path={tiny_sdxl / 'vae'} --output_dir={out} --mixed_precision=bf16 "
        f'--instance_prompt="a photo of sks dog" --resolution=32 --train_batch_size=1 '
        f'--gradient_accumulation_steps=2 --learning_rate=1.0 --report_to="tensorboard" --lr_scheduler="constant" '
        f'--lr_warmup_steps=0 --max_train_steps=2 --validation_prompt="A photo of sks dog in a bucket" '
        f'--validation_epochs=25 --seed="0" --optimizer="prodigy" --adam_beta1=0.9 --adam_beta2=0.99 '
        f"--adam_weight_decay=0.01 --prodigy_safeguard_warmup=True --prodigy_use_bias_correction=True "
        f"--rank=8 --output_kohya_format --crops_coords_top_left_h=0 --crops_coords_top_left_w=0"
    ) + ["--validation_inference_steps=2"]
    pytest = __import__("pytest")
    pytest.importorskip("prodigyopt")
    assert main(argv) == 0
    assert "note: --validation_epochs is ignored" in capsys.readouterr().out
    assert (out / "pytorch_lora_weights_kohya.safetensors").exists()
    pipe = DiffusionPipeline.from_pretrained(tiny_sdxl)
    pipe.load_lora_weights(str(out))
    assert pipe.unet.peft_config["default_0"].r == 8
