"""Whole training runs through the CLI on tiny real-architecture models (CPU, seconds each)."""

from __future__ import annotations

import json
import shutil
import shlex
from pathlib import Path

import pytest
import torch
from diffusers import DiffusionPipeline
from safetensors.torch import load_file

from dreambooth.cli import main

FAST = ["--class_inference_steps=2", "--validation_inference_steps=2", "--report_to=none"]


def unet_weights(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(folder / "unet" / "diffusion_pytorch_model.safetensors")


def diffusers_command(model: Path, photos: Path, out: Path, class_dir: Path, steps: int = 4) -> list[str]:
    """The diffusers README command, verbatim apart from paths, sizes and step counts."""
    return shlex.split(
        f"train --pretrained_model_name_or_path={model} --instance_data_dir={photos} --output_dir={out} "
        f'--instance_prompt="a photo of sks dog" --resolution=32 --train_batch_size=1 '
        f'--gradient_accumulation_steps=1 --learning_rate=5e-4 --lr_scheduler="constant" '
        f"--lr_warmup_steps=0 --max_train_steps={steps} "
        f'--with_prior_preservation --class_data_dir={class_dir} --class_prompt="a photo of dog" --num_class_images=3'
    ) + FAST


def test_diffusers_command_verbatim_with_prior_preservation(tiny_sd, photos, tmp_path, capsys):
    out, class_dir = tmp_path / "out", tmp_path / "class"
    assert main(diffusers_command(tiny_sd, photos, out, class_dir) + ["--checkpointing_steps=2"]) == 0
    printed = capsys.readouterr().out
    assert "(0 found, 3 to generate)" in printed

    # class images generated, as PNGs, with their seeds recorded
    assert sorted(p.name for p in class_dir.glob("*.png")) == [f"class_0000{i}.png" for i in range(3)]
    manifest = json.loads((class_dir / ".dreambooth_class_images.json").read_text())
    assert len(set(manifest["images"].values())) == 3

    # a diffusers pipeline folder, safetensors only, that diffusers itself loads and runs
    assert not [p for p in out.rglob("*") if p.suffix in {".bin", ".pt", ".pth", ".pkl", ".ckpt"}]
    pipe = DiffusionPipeline.from_pretrained(out)
    assert type(pipe).__name__ == "StableDiffusionPipeline"
    images = pipe("a photo of sks dog on the beach", num_inference_steps=2, output_type="np").images
    assert images.shape == (1, 32, 32, 3)

    # the UNet moved away from the base weights; the frozen VAE did not
    before, after = unet_weights(tiny_sd), unet_weights(out)
    assert any(not torch.equal(before[k], after[k]) for k in before)
    vae = "vae/diffusion_pytorch_model.safetensors"
    assert all(torch.equal(a, b) for a, b in zip(load_file(tiny_sd / vae).values(), load_file(out / vae).values()))

    # beside it: resolved config, identifier, plan, checkpoints
    assert "instance_prompt: a photo of sks dog" in (out / "dreambooth.yaml").read_text()
    assert json.loads((out / "identifier.json").read_text())["identifier"] == "sks"
    plan = json.loads((out / "plan.json").read_text())
    assert plan["steps"] == 4 and plan["trainable"]["unet"]["trainable_params"] > 0
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-2", "checkpoint-4"]


def test_class_images_are_cached_and_generation_resumes(tiny_sd, photos, tmp_path, capsys):
    common = ["train", f"--model={tiny_sd}", f"--instance-data-dir={photos}", "--class-name=dog",
              "--with-prior-preservation", "--max-train-steps=1"] + FAST
    # An interrupted generation leaves 2 of 4 images; the next run generates only the other 2.
    assert main(common + ["--num-class-images=2", f"--output-dir={tmp_path / 'a'}"]) == 0
    first = {p.name: p.read_bytes() for p in (tmp_path / "cache").rglob("class_*.png")}
    assert len(first) == 2
    assert main(common + ["--num-class-images=4", f"--output-dir={tmp_path / 'b'}"]) == 0
    assert "(2 found, 2 to generate)" in capsys.readouterr().out
    second = {p.name: p.read_bytes() for p in (tmp_path / "cache").rglob("class_*.png")}
    assert len(second) == 4 and all(second[n] == b for n, b in first.items())
    # Same model, prompt, resolution and sampler: the cache is reused, nothing generated.
    assert main(common + ["--num-class-images=4", f"--output-dir={tmp_path / 'c'}"]) == 0
    assert "(4 found, 0 to generate)" in capsys.readouterr().out


def test_resume_continues_exactly(tiny_sd, photos, tmp_path, capsys):
    args = ["train", f"--model={tiny_sd}", f"--instance-data-dir={photos}", "--class-name=dog",
            "--learning-rate=1e-3", "--with-prior-preservation", "--num-class-images=2", "--checkpointing-steps=2",
            "--lr-scheduler=linear"] + FAST
    assert main(args + [f"--output-dir={tmp_path / 'straight'}", "--max-train-steps=4"]) == 0
    # An interrupted run: all that survived is the step-2 checkpoint (and the class-image cache).
    (tmp_path / "split").mkdir()
    shutil.copytree(tmp_path / "straight" / "checkpoint-2", tmp_path / "split" / "checkpoint-2")
    capsys.readouterr()
    assert main(args + [f"--output-dir={tmp_path / 'split'}", "--max-train-steps=4",
                        "--resume-from-checkpoint=latest"]) == 0
    assert "Resumed from" in capsys.readouterr().out
    straight, split = unet_weights(tmp_path / "straight"), unet_weights(tmp_path / "split")
    base = unet_weights(tiny_sd)
    moved = max((straight[k] - base[k]).abs().max().item() for k in base)
    assert moved > 1e-4
    for k in straight:
        torch.testing.assert_close(split[k], straight[k], atol=1e-6, rtol=1e-5)
    # Resuming a finished run says so and trains nothing.
    assert main(args + [f"--output-dir={tmp_path / 'split'}", "--max-train-steps=4",
                        "--resume-from-checkpoint=latest"]) == 0
    assert "Nothing left to train" in capsys.readouterr().out


def test_text_encoder_training_with_its_own_lr(tiny_sd, photos, tmp_path):
    out = tmp_path / "out"
    assert main(["train", f"--model={tiny_sd}", f"--instance-data-dir={photos}", "--class-name=dog",
                 "--train-text-encoder", "--text-encoder-lr=1e-3", "--max-train-steps=2", "--checkpointing-steps=2",
                 f"--output-dir={out}"] + FAST) == 0
    te = "text_encoder/model.safetensors"
    before, after = load_file(tiny_sd / te), load_file(out / te)
    assert any(not torch.equal(before[k], after[k]) for k in before)
    assert (out / "checkpoint-2" / "text_encoder.safetensors").exists()
    plan = json.loads((out / "plan.json").read_text())
    assert plan["trainable"]["text_encoder"]["lr"] == 1e-3


def test_v_prediction_model_trains(tiny_sd_v, photos, tmp_path):
    out = tmp_path / "out"
    assert main(["train", f"--model={tiny_sd_v}", f"--instance-data-dir={photos}", "--class-name=dog",
                 "--max-train-steps=2", f"--output-dir={out}", "--snr_gamma=5.0", "--offset_noise"] + FAST) == 0
    assert DiffusionPipeline.from_pretrained(out).scheduler.config.prediction_type == "v_prediction"


def test_pixel_space_if_layout_trains_with_prior(tiny_if, photos, tmp_path):
    out = tmp_path / "out"
    assert main(["train", f"--model={tiny_if}", f"--instance-data-dir={photos}", "--class-name=dog",
                 "--with-prior-preservation", "--num-class-images=2", "--max-train-steps=2",
                 "--validation-prompt=a photo of <id> dog", "--validation-steps=2",
                 f"--output-dir={out}"] + FAST) == 0
    pipe = DiffusionPipeline.from_pretrained(out)
    assert type(pipe).__name__ == "IFPipeline"
    assert (out / "validation" / "step-000002.png").exists()
    before, after = unet_weights(tiny_if), unet_weights(out)
    assert any(not torch.equal(before[k], after[k]) for k in before)


def test_bf16_autocast_keeps_trainable_weights_fp32(tiny_sd, photos, tmp_path):
    out = tmp_path / "out"
    assert main(["train", f"--model={tiny_sd}", f"--instance-data-dir={photos}", "--class-name=dog",
                 "--mixed-precision=bf16", "--max-train-steps=2", f"--output-dir={out}"] + FAST) == 0
    assert all(v.dtype == torch.float32 for v in unet_weights(out).values())


def test_generate_fills_in_the_identifier(tiny_sd, photos, tmp_path):
    out = tmp_path / "out"
    assert main(["train", f"--model={tiny_sd}", f"--instance-data-dir={photos}", "--class-name=dog",
                 "--max-train-steps=1", f"--output-dir={out}"] + FAST) == 0
    grid = tmp_path / "grid.png"
    assert main(["generate", f"--model={out}", "--prompt", "a photo of <id> dog on the beach", "-n", "2",
                 "--steps", "2", "--out", str(grid)]) == 0
    from PIL import Image
    assert Image.open(grid).size == (64, 32)


def test_accelerate_launch_runs_the_module(tiny_sd, photos, tmp_path):
    """`accelerate launch -m dreambooth train ...` as users run it (one process on this machine)."""
    import subprocess
    import sys
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes=1", "--num_machines=1",
           "--mixed_precision=no", "--dynamo_backend=no", "-m", "dreambooth", "train", f"--model={tiny_sd}",
           f"--instance_data_dir={photos}", "--class_name=dog", f"--output_dir={out}", "--max_train_steps=1"] + FAST
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert (out / "model_index.json").exists() and "Saved the fine-tuned pipeline" in proc.stdout


