"""What a training run writes at the end, decided at setup: a diffusers pipeline folder (full
fine-tune, optionally also a single-file checkpoint), or LoRA files (diffusers layout, optionally
kohya's). The export calls `run.save(run, folder)` with an empty staging folder, which
core/publish.py then swaps into the output folder atomically.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from ..config import TrainJob
from ..errors import DreamboothError
from ..core.embedding import save_rows, save_webui, trained_rows
from . import lora as lora_files
from .names import EMBEDDINGS, EXPORT_MARKERS, SR_HINT, has_export, single_file_name  # noqa: F401 (re-exported)

A1111_FAMILIES = ("sd", "sdxl")


def check_outputs(job: TrainJob, model) -> None:
    """Outputs that cannot exist for this model, said right after it loads (before class images)."""
    o, a = job.output, job.adapter
    wanted = [flag for flag, on in (("--output_kohya_format", o.output_kohya_format),
                                    ("--output_single_file", o.output_single_file)) if on]
    if wanted and model.family not in A1111_FAMILIES:
        raise DreamboothError(f"{' and '.join(wanted)} write the layouts A1111 and ComfyUI read, which exist for "
                              f"Stable Diffusion 1.x/2.x and SDXL; {model.source} is a {type(model.pipe).__name__}. "
                              "Drop the flag: its diffusers output (pipeline folder or pytorch_lora_weights."
                              "safetensors) is what loads it.")
    if o.output_single_file and model.family == "sd" and model.unet.config.use_linear_projection:
        raise DreamboothError("--output_single_file writes SD 1.x and SDXL checkpoints; this looks like SD 2.x "
                              "(linear attention projections), whose original layout (an OpenCLIP text tower) is "
                              "not written. Drop the flag and use the diffusers pipeline folder.")
    if a.lora and job.train.train_text_encoder and model.text_encoder.config.model_type.startswith("t5"):
        raise DreamboothError("--lora with --train_text_encoder on a T5 text encoder (DeepFloyd IF) cannot be loaded "
                              "back: diffusers' load_lora_weights reads text-encoder LoRA for CLIP encoders only. "
                              "Drop --train_text_encoder (the UNet's LoRA loads), or fine-tune the full weights.")


def saver(job: TrainJob) -> Callable:
    """-> save(run, folder): writes the run's outputs into `folder` and says what it wrote."""
    return save_adapter if job.adapter.lora else save_pipeline


def output_bytes(run) -> int:
    """About how many bytes `run.save` writes (for the free-space check before the export)."""
    import torch
    if run.job.adapter.lora:
        n = sum(q.numel() * q.element_size() for m in run.trainable.values() for q in m.parameters()
                if q.requires_grad)
        return n * (2 if run.job.output.output_kohya_format else 1)
    n = sum(t.numel() * t.element_size() for m in run.model.pipe.components.values()
            if isinstance(m, torch.nn.Module) for t in m.state_dict().values())
    return n * (2 if run.job.output.output_single_file else 1)


def save_pipeline(run, folder: Path) -> str:
    run.model.pipe.save_pretrained(folder, safe_serialization=True)
    if run.model.sr is not None:     # a fine-tuned SR keeps its low-res size and sampling for the next reader
        import json
        (Path(folder) / SR_HINT).write_text(json.dumps(run.model.sr.hint()))
    if not run.job.output.output_single_file:
        return "the fine-tuned pipeline"
    from .single_file import save_single_file
    path = Path(folder) / single_file_name(run.output_dir)
    meta = {k: v for k, v in lora_files.describe(run, run.model.family).items() if k.startswith("dreambooth.")
            and k.split(".")[1] in ("identifier", "class_name", "instance_prompt", "base_model")}
    save_single_file(run.model.pipe, run.model.family, path, meta)
    return f"the fine-tuned pipeline and the single-file checkpoint {path.name}"


def save_adapter(run, folder: Path) -> str:
    family = run.model.family
    unwrapped = {n: run.accelerator.unwrap_model(m) for n, m in run.trainable.items()}
    rows = {n: m for n, m in unwrapped.items() if trained_rows(m) is not None}   # pivotal tuning's towers
    modules = {n: m for n, m in unwrapped.items() if n not in rows}
    meta = lora_files.describe(run, family)
    written = [lora_files.save_lora(run.model.pipe, modules, Path(folder), meta)]
    if rows:
        written.append(save_rows(rows, Path(folder) / EMBEDDINGS, meta))
    if run.job.output.output_kohya_format:   # kohya's readers take the adapter and the embedding as two files
        a = run.job.adapter
        written.append(lora_files.save_kohya(modules, Path(folder) / lora_files.KOHYA, family,
                                             a.lora_alpha or a.rank, meta))
        if rows:
            written.append(save_webui(rows, run.model.pipe, run.identifier, family, Path(folder)))
    return f"the LoRA adapter ({', '.join(p.name for p in written if p)})"
