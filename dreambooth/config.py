"""The typed configuration tree: the single source of truth for a training run.

Defaults < config file (YAML) < command-line flags. Every field's `help` drives the CLI, and the
resolved tree is written beside every output (`dreambooth.yaml`) so a run can be repeated exactly.
Field names are unique across sections, so each one is also a flat command-line flag that matches
diffusers' `train_dreambooth.py` spelling (`--instance_data_dir`, `--learning_rate`, ...).
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .errors import DreamboothError


def opt(default: Any, help: str, *, choices: tuple | None = None, aliases: tuple[str, ...] = (),
        const: Any = None, none_flag: str | None = None, at_least: float | None = None, above: float | None = None,
        at_most: float | None = None, below: float | None = None) -> Any:
    """A config field with the metadata the CLI needs. `const`: value when the flag is given bare;
    `none_flag`: an extra bare flag (e.g. --no-sr) that sets the value 'none'. Numeric fields give
    their accepted range (at_least/above, at_most/below), checked wherever a value is set."""
    bounds = {k: v for k, v in (("at_least", at_least), ("above", above), ("at_most", at_most), ("below", below))
              if v is not None}
    meta = {"help": help, "choices": choices, "aliases": aliases, "const": const, "none_flag": none_flag,
            "bounds": bounds}
    return field(default=default, metadata=meta)


SAMPLERS = ("auto", "DPMSolverMultistepScheduler", "DDPMScheduler", "DDIMScheduler", "EulerDiscreteScheduler", "model")


@dataclass
class ModelConfig:
    pretrained_model_name_or_path: str = opt(
        "", "Base model: a local diffusers pipeline folder (Stable Diffusion 1.x/2.x, SDXL, DeepFloyd IF stage I, "
        "or a micro-world model), a single-file SD/SDXL .safetensors checkpoint (see original_config), or a hub id "
        "already in the local cache. Default: the micro world's base model "
        "(dreambooth/world/models/base).", aliases=("--model",))
    sr_model: str = opt(
        "auto", "Step (b): a super-resolution pipeline (IF stage II, SD x4 upscaler, micro-world SR) fine-tuned "
        "after the base model, into OUTPUT_DIR/sr/, with the same identifier, prompts, seed and class images. "
        "'auto': the micro world's SR model when --model is not given, else none; 'none' (or --no-sr): base only.",
        none_flag="--no-sr")
    revision: str | None = opt(None, "Hub revision of the base model (only with a hub id).")
    variant: str | None = opt(None, "Weight variant to load, e.g. 'fp16' for diffusion_pytorch_model.fp16.safetensors.")
    tokenizer_name: str | None = opt(None, "Load the tokenizer from this folder instead of the model's tokenizer/.")
    pretrained_vae_model_name_or_path: str | None = opt(
        None, "Use this VAE folder instead of the model's vae/ (e.g. an fp16-safe SDXL VAE); it is also the VAE "
        "of the exported pipeline. Latents are encoded once, in fp32, whichever VAE it is.")
    original_config: str | None = opt(
        None, "For a single-file --model (.safetensors in the original SD / SDXL layout): a diffusers pipeline folder "
        "of the same architecture whose config files describe it (its weights are not read), or the model's "
        "original YAML (v1-inference.yaml, sd_xl_base.yaml). Needed offline: diffusers otherwise fetches it.")


@dataclass
class DataConfig:
    instance_data_dir: str = opt("", "Folder with the 3-5 photos of the subject.")
    class_name: str | None = opt(None, "The subject's class noun ('dog'); builds 'a photo of [V] dog' and "
                                       "'a photo of dog' when the prompts are not given.")
    identifier: str | None = opt(None, "The rare token [V] bound to the subject. Default: chosen from the "
                                       "model's own tokenizer (a rare single token, as in the paper §4.2).")
    instance_prompt: str | None = opt(None, "Prompt for the subject photos. Default: 'a photo of [V] <class_name>'.")
    caption_extension: str | None = opt(
        None, "Train each photo on the prompt in the text file beside it with this extension (dog1.jpg + "
        "dog1.txt, as kohya sd-scripts and OneTrainer read captions), e.g. .txt. Write the identifier as [V]: "
        "'a photo of [V] dog on a lawn'. Naming what the photos share besides the subject (the same lawn) keeps "
        "it out of [V]. Photos without a caption use the instance prompt. Default: every photo uses the "
        "instance prompt.")
    caption_dropout_rate: float = opt(
        0.0, "Share of training examples (photos and class images) whose prompt is replaced by the empty "
        "prompt, as kohya sd-scripts' --caption_dropout_rate: it keeps training the unconditional prediction "
        "that classifier-free guidance subtracts, which fine-tuning otherwise leaves to drift.", at_least=0,
        below=1, aliases=("--caption_dropout_probability",))
    resolution: int | None = opt(None, "Training resolution in pixels. Default: the model's native size.",
                                 at_least=8, at_most=8192)
    center_crop: bool = opt(False, "Center-crop photos to a square (default: random crop).")
    random_flip: bool = opt(False, "Also train on horizontally flipped photos (avoid for asymmetric subjects).")
    crops_coords_top_left_h: int | None = opt(None, "SDXL: crop top coordinate given to the UNet's time ids for every "
                                                    "view. Default: each view's real crop offset (as diffusers' "
                                                    "current SDXL scripts compute it).", at_least=0)
    crops_coords_top_left_w: int | None = opt(None, "SDXL: crop left coordinate for the time ids (see "
                                                    "crops_coords_top_left_h).", at_least=0)
    random_crop_views: int = opt(4, "With random cropping: how many fixed random crops per photo are encoded "
                                    "once and cached (so no step re-encodes an image).", at_least=1, at_most=1000)


@dataclass
class PriorConfig:
    with_prior_preservation: bool = opt(False, "Add the class-specific prior-preservation loss (paper Eq. 2).")
    class_data_dir: str | None = opt(None, "Folder of class images; missing ones are generated into it. Default: "
                                           "a cache folder keyed by (model, prompt, resolution, sampler).")
    class_prompt: str | None = opt(None, "Prompt for class images. Default: 'a photo of <class_name>'.")
    num_class_images: int = opt(100, "How many class images prior preservation uses (generated if fewer exist).",
                                 at_least=0, at_most=1_000_000)
    num_unconditional_images: int = opt(
        0, "Also preserve the unconditional prediction, the half of classifier-free guidance no prompt trains: "
           "this many of the model's own samples of the empty prompt join the class images and are trained on "
           "the empty prompt. 0: off, as diffusers. Base models only. (Measured in the micro world: more diverse "
           "class samples for some subjects, class samples closer to the subject for others; no gain over 12.)",
        at_least=0, at_most=1_000_000)
    prior_loss_weight: float = opt(1.0, "Weight of the prior-preservation loss.", at_least=0)
    sample_batch_size: int = opt(4, "Batch size for generating class images (doubled by guidance).", at_least=1)
    class_inference_steps: int = opt(25, "Sampler steps per generated class image.", at_least=1, at_most=1000)
    class_scheduler: str = opt("auto", "Sampler for class images: a diffusers scheduler class built from the "
                               "model's scheduler config, 'model' for the model's own, or 'auto': the model's own "
                               "when it clips its x0 predictions (pixel-space IF-style models), else DPM-Solver++.",
                               choices=SAMPLERS)
    class_guidance_scale: float = opt(7.5, "Classifier-free guidance for generated class images.", at_least=0)
    prior_generation_precision: str | None = opt(None, "Precision for class-image generation (default: the "
                                                       "training precision).", choices=(None, "no", "fp32", "fp16", "bf16"))


@dataclass
class OptimConfig:
    learning_rate: float = opt(5e-6, "Learning rate of the UNet.", above=0, at_most=10)
    text_encoder_lr: float | None = opt(None, "Learning rate of the text encoder, and of the identifier's embedding "
                                              "with --train_text_encoder_ti (default: learning_rate).", above=0,
                                        at_most=10)
    scale_lr: bool = opt(False, "Multiply learning rates by batch size x accumulation x processes.")
    lr_scheduler: str = opt("constant", "Learning-rate schedule.", choices=(
        "constant", "constant_with_warmup", "linear", "cosine", "cosine_with_restarts", "polynomial"))
    lr_warmup_steps: int = opt(0, "Warm-up steps of the schedule.", at_least=0)
    lr_num_cycles: int = opt(1, "Cycles for cosine_with_restarts.", at_least=1)
    lr_power: float = opt(1.0, "Power of the polynomial schedule.", above=0)
    optimizer: str = opt("adamw", "Optimizer: 'adamw' (fused AdamW; 8-bit with --use_8bit_adam) or 'prodigy' (needs "
                         "`pip install prodigyopt`; use --learning_rate 1.0 with it, as its authors advise).")
    use_8bit_adam: bool = opt(False, "Use bitsandbytes' 8-bit AdamW (needs a CUDA GPU and bitsandbytes).")
    adam_beta1: float = opt(0.9, "AdamW beta1.", at_least=0, below=1)
    adam_beta2: float = opt(0.999, "AdamW beta2.", at_least=0, below=1)
    adam_weight_decay: float = opt(1e-2, "AdamW weight decay.", at_least=0)
    adam_weight_decay_text_encoder: float | None = opt(None, "Weight decay of the text encoder(s) (default: "
                                                             "adam_weight_decay).", at_least=0)
    adam_epsilon: float = opt(1e-8, "AdamW epsilon.", above=0, at_most=1)
    # diffusers types the three Prodigy switches as values (--prodigy_decouple=True): const=True takes both forms
    prodigy_beta3: float | None = opt(None, "Prodigy: coefficient of its step-size estimate (default: sqrt(beta2)).",
                                      at_least=0, below=1)
    prodigy_decouple: bool = opt(True, "Prodigy: AdamW-style decoupled weight decay.", const=True)
    prodigy_use_bias_correction: bool = opt(True, "Prodigy: Adam's bias correction.", const=True)
    prodigy_safeguard_warmup: bool = opt(True, "Prodigy: remove the learning rate from the step-size estimate "
                                               "during warm-up.", const=True)
    max_grad_norm: float = opt(1.0, "Gradient clipping norm (0 disables).", at_least=0)


@dataclass
class TrainConfig:
    max_train_steps: int | None = opt(400, "Optimizer steps to train (overrides num_train_epochs).", at_least=1)
    num_train_epochs: int = opt(1, "Epochs over the instance photos, used only when max_train_steps is unset.",
                                 at_least=1)
    train_batch_size: int = opt(1, "Instance images per step (the same number of class images is added).",
                                 at_least=1)
    gradient_accumulation_steps: int = opt(1, "Micro-batches accumulated per optimizer step.", at_least=1)
    seed: int = opt(0, "Seed for identifier choice, class images, noise and validation.", at_least=0,
                     at_most=2**32 - 1)
    train_text_encoder: bool = opt(False, "Also fine-tune the text encoder (the paper does).")
    train_text_encoder_ti: bool = opt(False, "Pivotal tuning, as diffusers' advanced DreamBooth script: also learn the "
                                             "identifier's token embedding (at --text_encoder_lr, no weight decay), "
                                             "the rest of the text encoder frozen, so prompts without the identifier "
                                             "encode as before. With --lora the rows are saved beside the adapter "
                                             "(identifier_embeddings.safetensors); --train_text_encoder already "
                                             "includes them.")
    mixed_precision: str = opt("no", "Autocast precision; trainable weights (full weights or LoRA adapters) stay "
                                     "fp32. With --lora the frozen base weights are stored in this precision.",
                               choices=("no", "fp16", "bf16"))
    gradient_checkpointing: bool = opt(False, "Trade compute for memory in the UNet (and text encoder).")
    snr_gamma: float | None = opt(None, "Min-SNR loss weighting gamma (5.0 is usual); off when unset.", above=0)
    offset_noise: float = opt(0.0, "Offset-noise strength; the bare flag means 0.1 as in diffusers.", const=0.1,
                               at_least=0, at_most=1)
    pre_compute_text_embeddings: bool = opt(False, "Free the frozen text encoder after encoding the prompts. "
                                                   "(Embeddings are always computed once when it is frozen.)")
    text_encoder_use_attention_mask: bool | None = opt(None, "Pass the attention mask to the text encoder "
                                                             "(default: yes for T5, no for CLIP).")
    tokenizer_max_length: int | None = opt(None, "Token length for prompts (default: the tokenizer's).", at_least=1)


@dataclass
class AdapterConfig:
    lora: bool = opt(False, "Train a LoRA adapter (via peft) instead of the full weights: the base model stays frozen "
                            "and the output is pytorch_lora_weights.safetensors (diffusers layout; add "
                            "--output_kohya_format for A1111/ComfyUI). diffusers' train_dreambooth_lora*.py command "
                            "lines run as `dreambooth train --lora ...`. LoRA wants a larger --learning_rate than "
                            "full fine-tuning (diffusers' LoRA examples use 1e-4).")
    rank: int = opt(4, "LoRA rank: the inner dimension of each low-rank update.", at_least=1)
    lora_alpha: int | None = opt(None, "LoRA alpha: updates are scaled by alpha/rank. Default: the rank (scale 1), as "
                                       "diffusers' scripts.", at_least=1)
    lora_dropout: float = opt(0.0, "Dropout on the LoRA branch.", at_least=0, below=1)
    use_dora: bool = opt(False, "DoRA (weight-decomposed LoRA): also learns a magnitude per output channel.")
    lora_layers: str | None = opt(None, "UNet modules that get LoRA, comma separated peft target names. Default: "
                                        "the attention projections to_q,to_k,to_v,to_out.0 (and add_k_proj,add_v_proj "
                                        "where the UNet has them: DeepFloyd IF, the micro world's SR).")
    text_encoder_lora_layers: str | None = opt(None, "With --train_text_encoder: text-encoder modules that get LoRA. "
                                                     "Default: the attention projections (q_proj,k_proj,v_proj,out_proj "
                                                     "for CLIP; q,k,v,o for T5).")


@dataclass
class SuperResConfig:
    lowres_resolution: int | None = opt(None, "Super-resolution models: size of the low-res input made from each "
                                              "photo (default: output/4, the latent size for the x4 upscaler, or "
                                              "what a micro-world SR folder declares).", at_least=1)
    sr_noise_level: int | None = opt(None, "Super-resolution models: fixed noise-augmentation level of the low-res "
                                           "input (default: drawn per image from [0, sr_max_noise_level)).", at_least=0)
    sr_max_noise_level: int = opt(250, "Super-resolution models: upper end of the drawn augmentation levels "
                                       "(clamped to the pipeline's own maximum). 250 is IF stage II's inference "
                                       "default; not yet tuned by measurement.", at_least=1)
    sr_crop: int | None = opt(None, "Super-resolution models: train on a random square window of this many output "
                                    "pixels of each view and of its low-res input (SR3 and Imagen train their "
                                    "upsamplers on crops; the micro world's SR was pretrained on 32). A 32 window "
                                    "of a 64 px model costs about a quarter of a step. Default: whole views.",
                                    at_least=1)
    sr_max_train_steps: int | None = opt(None, "Steps of step (b) when --sr-model runs both steps "
                                               "(default: max_train_steps).", at_least=1)
    sr_learning_rate: float | None = opt(None, "UNet learning rate of step (b) when --sr-model runs both steps "
                                               "(default: learning_rate).", above=0, at_most=10)


@dataclass
class CheckpointConfig:
    checkpointing_steps: int = opt(500, "Save a resumable checkpoint every N steps.", at_least=1)
    checkpointing_minutes: float = opt(5.0, "Also save a checkpoint when this many minutes have passed since the "
                                            "last one (0: off), so a hard kill loses minutes, not hours. Such a "
                                            "checkpoint is replaced by the next one.", at_least=0)
    checkpoints_total_limit: int | None = opt(None, "Keep at most this many checkpoints (oldest removed).",
                                              at_least=1)
    resume_from_checkpoint: str | None = opt(None, "'latest' or a checkpoint folder to continue from.")


@dataclass
class ValidationConfig:
    validation_prompt: str | None = opt(None, "Prompt for validation grids ('<id>' becomes the identifier).")
    num_validation_images: int = opt(4, "Images per validation grid (fixed seeds).", at_least=1)
    validation_steps: int = opt(100, "Write a validation grid every N steps.", at_least=1)
    validation_inference_steps: int = opt(25, "Sampler steps for validation images.", at_least=1, at_most=1000)
    validation_guidance_scale: float = opt(7.5, "Classifier-free guidance for validation images.", at_least=0)
    validation_scheduler: str = opt("auto", "Sampler for validation images (as diffusers' flag; 'model' keeps the "
                                    "model's own; 'auto': see class_scheduler).", choices=SAMPLERS)


@dataclass
class OutputConfig:
    output_dir: str = opt("dreambooth-model", "Where the fine-tuned pipeline, config and checkpoints go.")
    logging_dir: str = opt("logs", "TensorBoard folder, relative to output_dir.")
    report_to: str = opt("tensorboard", "Logger: 'tensorboard' or 'none'.", choices=("tensorboard", "none"))
    output_kohya_format: bool = opt(False, "LoRA runs: also write pytorch_lora_weights_kohya.safetensors, the kohya "
                                           "key layout A1111 and ComfyUI read (Stable Diffusion and SDXL), and with "
                                           "--train_text_encoder_ti IDENTIFIER.safetensors, webui's embedding file.")
    output_single_file: bool = opt(False, "Full fine-tunes of Stable Diffusion 1.x/SDXL: also write "
                                          "OUT/OUT_NAME.safetensors (named after the output folder), one file in "
                                          "the original SD / SDXL key layout (what A1111 and ComfyUI load as a "
                                          "checkpoint).")


@dataclass
class TrainJob:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    prior: PriorConfig = field(default_factory=PriorConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    adapter: AdapterConfig = field(default_factory=AdapterConfig)
    superres: SuperResConfig = field(default_factory=SuperResConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    validation: ValidationConfig = field(default_factory=ValidationConfig)
    output: OutputConfig = field(default_factory=OutputConfig)


# --------------------------------------------------------------------------------------------
# Generic machinery: flat field index, setting values with type checks, YAML round trip.

def sections(job: Any) -> list[tuple[str, Any]]:
    return [(f.name, getattr(job, f.name)) for f in dataclasses.fields(job)]


def leaf_fields(cls: type = TrainJob) -> dict[str, tuple[str, dataclasses.Field, Any]]:
    """Flat index: field name -> (section name, field, resolved type)."""
    index = {}
    for sec in dataclasses.fields(cls):
        sec_cls = sec.default_factory  # type: ignore[misc]
        hints = typing.get_type_hints(sec_cls)
        for f in dataclasses.fields(sec_cls):
            assert f.name not in index, f"duplicate config field {f.name}"
            index[f.name] = (sec.name, f, hints[f.name])
    return index


def base_type(tp: Any) -> tuple[type, bool]:
    """(scalar type, allows None) for annotations like `int | None`."""
    args = typing.get_args(tp)
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        non_none = [a for a in args if a is not type(None)]
        return non_none[0], len(non_none) < len(args)
    return tp, False


def coerce(name: str, value: Any, tp: Any, where: str) -> Any:
    scalar, nullable = base_type(tp)
    if value is None or (isinstance(value, str) and value.lower() in ("none", "null") and nullable):
        if nullable:
            return None
        raise DreamboothError(f"{where}: '{name}' cannot be empty; give it a {scalar.__name__} value.")
    try:
        if scalar is bool:
            if isinstance(value, str):
                if value.lower() not in ("true", "false", "yes", "no", "1", "0"):
                    raise ValueError(value)
                return value.lower() in ("true", "yes", "1")
            if not isinstance(value, (bool, int)):
                raise ValueError(value)
            return bool(value)
        if scalar in (int, float) and isinstance(value, bool):
            raise ValueError(value)   # YAML `true` is not a number
        if scalar is int and isinstance(value, float) and not value.is_integer():
            raise ValueError(value)
        if scalar is not str and isinstance(value, (list, dict)):
            raise ValueError(value)
        return scalar(value)
    except (TypeError, ValueError, OverflowError):
        kind = {"int": "a whole number", "float": "a number", "bool": "true or false"}.get(scalar.__name__,
                                                                                        f"a {scalar.__name__}")
        raise DreamboothError(f"{where}: {_label(name, where)} must be {kind}, got {value!r}.") from None


def _label(name: str, where: str) -> str:
    return f"--{name}" if where == "command line" else f"'{name}'"


def accepted_range(f: dataclasses.Field, integer: bool) -> str:
    """'a whole number >= 1', 'a number > 0 and <= 10'; '' for fields without a range."""
    b = f.metadata.get("bounds") or {}
    signs = {"at_least": ">=", "above": ">", "at_most": "<=", "below": "<"}
    parts = [f"{signs[k]} {v:g}" for k, v in b.items()]
    return f"{'a whole number' if integer else 'a finite number'} {' and '.join(parts)}" if parts else ""


def check_range(name: str, value: Any, f: dataclasses.Field, tp: Any, where: str) -> None:
    """NaN, infinities and values outside the field's range are refused, naming the accepted range."""
    scalar, _ = base_type(tp)
    if value is None or scalar not in (int, float):
        return
    b = f.metadata.get("bounds") or {}
    ok = math.isfinite(value) and all(
        {"at_least": value >= v, "above": value > v, "at_most": value <= v, "below": value < v}[k] for k, v in b.items())
    if not ok:
        wanted = accepted_range(f, scalar is int) or "a finite number"
        extra = " (or leave it unset)" if base_type(tp)[1] else ""
        raise DreamboothError(f"{where}: {_label(name, where)} must be {wanted}{extra}; got {value!r}. Fix it and "
                              "run again.")