def test_variant_weights_are_loaded(tiny_sd, photos, tmp_path):
    """--variant fp16 reads diffusion_pytorch_model.fp16.safetensors, as diffusers does."""
    variant_model = tmp_path / "variant"
    DiffusionPipeline.from_pretrained(tiny_sd).save_pretrained(variant_model, variant="fp16")
    assert (variant_model / "unet" / "diffusion_pytorch_model.fp16.safetensors").exists()
    out = tmp_path / "out"
    assert main(["train", f"--model={variant_model}", "--variant=fp16", f"--instance-data-dir={photos}",
                 "--class-name=dog", "--max-train-steps=1", f"--output-dir={out}"] + FAST) == 0


def test_tensorboard_gets_losses_and_validation_grids(tiny_sd, photos, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    out = tmp_path / "out"
    assert main(["train", f"--model={tiny_sd}", f"--instance-data-dir={photos}", "--class-name=dog",
                 "--with-prior-preservation", "--num-class-images=2", "--max-train-steps=2",
                 "--validation-prompt=a photo of <id> dog", "--validation-steps=1", "--num-validation-images=2",
                 "--class_inference_steps=2", "--validation_inference_steps=2", "--prior_generation_precision=bf16",
                 f"--output-dir={out}", "--report_to=tensorboard"]) == 0
    events = EventAccumulator(str(next((out / "logs").rglob("events.out.tfevents.*")).parent))
    events.Reload()
    assert {"loss", "loss_instance", "loss_prior", "lr"} <= set(events.Tags()["scalars"])
    assert [e.step for e in events.Images("validation")] == [1, 2]
    assert sorted(p.name for p in (out / "validation").iterdir()) == ["step-000001.png", "step-000002.png"]


def test_epochs_and_scaled_lr_set_the_schedule(tiny_sd, photos, tmp_path):
    out = tmp_path / "out"
    # 4 photos x 1 center-crop view, batch 2, 3 epochs -> 6 steps; lr scaled by batch 2.
    assert main(["train", f"--model={tiny_sd}", f"--instance-data-dir={photos}", "--class-name=dog",
                 "--max_train_steps=None", "--num_train_epochs=3", "--train_batch_size=2", "--center_crop",
                 "--scale_lr", "--learning_rate=1e-5", f"--output-dir={out}"] + FAST) == 0
    plan = json.loads((out / "plan.json").read_text())
    assert plan["steps"] == 6 and plan["trainable"]["unet"]["lr"] == 2e-5
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-6"]
