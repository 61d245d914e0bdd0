"""LoRA DreamBooth on tiny real-architecture models: what it trains, in which precision, what it writes,
and that diffusers' own loaders (diffusers layout, kohya layout) read it back and change the images."""

from __future__ import annotations

import json
import shlex
import shutil
import sys

import pytest
import torch
from diffusers import DiffusionPipeline
from safetensors import safe_open
from safetensors.torch import load_file

from dreambooth.cli import main
from dreambooth.config import TrainJob, set_field

FAST = ["--class_inference_steps=2", "--validation_inference_steps=2", "--report_to=none"]
LORA = "pytorch_lora_weights.safetensors"
KOHYA = "pytorch_lora_weights_kohya.safetensors"


def sample(pipe, prompt: str = "a photo of sks dog", **kwargs) -> torch.Tensor:
    pipe.set_progress_bar_config(disable=True)
    out = pipe(prompt, num_inference_steps=2, generator=torch.Generator().manual_seed(0), output_type="pt",
               **kwargs).images
    return out.float()


def lora_pipe(base, weights, **kwargs):
    pipe = DiffusionPipeline.from_pretrained(base)
    pipe.load_lora_weights(str(weights.parent), weight_name=weights.name, **kwargs)
    return pipe


def run_error(capsys, argv) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return err


def test_diffusers_lora_command_verbatim_with_prior(tiny_sd, photos, tmp_path, capsys):
    """diffusers' train_dreambooth_lora.py README command (paths, sizes and step counts changed), plus --lora."""
    out, class_dir = tmp_path / "out", tmp_path / "class"
    argv = ["train", "--lora"] + shlex.split(
        f"--pretrained_model_name_or_path={tiny_sd} --instance_data_dir={photos} --output_dir={out} "
        f'--instance_prompt="a photo of sks dog" --resolution=32 --train_batch_size=1 '
        f"--gradient_accumulation_steps=1 --checkpointing_steps=100 --learning_rate=1e-2 "
        f'--lr_scheduler="constant" --lr_warmup_steps=0 --max_train_steps=3 '
        f'--validation_prompt="A photo of sks dog in a bucket" --validation_epochs=50 --seed="0" --rank=4 '
        f'--with_prior_preservation --class_data_dir={class_dir} --class_prompt="a photo of dog" --num_class_images=2'
    ) + FAST
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "note: --validation_epochs is ignored" in printed
    assert "(0 found, 2 to generate)" in printed       # class images from the base model
    assert "adapter      LoRA rank 4, alpha 4" in printed
    # the adapter alone: no pipeline folder, no pickles
    assert (out / LORA).exists() and not (out / "model_index.json").exists() and not (out / "unet").exists()
    assert not [p for p in out.rglob("*") if p.suffix in {".bin", ".pt", ".pth", ".pkl", ".ckpt"}]
    with safe_open(str(out / LORA), "pt") as f:
        meta = f.metadata()
        keys = list(f.keys())
    assert all(k.startswith("unet.") for k in keys) and any(".lora" in k for k in keys)
    assert (meta["dreambooth.identifier"], meta["dreambooth.rank"], meta["dreambooth.alpha"]) == ("sks", "4", "4")
    assert meta["dreambooth.instance_prompt"] == "a photo of sks dog" and meta["dreambooth.base_model"] == str(tiny_sd)
    # diffusers' own loader reads it and the images change; the base folder is untouched
    base = DiffusionPipeline.from_pretrained(tiny_sd)
    assert (sample(lora_pipe(tiny_sd, out / LORA)) - sample(base)).abs().max() > 0.01
    plan = json.loads((out / "plan.json").read_text())
    assert plan["adapter"]["rank"] == 4 and plan["trainable"]["unet"]["trainable_params"] < \
        plan["trainable"]["unet"]["total_params"] / 10
    assert (out / "validation" / "step-000003.png").exists()