def set_field(job: TrainJob, name: str, value: Any, where: str) -> None:
    index = leaf_fields()
    if name not in index:
        close = difflib.get_close_matches(name, index, n=1)
        hint = f" Did you mean '{close[0]}'?" if close else ""
        raise DreamboothError(f"{where}: unknown setting '{name}'.{hint} "
                              "Run `dreambooth train --help` for the full list.")
    section, f, tp = index[name]
    value = coerce(name, value, tp, where)
    choices = f.metadata.get("choices")
    if choices and value not in choices:
        raise DreamboothError(f"{where}: '{name}' must be one of {[c for c in choices if c]}, got {value!r}.")
    check_range(name, value, f, tp, where)
    setattr(getattr(job, section), name, value)


def validate(job: TrainJob) -> None:
    """Every field's type and range, wherever its value came from (defaults, files, flags, code)."""
    for name, (section, f, tp) in leaf_fields().items():
        value = getattr(getattr(job, section), name)
        check_range(name, coerce(name, value, tp, "The configuration"), f, tp, "The configuration")


def to_dict(job: TrainJob) -> dict[str, dict[str, Any]]:
    return dataclasses.asdict(job)


def save_yaml(job: TrainJob, path: Path) -> None:
    from .files import write_text   # atomic: a later run reads this file back
    write_text(path, "# Resolved dreambooth configuration; rerun with `dreambooth train --config THIS_FILE`.\n"
               + yaml.safe_dump(to_dict(job), sort_keys=False))


