"""Everything a run decides before step 1, in the order a user would check it.

Two halves, so the plan is printed before the slow part: `plan_run` makes the cheap checks (paths,
photos, flags), loads the model and decides and counts everything (prompts, class images found and
missing, what trains, steps) into a `Draft` with its `Plan`; `prepare_run` then does the expensive
one-time work (class images, encoding views and prompts). The result is a `Run`: plain tensors and
callables, so the training loop has no decisions left to make.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from PIL import Image
from accelerate import Accelerator
from accelerate.state import AcceleratorState

from .. import files
from ..config import TrainJob
from ..data.batches import BatchPlan, encode_views, make_views
from ..data.captions import normalize_extension, photo_prompts, unused_captions_note
from ..data.intake import photo_notes, read_image_folder, to_tensor
from ..errors import DreamboothError
from ..export.outputs import check_outputs, saver
from ..superres.class_pairs import step_a_class_images
from . import identifier as ident
from .class_prior import ClassPlan, draw_class_images, plan_class_prior
from .model_folder import check_resolution, resolution_multiple
from .models import Model, is_super_resolution, load_model, make_predictor, state_bytes, time_ids
from .plan import Plan
from .preflight import preflight
from .publish import finish_interrupted_export
from .text import conditioning, tower_names
from .trainable import (adapter_plan, check_bitsandbytes, check_prodigy, make_optimizer, open_trainable,
                        ready_trainable, scaled_lrs)

Tensor = torch.Tensor


@dataclass
class Settled:
    """What a run is, settled when it is planned: shared by its Draft and the Run made from it."""
    job: TrainJob
    accelerator: Accelerator
    model: Model
    output_dir: Path
    identifier: str
    instance_prompt: str
    class_prompt: str | None
    trainable: dict[str, torch.nn.Module]   # Draft: opened (adapters inserted); Run: in training form, wrapped
    max_steps: int
    plan: Plan


@dataclass
class Draft(Settled):
    """A planned run: decided and counted, nothing slow done yet (class images, encoding)."""
    views: list[Image.Image]              # the instance views, not yet encoded
    view_prompts: list[str]               # each view's prompt: its photo's caption, or the instance prompt
    class_plan: ClassPlan | None          # prior preservation on: the class images found and to generate
    lrs: dict[str, float]


@dataclass
class Run(Settled):
    # (instance rows, class rows, generator) -> x0 (B, C, h, w) and what else the UNet sees (SR: low-res),
    # indexed from views encoded once, on device
    inputs: Callable[[list[int], list[int], torch.Generator], tuple[Tensor, dict]]
    sample_inputs: dict                   # extra pipeline inputs for validation (SR: a low-res photo)
    batches: BatchPlan
    text: Callable[..., object]   # (instance views, n_class, dropped (B,)) -> (B, L, D) conditioning (SDXL: + pooled)
    optimizer: torch.optim.Optimizer
    lr_scheduler: object
    start_step: int
    class_data_dir: Path | None = None    # where the class images came from (prior preservation on)
    save: Callable[["Run"], str] | None = None   # the export (a pipeline folder, or LoRA files) -> what it wrote


def make_accelerator(job: TrainJob, output_dir: Path) -> Accelerator:
    # Precision lives in a process-wide singleton; reset it so several jobs can run in one process
    # (tests, evaluation suites). The process group (PartialState) is left alone.
    AcceleratorState._reset_state()
    try:
        acc = Accelerator(mixed_precision=job.train.mixed_precision,
                          log_with=None if job.output.report_to == "none" else job.output.report_to,
                          project_dir=str(output_dir / job.output.logging_dir))
    except ValueError as e:
        raise DreamboothError(f"--mixed_precision {job.train.mixed_precision} is not available here ({e}). "
                              "Use --mixed_precision bf16 (CPUs and recent GPUs) or no.") from None
    if acc.device.type == "cpu" and job.train.mixed_precision == "fp16":
        # accelerate would silently run fp32 while the plan says fp16
        raise DreamboothError("--mixed_precision fp16 needs a GPU: on a CPU accelerate runs it as fp32. Use "
                              "--mixed_precision bf16 (CPUs support it) or no.")
    return acc


def resolve_prompts(job: TrainJob, tokenizers: list) -> tuple[str, str, str | None, list[str]]:
    """-> (identifier, instance prompt, class prompt or None, warnings). The identifier must be a
    single rare token of every tokenizer (SDXL has two)."""
    d, p = job.data, job.prior
    warnings: list[str] = []

    def check(prompt: str, class_name: str | None) -> None:
        for tok in tokenizers:
            warnings.extend(w for w in ident.check_instance_prompt(tok, prompt, class_name, d.identifier)
                            if w not in warnings)
    if d.instance_prompt:
        check(d.instance_prompt, d.class_name)
        identifier = d.identifier or ident.find_identifier(d.instance_prompt, d.class_name) or ""
        instance_prompt = d.instance_prompt
    elif d.class_name:
        identifier = d.identifier or ident.choose_identifier(tokenizers[0], job.train.seed, also=tuple(tokenizers[1:]))
        if d.identifier:
            check(d.identifier, None)
        instance_prompt = ident.default_prompts(identifier, d.class_name)[0]
    else:
        raise DreamboothError("Say what the subject is: pass --class-name dog (the prompt 'a photo of [V] dog' is "
                              "then built with a rare identifier), or give --instance_prompt yourself.")
    class_prompt = p.class_prompt or (ident.default_prompts(identifier, d.class_name)[1] if d.class_name else None)
    if p.with_prior_preservation and not class_prompt:
        raise DreamboothError("Prior preservation needs a class prompt: pass --class_prompt 'a photo of dog' "
                              "or --class-name dog.")
    return identifier, instance_prompt, class_prompt, warnings


def setup_run(job: TrainJob) -> Run:
    return prepare_run(plan_run(job))


def plan_run(job: TrainJob) -> Draft:
    d, t = job.data, job.train
    output_dir = Path(job.output.output_dir)
    photos, lrs = check_request(job)                      # cheap checks before anything heavy
    output_dir.mkdir(parents=True, exist_ok=True)
    accelerator = make_accelerator(job, output_dir)
    if accelerator.is_main_process:   # what a killed run left: finish its export, drop its temporaries
        finish_interrupted_export(output_dir)
        files.remove_stale_temps(output_dir)
    model = load_model(job.model, d.resolution)
    check_resolution(model.resolution, resolution_multiple(model.vae and model.vae.config, model.unet.config),
                     model.source)
    check_outputs(job, model)                             # before the expensive work
    require_room_for_outputs(model, output_dir, job)
    identifier, instance_prompt, class_prompt, warnings = resolve_prompts(job, model.tokenizers)
    for w in warnings:
        accelerator.print(f"warning: {w}")
    model.pipe.to(accelerator.device)
    configure_super_resolution(model, job)
    class_plan = plan_class_prior(job, model, class_prompt, accelerator)
    trainable, params = open_trainable(model, job, identifier)

    prompts, caption_notes = photo_prompts(photos.photos, d.caption_extension, identifier, instance_prompt)
    views, source = make_views([ph.image for ph in photos.photos], model.resolution, center_crop=d.center_crop,
                               random_flip=d.random_flip, random_views=d.random_crop_views, seed=t.seed)
    max_steps = t.max_train_steps if t.max_train_steps is not None else \
        -(-t.num_train_epochs * len(views) // (t.train_batch_size * t.gradient_accumulation_steps))
    # every text tower trains at the text encoder's rate (SDXL has two)
    lrs = {n: lrs["text_encoder" if n.startswith("text_encoder") else n] for n in trainable}
    lrs = scaled_lrs(job, lrs, accelerator.num_processes)
    class_job = class_plan.images if class_plan else None
    notes = photos.notes + caption_notes + unused_captions_note(photos.photos, d.caption_extension) + \
        photo_notes(photos.photos, model.resolution) + (class_job.notes if class_job else []) + \
        unconditional_notes(class_plan)
    plan = Plan.build(job, model=model, device=str(accelerator.device), n_photos=len(photos.photos),
                      n_views=len(views), skipped=photos.skipped, notes=notes, class_job=class_job,
                      n_class_views=class_plan.n_views(job.prior.num_class_images) if class_plan else 0,
                      params=params, lrs=lrs, max_steps=max_steps, num_processes=accelerator.num_processes,
                      identifier=identifier, instance_prompt=instance_prompt,
                      class_prompt=class_prompt if class_job else None, adapter=adapter_plan(job, trainable))
    return Draft(job=job, accelerator=accelerator, model=model, output_dir=output_dir, identifier=identifier,
                 instance_prompt=instance_prompt, class_prompt=class_prompt, views=views,
                 view_prompts=[prompts[i] for i in source], class_plan=class_plan,
                 trainable=trainable, lrs=lrs, max_steps=max_steps, plan=plan)


def unconditional_notes(plan: ClassPlan | None) -> list[str]:
    u = plan.unconditional if plan else None
    return [] if u is None else u.notes + [
        f"unconditional prior: {u.wanted} samples of the empty prompt in {u.folder} ({u.found} found, "
        f"{u.missing} to generate), trained on the empty prompt among the class images"]


def prepare_run(draft: Draft) -> Run:
    job, model, accelerator, views = draft.job, draft.model, draft.accelerator, draft.views
    d, p, t = job.data, job.prior, job.train
    class_job = draft.class_plan.images if draft.class_plan else None
    # Class images first: samples of the untouched base model, drawn in eval mode (a UNet in train
    # mode with gradients enabled sampled ~37% slower here), before the trained modules change form.
    if draft.class_plan is not None:
        draw_class_images(draft.class_plan, job, model, accelerator, draft.trainable)
    trainable = ready_trainable(model, draft.trainable, job, accelerator)

    # Encode every view once; steps only index into these tensors.
    instance_x0 = encode_views(views, model.encode_images).to(accelerator.device)
    class_x0, cviews, n_prompted = instance_x0[:0], [], 0
    if class_job is not None:
        # [class images ; samples of the empty prompt]: one view each, the second kind trained unprompted
        for folder, n in ((class_job.folder, p.num_class_images),
                          *(((u.folder, u.wanted),) if (u := draft.class_plan.unconditional) else ())):
            photos = read_image_folder(folder, role="class").photos[:n]
            cviews += make_views([ph.image for ph in photos], model.resolution, center_crop=True,
                                 random_flip=d.random_flip, random_views=1, seed=t.seed)[0]
            n_prompted = n_prompted or len(cviews)
        class_x0 = encode_views(cviews, model.encode_images).to(accelerator.device)
        draft.plan.class_views = n_prompted      # as found on disk (the plan counted before drawing)
    inputs = _inputs(model, job, torch.cat([instance_x0, class_x0]), views, cviews, accelerator.device)
    # SR validation upsamples the first photo's low-res view, as a base model's sample would be upsampled.
    sample_inputs = {} if model.sr is None else {"image": [views[0].resize((model.sr.lowres,) * 2, Image.BOX)]}
    text = conditioning(model, trainable, draft.view_prompts, draft.class_prompt if class_job else None, t,
                        n_prompted=n_prompted)
    optimizer, lr_scheduler = make_optimizer(job, trainable, draft.lrs, draft.max_steps, accelerator)
    settled = {f.name: getattr(draft, f.name) for f in dataclasses.fields(Settled)} | {"trainable": trainable}
    return Run(**settled, inputs=inputs, sample_inputs=sample_inputs,
               batches=BatchPlan(len(instance_x0), len(class_x0), t.train_batch_size, t.seed),
               text=text, optimizer=optimizer, lr_scheduler=lr_scheduler, start_step=0, save=saver(job),
               class_data_dir=None if class_job is None else class_job.source or class_job.folder)


def configure_super_resolution(model: Model, job: TrainJob) -> None:
    """Apply the SR settings to a super-resolution model (nothing to do for base models)."""
    if model.sr is None:
        return
    s = job.superres
    model.sr.lowres = s.lowres_resolution or model.sr.lowres
    model.sr.fixed_level = s.sr_noise_level
    model.sr.max_level = min(s.sr_max_noise_level, model.sr.max_level)
    model.predict = make_predictor(model.unet, model.learned_variance, model.sr, model.added_cond)
    sr_window(model, s.sr_crop)       # a window that does not fit is an error now, before class images


def sr_window(model: Model, crop: int | None) -> int | None:
    """--sr_crop as a window of x0 (None: whole views); raises when it does not fit the model."""
    from ..superres.conditioning import window_size
    x0_size = model.resolution // (model.pipe.vae_scale_factor if model.latent else 1)
    return window_size(crop, model.resolution, x0_size, model.sr.lowres,
                       2 ** (len(model.unet.config.block_out_channels) - 1))


def _inputs(model: Model, job: TrainJob, x0: Tensor, views, class_views, device) -> Callable:
    """A step's inputs, one row per view, made once here like the latents: x0 (N + M views), and
    for SR models the low-res version of each view (box filter, as the base model's images are made);
    for SDXL each view's time ids (original size, crop, target size). --sr_crop cuts SR rows to one
    random window per step, the same place in x0 and in its low-res input."""
    per_view = {}
    if model.sr is not None:
        from ..superres.conditioning import downsample
        per_view["low"] = torch.cat([downsample(torch.stack([to_tensor(v) for v in vs]), model.sr.lowres)
                                     for vs in (views, class_views) if vs]).to(device)      # (N + M, 3, l, l)
    if model.added_cond:
        per_view["time_ids"] = time_ids(views + class_views, model.resolution, job.data.crops_coords_top_left_h,
                                        job.data.crops_coords_top_left_w).to(device)        # (N + M, 6)
    n = len(views)
    crop = sr_window(model, job.superres.sr_crop) if model.sr is not None else None

    def inputs(inst: list[int], cls: list[int], gen: torch.Generator) -> tuple[Tensor, dict]:
        rows = torch.tensor(inst + [n + i for i in cls], dtype=torch.long)
        extras = {k: v[rows] for k, v in per_view.items()} | ({"gen": gen} if model.sr is not None else {})
        if crop is None:
            return x0[rows], extras
        from ..superres.conditioning import random_window
        x, extras["low"] = random_window(x0[rows], extras["low"], crop, gen)
        return x, extras
    return inputs


def check_request(job: TrainJob):
    """Paths, photos and flag combinations, checked before any model is loaded.
    -> (the photo intake, learning rate per module to train)."""
    d, p, o, t = job.data, job.prior, job.optim, job.train
    preflight(job)   # settings' ranges, paths, the model folder (the CLI already ran it before its imports)
    photos = read_image_folder(Path(d.instance_data_dir), role="instance",
                               caption_extension=d.caption_extension and normalize_extension(d.caption_extension))
    if p.with_prior_preservation and is_super_resolution(job.model.pretrained_model_name_or_path):
        step_a_class_images(p)   # an SR model needs step (a)'s class images: say so before loading anything
    lrs = {"unet": o.learning_rate}
    if t.train_text_encoder or t.train_text_encoder_ti:   # rates are > 0: the config's ranges
        lrs["text_encoder"] = o.text_encoder_lr if o.text_encoder_lr is not None else o.learning_rate
    if o.use_8bit_adam:
        check_bitsandbytes()
    if o.optimizer.lower() == "prodigy":
        check_prodigy(o)
    return photos, lrs


def require_room_for_outputs(model: Model, output_dir: Path, job: TrainJob) -> None:
    """Before any heavy work: room for a checkpoint (trained weights and AdamW's two moments) and
    for the exported pipeline, which is written beside any earlier one before it replaces it. A LoRA
    run's adapter is small and not made yet: its checkpoints and export check their own size."""
    if job.adapter.lora:
        return
    trained = state_bytes([model.unet] + ([getattr(model.pipe, n) for n in tower_names(model.pipe)]
                                          if job.train.train_text_encoder else []))
    pipeline = state_bytes([m for m in model.pipe.components.values() if isinstance(m, torch.nn.Module)])
    pipeline *= 2 if job.output.output_single_file else 1
    files.require_free_space([(output_dir, 3 * trained, "a checkpoint"), (output_dir, pipeline, "the pipeline")])


def write_run_files(run: Run, folder: Path) -> None:
    """The resolved config, the identifier and the plan, into `folder` (each file atomically)."""
    from ..config import save_yaml
    # Write what was actually used, so `--config dreambooth.yaml` repeats this run even if defaults change.
    resolved = dataclasses.replace(run.job, data=dataclasses.replace(
        run.job.data, identifier=run.identifier, instance_prompt=run.instance_prompt, resolution=run.model.resolution),
        prior=dataclasses.replace(run.job.prior, class_prompt=run.class_prompt,
                                  class_data_dir=str(run.class_data_dir) if run.class_data_dir
                                  else run.job.prior.class_data_dir))
    save_yaml(resolved, folder / "dreambooth.yaml")
    files.write_json(folder / "identifier.json",
                     {"identifier": run.identifier, "class_name": run.job.data.class_name,
                      "instance_prompt": run.instance_prompt, "class_prompt": run.class_prompt})
    run.plan.save(folder)
