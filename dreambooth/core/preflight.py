"""The checks that need no model and no torch: every setting's range, flag combinations, the paths,
the model folder.

The CLI runs them before its heavy imports, so a wrong flag or path is refused in about a second,
and `setup_run` runs them again for callers of the library. Nothing here writes anything.
"""

from __future__ import annotations

from pathlib import Path

from ..config import TrainJob, validate
from ..data.intake import check_image_folder, check_output_dir
from ..errors import DreamboothError
from .model_folder import check_resolution, folder_resolution_multiple, locate, require_safetensors

NO_MODEL = ("", "auto", "none")


def preflight(job: TrainJob) -> None:
    validate(job)
    d, p, o, t = job.data, job.prior, job.optim, job.train
    if p.with_prior_preservation and p.num_class_images < 1:
        raise DreamboothError("--with_prior_preservation needs class images: set --num_class_images to 1 or more "
                              "(the paper uses 200; 50-100 is usual), or drop --with_prior_preservation.")
    if (t.train_text_encoder or t.train_text_encoder_ti) and t.pre_compute_text_embeddings:
        flag = "--train_text_encoder" if t.train_text_encoder else "--train_text_encoder_ti"
        raise DreamboothError("--pre_compute_text_embeddings freezes the text encoder's output, so it cannot be "
                              f"combined with {flag}. Drop one of the two.")
    if job.optim.optimizer.lower() not in ("adamw", "prodigy"):
        raise DreamboothError(f"--optimizer {job.optim.optimizer!r} is not available; choose adamw or prodigy.")
    check_adapter_flags(job)
    if not d.instance_data_dir:
        raise DreamboothError("No photos given: pass --instance_data_dir FOLDER with 3-5 photos of the subject.")
    check_image_folder(Path(d.instance_data_dir), "instance")
    if p.class_data_dir and Path(p.class_data_dir).exists():   # a class folder may be made by this run
        check_image_folder(Path(p.class_data_dir), "class")
    check_output_dir(Path(job.output.output_dir),
                     [Path(d.instance_data_dir)] + ([Path(p.class_data_dir)] if p.class_data_dir else []))
    spec = job.checkpoint.resume_from_checkpoint
    if spec and spec != "latest":
        from .checkpoint import find_checkpoint
        find_checkpoint(Path(job.output.output_dir), spec)
    for flag, source in (("--model", job.model.pretrained_model_name_or_path), ("--sr-model", job.model.sr_model)):
        if source not in NO_MODEL:
            folder = locate(source, flag, job.model.revision if flag == "--model" else None)
            if folder.is_file():   # a single-file .safetensors checkpoint: its configs come with --original_config
                continue
            require_safetensors(folder, flag)
            if flag == "--model":
                check_resolution(d.resolution, folder_resolution_multiple(folder), source)


def check_adapter_flags(job: TrainJob) -> None:
    """LoRA flag combinations that cannot work (the ones that depend on the model come in
    export/outputs.py once it loads)."""
    a, o = job.adapter, job.output
    if not a.lora:
        given = [f"--{n}" for n, v in (("rank", a.rank != 4), ("lora_alpha", a.lora_alpha), ("use_dora", a.use_dora),
                                       ("lora_dropout", a.lora_dropout), ("lora_layers", a.lora_layers),
                                       ("text_encoder_lora_layers", a.text_encoder_lora_layers),
                                       ("output_kohya_format", o.output_kohya_format)) if v]
        if given:
            raise DreamboothError(f"{', '.join(given)} only apply to LoRA training, but --lora is off. Add --lora "
                                  "(diffusers' train_dreambooth_lora*.py command lines run as `dreambooth train "
                                  "--lora ...`), or drop them to fine-tune the full weights.")
        return
    if o.output_single_file:
        raise DreamboothError("--output_single_file writes a full checkpoint, but --lora trains an adapter. For a "
                              "LoRA file that A1111 and ComfyUI load, use --output_kohya_format instead.")
    if a.use_dora and o.output_kohya_format:
        raise DreamboothError("--use_dora with --output_kohya_format: diffusers' reader of kohya files drops DoRA "
                              "magnitudes (dora_scale), so such a file could not be checked here and would load as "
                              "plain LoRA there. Use the diffusers-layout pytorch_lora_weights.safetensors (diffusers "
                              "loads its magnitudes), or drop --use_dora for a kohya file.")
    if a.use_dora and job.train.train_text_encoder:
        raise DreamboothError("--use_dora with --train_text_encoder cannot be loaded back: with transformers 5.x, "
                              "diffusers' load_lora_weights drops a text encoder's DoRA magnitudes (it re-creates "
                              "them from the base weights). Use DoRA on the UNet only (drop --train_text_encoder), "
                              "or plain LoRA (drop --use_dora) to also train the text encoder.")