def test_text_encoder_lora_kohya_layout_loads_through_diffusers(tiny_sd, photos, tmp_path):
    """Text-encoder LoRA, alpha != rank, kohya layout: diffusers' kohya converter (an independent reader)
    gives the same model as the diffusers-layout file, and both differ from the base."""
    out = tmp_path / "out"
    assert main(["train", f"--model={tiny_sd}", f"--instance-data-dir={photos}", "--class-name=dog", "--lora",
                 "--rank=4", "--lora-alpha=8", "--train-text-encoder", "--text-encoder-lr=1e-2", "--learning-rate=1e-2",
                 "--max-train-steps=3", "--output-kohya-format", f"--output-dir={out}"] + FAST) == 0
    identifier = json.loads((out / "identifier.json").read_text())["identifier"]
    kohya = load_file(out / KOHYA)
    assert all(k.startswith(("lora_unet_", "lora_te_text_model_encoder_layers_")) for k in kohya)
    alphas = [v for k, v in kohya.items() if k.endswith(".alpha")]
    assert alphas and all(float(a) == 8.0 for a in alphas)          # the real alpha, not the rank
    with safe_open(str(out / KOHYA), "pt") as f:
        meta = f.metadata()
    assert (meta["ss_network_dim"], meta["ss_network_alpha"], meta["ss_base_model_version"]) == ("4", "8", "sd_v1")
    assert meta["modelspec.trigger_phrase"] == f"{identifier} dog"
    prompt = f"a photo of {identifier} dog"
    base = DiffusionPipeline.from_pretrained(tiny_sd)
    from_diffusers, from_kohya = lora_pipe(tiny_sd, out / LORA), lora_pipe(tiny_sd, out / KOHYA)
    torch.testing.assert_close(sample(from_kohya, prompt), sample(from_diffusers, prompt), atol=1e-5, rtol=1e-4)
    assert (sample(from_diffusers, prompt) - sample(base, prompt)).abs().max() > 0.01
    # the text encoder got its adapter too: its output moved
    ids = base.tokenizer(prompt, return_tensors="pt").input_ids
    assert not torch.allclose(from_kohya.text_encoder(ids)[0], base.text_encoder(ids)[0])


def test_dora_magnitudes_load_through_diffusers(tiny_sd, photos, tmp_path):
    out = tmp_path / "out"
    assert main(["train", f"--model={tiny_sd}", f"--instance-data-dir={photos}", "--class-name=dog", "--lora",
                 "--use-dora", "--learning-rate=1e-2", "--max-train-steps=2", f"--output-dir={out}"] + FAST) == 0
    saved = {k: v for k, v in load_file(out / LORA).items() if "lora_magnitude_vector" in k}
    assert saved
    pipe = lora_pipe(tiny_sd, out / LORA, adapter_name="x")
    loaded = {n: p for n, p in pipe.unet.named_parameters() if "lora_magnitude_vector.x" in n}
    assert len(loaded) == len(saved)
    for key, value in saved.items():   # read from the file, not re-created from the base weights
        module = key.removeprefix("unet.").removesuffix(".lora_magnitude_vector")
        torch.testing.assert_close(loaded[f"{module}.lora_magnitude_vector.x.weight"], value)
    base = DiffusionPipeline.from_pretrained(tiny_sd)
    assert (sample(pipe) - sample(base)).abs().max() > 0.01


def test_lora_resume_continues_exactly_from_adapter_only_checkpoints(tiny_sd, photos, tmp_path, capsys):
    args = ["train", f"--model={tiny_sd}", f"--instance-data-dir={photos}", "--class-name=dog", "--lora",
            "--train-text-encoder", "--learning-rate=1e-3", "--with-prior-preservation", "--num-class-images=2",
            "--checkpointing-steps=2", "--lr-scheduler=linear", "--max-train-steps=4"] + FAST
    assert main(args + [f"--output-dir={tmp_path / 'straight'}"]) == 0
    ckpt = tmp_path / "straight" / "checkpoint-2"
    for name in ("unet", "text_encoder"):   # the adapter only, not the frozen base
        keys = list(load_file(ckpt / f"{name}.safetensors"))
        assert keys and all("lora_" in k for k in keys)
    (tmp_path / "split").mkdir()
    shutil.copytree(ckpt, tmp_path / "split" / "checkpoint-2")
    capsys.readouterr()
    assert main(args + [f"--output-dir={tmp_path / 'split'}", "--resume-from-checkpoint=latest"]) == 0
    assert "Resumed from" in capsys.readouterr().out
    straight, split = load_file(tmp_path / "straight" / LORA), load_file(tmp_path / "split" / LORA)
    assert straight.keys() == split.keys()
    for k in straight:
        torch.testing.assert_close(split[k], straight[k], atol=1e-6, rtol=1e-5)
    # a checkpoint of another rank is refused with a message, not a shape error
    err = run_error(capsys, args + [f"--output-dir={tmp_path / 'split'}", "--resume-from-checkpoint=checkpoint-2",
                                    "--rank=8"])
    assert "other adapter weights" in err