def load_yaml(path: Path, job: TrainJob | None = None) -> TrainJob:
    """Fill `job` (or defaults) from a YAML file: nested by section, or flat like the CLI flags.
    Every problem is reported with the file, the line and the key."""
    job = job or TrainJob()
    try:
        text = Path(path).read_text()
        raw, lines = yaml.safe_load(text) or {}, _key_lines(path, text)
    except FileNotFoundError:
        raise DreamboothError(f"Config file {path} does not exist; check the path given to --config.") from None
    except (OSError, UnicodeDecodeError) as e:
        raise DreamboothError(f"Config file {path} cannot be read ({e}). Check the path given to --config.") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f", line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        what = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise DreamboothError(f"Config file {path} is not valid YAML{where}: {what}. Fix the file or drop "
                              "--config.") from None
    if not isinstance(raw, dict):
        raise DreamboothError(f"Config file {path} must hold a mapping of settings, not a {type(raw).__name__}.")
    section_names = {f.name for f in dataclasses.fields(TrainJob)}
    for key, value in raw.items():
        if key in section_names and isinstance(value, dict):
            for name, v in value.items():
                line = lines.get((str(key), str(name)), "?")
                set_field(job, str(name).replace("-", "_"), v, f"Config file {path}, line {line}")
        else:
            set_field(job, str(key).replace("-", "_"), value, f"Config file {path}, line {lines.get((str(key),), '?')}")
    return job


def _key_lines(path: Path, text: str) -> dict[tuple, int]:
    """(key,) or (section, key) -> its line number; a key given twice is an error (YAML keeps the last)."""
    lines: dict[tuple, int] = {}

    def walk(node, prefix: tuple) -> None:
        for key_node, value_node in node.value:
            key = key_node.value
            where = prefix + (key,)
            if where in lines:
                raise DreamboothError(f"Config file {path}, line {key_node.start_mark.line + 1}: '{key}' is set "
                                      f"twice (also on line {lines[where]}); keep one.")
            lines[where] = key_node.start_mark.line + 1
            if not prefix and isinstance(value_node, yaml.MappingNode):
                walk(value_node, where)

    root = yaml.compose(text, Loader=yaml.SafeLoader)
    if isinstance(root, yaml.MappingNode):
        walk(root, ())
    return lines
