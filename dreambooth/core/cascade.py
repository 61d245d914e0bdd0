"""The whole method in one command: step (a) on the base model, then step (b) on the SR model.

Which models run, and whether there is a step (b), is settled here from the config, before any
model is loaded: no --model means the micro world's models. Each step is an ordinary `train()` run
with its own resolved config saved beside its output, so the loop knows nothing about cascades.
Step (b) takes step (a)'s resolved config (identifier, prompts, class image folder, seed) and
changes only the model, the output folder (OUT/sr/), its step count and learning rate.
"""

from __future__ import annotations

import copy
import dataclasses
from pathlib import Path

from ..config import TrainJob, load_yaml
from ..errors import DreamboothError
from ..export.names import SR_SUBDIR  # noqa: F401 (step (b)'s output inside step (a)'s; re-exported)
from .models import is_super_resolution, read_model_index
from .train import train


def resolve_models(job: TrainJob) -> TrainJob:
    """A copy of `job` with the default models filled in and sr_model settled to a path or 'none'."""
    from ..world import defaults
    job = copy.deepcopy(job)
    m = job.model
    if not m.pretrained_model_name_or_path:
        base, sr = defaults.default_models(sr=m.sr_model == "auto")
        m.pretrained_model_name_or_path = str(base)
        m.sr_model = str(sr) if sr else m.sr_model
    if m.sr_model == "auto":
        m.sr_model = "none"
    return job


def train_all(job: TrainJob) -> Path:
    """`dreambooth train`: step (a), and step (b) when an SR model is given (or defaulted)."""
    job = resolve_models(job)
    sr = job.model.sr_model
    if sr == "none":
        return train(job)
    base = job.model.pretrained_model_name_or_path
    if is_super_resolution(base):
        raise DreamboothError(f"--model {base} is a super-resolution model, but --sr-model {sr} asks for a cascade "
                              "whose first step needs a base text-to-image model. Pass the base model as --model, "
                              "or fine-tune the SR model alone with `dreambooth train-sr --model ...`.")
    require_super_resolution(sr, "--sr-model")
    out = train(job)
    return train(sr_step(job, out))


def train_sr(job: TrainJob) -> Path:
    """`dreambooth train-sr`: fine-tune one super-resolution model (default: the micro world's)."""
    if job.model.sr_model not in ("auto", "none"):
        raise DreamboothError("`dreambooth train-sr` fine-tunes the one SR model given by --model; --sr-model "
                              "belongs to `dreambooth train --model BASE --sr-model SR`, which runs both steps.")
    job = copy.deepcopy(job)
    if not job.model.pretrained_model_name_or_path:
        from ..world import defaults
        job.model.pretrained_model_name_or_path = str(defaults.default_models(base=False)[1])
    job.model.sr_model = "none"
    require_super_resolution(job.model.pretrained_model_name_or_path, "--model")
    return train(job)


def require_super_resolution(source: str, flag: str) -> None:
    if is_super_resolution(source) is False:
        kind = read_model_index(Path(source)).get("_class_name", "a base pipeline")
        raise DreamboothError(f"{flag} {source} is a base text-to-image model ({kind}), not a super-resolution "
                              "model (DeepFloyd IF stage II, the SD x4 upscaler, or the micro world's SR). "
                              "Fine-tune a base model with `dreambooth train --model ...`; run both steps with "
                              "`dreambooth train --model BASE --sr-model SR`.")


def sr_step(job: TrainJob, out: Path) -> TrainJob:
    """Step (b)'s config: step (a)'s resolved one (same identifier, prompts, seed and class images) on
    the SR model, into OUT/sr/, with its own steps and learning rate."""
    a = load_yaml(out / "dreambooth.yaml")
    s, r = job.superres, dataclasses.replace
    spec = job.checkpoint.resume_from_checkpoint
    return r(a,
             model=r(a.model, pretrained_model_name_or_path=a.model.sr_model, sr_model="none", revision=None),
             data=r(a.data, resolution=None),   # the SR model's own output size
             train=r(a.train, max_train_steps=s.sr_max_train_steps or a.train.max_train_steps),
             optim=r(a.optim, learning_rate=s.sr_learning_rate or a.optim.learning_rate),
             superres=s,     # this command's SR settings (--sr_crop, noise levels), as for steps and rate
             # its class pairs come from step (a)'s class images; empty-prompt samples are step (a)'s alone
             prior=r(a.prior, num_unconditional_images=0),
             # a checkpoint folder named for step (a) means nothing to step (b): it resumes its own latest
             checkpoint=r(a.checkpoint, resume_from_checkpoint="latest" if spec else None),
             # A1111 / ComfyUI layouts exist for base SD / SDXL models, not for SR models
             output=r(a.output, output_dir=str(out / SR_SUBDIR), output_kohya_format=False, output_single_file=False))