def test_frozen_base_in_training_precision_adapters_fp32(tiny_sd, photos, tmp_path):
    from dreambooth.core.setup import setup_run
    job = TrainJob()
    for name, value in {"pretrained_model_name_or_path": str(tiny_sd), "instance_data_dir": str(photos),
                        "class_name": "dog", "lora": True, "train_text_encoder": True, "mixed_precision": "bf16",
                        "output_dir": str(tmp_path / "out"), "report_to": "none"}.items():
        set_field(job, name, value, "test")
    run = setup_run(job)
    for name in ("unet", "text_encoder"):
        params = dict(getattr(run.model.pipe, name).named_parameters())
        trained = {n: p for n, p in params.items() if p.requires_grad}
        assert trained and all("lora_" in n and p.dtype == torch.float32 for n, p in trained.items())
        assert all(p.dtype == torch.bfloat16 for n, p in params.items() if n not in trained)
    assert run.model.vae.dtype == torch.float32          # latents are encoded in fp32
    assert {n for g in run.optimizer.param_groups for n in [id(q) for q in g["params"]]} == \
        {id(q) for m in run.trainable.values() for q in m.parameters() if q.requires_grad}


def test_generate_lora_and_its_scale(tiny_sd, photos, tmp_path):
    import numpy as np
    from PIL import Image
    out = tmp_path / "out"
    assert main(["train", f"--model={tiny_sd}", f"--instance-data-dir={photos}", "--class-name=dog", "--lora",
                 "--learning-rate=1e-2", "--max-train-steps=3", f"--output-dir={out}"] + FAST) == 0
    identifier = json.loads((out / "identifier.json").read_text())["identifier"]

    def grid(prompt: str, *extra) -> np.ndarray:
        path = tmp_path / f"g{len(list(tmp_path.glob('g*.png')))}.png"
        assert main(["generate", "--prompt", prompt, "-n", "1", "--steps", "2", "--out", str(path), *extra]) == 0
        return np.asarray(Image.open(path)).astype(int)
    tuned = grid("a photo of <id> dog", f"--model={out}")      # a LoRA folder stands for its base + itself
    assert np.array_equal(tuned, grid("a photo of <id> dog", f"--model={tiny_sd}", f"--lora={out}"))
    base = grid(f"a photo of {identifier} dog", f"--model={tiny_sd}")
    assert np.abs(tuned - base).max() > 2
    assert np.array_equal(base, grid("a photo of <id> dog", f"--model={tiny_sd}", f"--lora={out}", "--lora-scale=0"))


@pytest.mark.parametrize("argv, expected", [
    (["--rank=8"], "only apply to LoRA training"),
    (["--lora", "--output-single-file"], "--output_kohya_format instead"),
    (["--lora", "--use-dora", "--train-text-encoder"], "Use DoRA on the UNet only"),
    (["--lora", "--use-dora", "--output-kohya-format"], "drops DoRA magnitudes"),
    (["--lora", "--lora-layers=nonexistent_proj"], "--lora_layers"),
    (["--optimizer=sgd"], "choose adamw or prodigy"),
])
def test_flag_combinations_that_cannot_work(tiny_sd, photos, tmp_path, capsys, argv, expected):
    err = run_error(capsys, ["train", f"--model={tiny_sd}", f"--instance-data-dir={photos}", "--class-name=dog",
                             "--max-train-steps=1", f"--output-dir={tmp_path / 'out'}", *argv] + FAST)
    assert expected in err


def test_kohya_layout_refused_for_families_without_one(tiny_if, photos, tmp_path, capsys):
    err = run_error(capsys, ["train", f"--model={tiny_if}", f"--instance-data-dir={photos}", "--class-name=dog",
                             "--lora", "--output-kohya-format", f"--output-dir={tmp_path / 'out'}"] + FAST)
    assert "IFPipeline" in err and "Drop the flag" in err


def test_prodigy_optimizer(tiny_sd, photos, tmp_path, monkeypatch, capsys):
    out = tmp_path / "out"
    args = ["train", f"--model={tiny_sd}", f"--instance-data-dir={photos}", "--class-name=dog", "--lora",
            "--optimizer=prodigy", "--learning-rate=1.0", "--max-train-steps=2", f"--output-dir={out}"] + FAST
    pytest.importorskip("prodigyopt")
    assert main(args) == 0 and (out / LORA).exists()
    monkeypatch.setitem(sys.modules, "prodigyopt", None)      # as if it were not installed
    assert "pip install prodigyopt" in run_error(capsys, args)


def test_if_layout_lora(tiny_if, photos, tmp_path, capsys):
    """DeepFloyd IF: the UNet's added key/value projections get LoRA too; a T5 text encoder cannot."""
    out = tmp_path / "out"
    args = ["train", f"--model={tiny_if}", f"--instance-data-dir={photos}", "--class-name=dog", "--lora",
            "--learning-rate=1e-2", "--max-train-steps=2", f"--output-dir={out}"] + FAST
    assert main(args) == 0
    assert any(".add_k_proj." in k for k in load_file(out / LORA))
    base = DiffusionPipeline.from_pretrained(tiny_if)
    assert (sample(lora_pipe(tiny_if, out / LORA), clean_caption=False)
            - sample(base, clean_caption=False)).abs().max() > 0.01
    assert "CLIP encoders only" in run_error(capsys, args + ["--train-text-encoder"])


def test_micro_world_cascade_lora(world, tmp_path, monkeypatch):
    """Step (a) and step (b) as LoRA runs on the world's IF-layout pixel models, prior preservation on;
    `generate --model OUT` renders base + LoRA -> SR + LoRA."""
    import numpy as np
    from PIL import Image
    from dreambooth.world.subjects import get_subject, write_photos
    write_photos(get_subject("striped_star"), 3, tmp_path / "photos", seed=0)
    out = tmp_path / "out"
    assert main(["train", f"--model={world / 'base'}", f"--sr-model={world / 'sr'}", "--lora", "--rank=4",
                 f"--instance-data-dir={tmp_path / 'photos'}", "--class-name=star", "--with-prior-preservation",
                 "--num-class-images=2", "--learning-rate=1e-2", "--max-train-steps=2", "--sr-max-train-steps=2",
                 f"--output-dir={out}"] + FAST) == 0
    for folder, model in ((out, world / "base"), (out / "sr", world / "sr")):
        assert (folder / LORA).exists() and not (folder / "model_index.json").exists()
        lora_pipe(model, folder / LORA)          # diffusers reads each one into its own pipeline

    def grid(*argv):
        path = tmp_path / f"g{len(list(tmp_path.glob('g*.png')))}.png"
        assert main(["generate", "--prompt", "a <id> star", "-n", "1", "--steps", "2", "--out", str(path),
                     *argv]) == 0
        return np.asarray(Image.open(path)).astype(int)
    tuned = grid(f"--model={out}")
    assert tuned.shape == (64, 64, 3)            # through the SR stage
    identifier = json.loads((out / "identifier.json").read_text())["identifier"]
    path = tmp_path / "plain.png"
    assert main(["generate", "--prompt", f"a {identifier} star", "-n", "1", "--steps", "2", "--out", str(path),
                 f"--model={world / 'base'}", f"--sr-model={world / 'sr'}"]) == 0
    assert np.abs(tuned - np.asarray(Image.open(path)).astype(int)).max() > 2


def test_sd_upscaler_lora(photos, tmp_path):
    """Step (b) on the SD x4 upscaler layout as a LoRA run; diffusers loads it into the upscaler pipeline."""
    from dreambooth.tiny import build_tiny_sd_upscaler
    model = build_tiny_sd_upscaler(tmp_path / "x4")
    out = tmp_path / "out"
    assert main(["train-sr", f"--model={model}", f"--instance-data-dir={photos}", "--identifier=sks",
                 "--class-name=dog", "--lora", "--learning-rate=1e-2", "--max-train-steps=2", f"--output-dir={out}"]
                + FAST) == 0
    saved = {k.removeprefix("unet."): v for k, v in load_file(out / LORA).items()}
    pipe = lora_pipe(model, out / LORA, adapter_name="x")
    loaded = dict(pipe.unet.named_parameters())
    for key, value in saved.items():       # every trained matrix, in place in the upscaler's UNet
        a_or_b = "lora_A" if ".lora.down." in key else "lora_B"
        module = key.split(".lora.")[0]
        torch.testing.assert_close(loaded[f"{module}.{a_or_b}.x.weight"], value)


def test_loading_a_unet_only_lora_says_nothing_a_user_cannot_act_on():
    """diffusers warns, for every text encoder, that a UNet-only LoRA (our default) has no keys for it.
    The command line drops that one message and keeps every other warning of the same logger."""
    import io
    import logging

    import diffusers.utils.logging as dlog

    from dreambooth.quiet import quiet_libraries
    quiet_libraries()
    handler = dlog._get_library_root_logger().handlers[0]
    stream, handler.stream = handler.stream, io.StringIO()
    try:
        logger = logging.getLogger("diffusers.loaders.lora_base")
        logger.warning("No LoRA keys associated to CLIPTextModel found with the prefix='text_encoder'. This is safe")
        logger.warning("Loading adapter weights from state_dict led to unexpected keys")
        shown = handler.stream.getvalue()
    finally:
        handler.stream = stream
    assert "No LoRA keys" not in shown and "unexpected keys" in shown
