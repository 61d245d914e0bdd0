"""Everything a run decides before step 1, in the order a user would check it.

Cheap checks first (paths, photos, flags), then the model, then the expensive one-time work
(class images, encoding views and prompts). The result is a `Run`: plain tensors and callables,
so the training loop has no decisions left to make.
"""

from __future__ import annotations

import contextlib
import functools
import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from PIL import Image
from accelerate import Accelerator
from accelerate.state import AcceleratorState
from diffusers.optimization import get_scheduler

from .. import files
from ..config import TrainJob
from ..data.batches import BatchPlan, encode_views, make_views
from ..data.class_images import generate_class_images, plan_class_images
from ..data.intake import photo_notes, read_image_folder, to_tensor
from ..errors import DreamboothError
from ..export.outputs import check_outputs, saver
from ..superres.class_pairs import plan_sr_class_pairs, step_a_class_images
from . import identifier as ident
from . import lora
from .model_folder import check_resolution, resolution_multiple
from .models import Model, is_super_resolution, load_model, make_predictor, parameter_report, state_bytes, time_ids
from .plan import Plan
from .preflight import preflight
from .publish import finish_interrupted_export
from .text import conditioning, tower_names
from .sample import sampler, sampler_name

Tensor = torch.Tensor


@dataclass
class Run:
    job: TrainJob
    accelerator: Accelerator
    model: Model
    output_dir: Path
    identifier: str
    instance_prompt: str
    class_prompt: str | None
    instance_x0: Tensor                   # (N_views, C, h, w) encoded instance views, on device
    class_x0: Tensor                      # (M_views, C, h, w) encoded class views (M may be 0)
    extras: Callable[[list[int], list[int], torch.Generator], dict]   # what else the UNet sees (SR: low-res)
    sample_inputs: dict                   # extra pipeline inputs for validation (SR: a low-res photo)
    batches: BatchPlan
    text: Callable[[int, int], object]    # (n_instance, n_class) -> (B, L, D) conditioning (SDXL: + pooled)
    trainable: dict[str, torch.nn.Module]
    optimizer: torch.optim.Optimizer
    lr_scheduler: object
    start_step: int
    max_steps: int
    plan: Plan
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
    d, p, t = job.data, job.prior, job.train
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
    # Class images first: they are samples of the untouched base model, drawn in eval mode
    # (a UNet in train mode with gradients enabled sampled ~37% slower here).
    class_job = prepare_class_images(job, model, class_prompt, accelerator)
    trainable, params = open_trainable(model, job, accelerator)

    # Encode every view once; steps only index into these tensors.
    views, _ = make_views([ph.image for ph in photos.photos], model.resolution, center_crop=d.center_crop,
                          random_flip=d.random_flip, random_views=d.random_crop_views, seed=t.seed)
    instance_x0 = encode_views(views, model.encode_images).to(accelerator.device)
    class_x0, cviews = instance_x0[:0], []
    if class_job is not None:
        class_photos = read_image_folder(class_job.folder, role="class").photos[: p.num_class_images]
        cviews, _ = make_views([ph.image for ph in class_photos], model.resolution, center_crop=True,
                               random_flip=d.random_flip, random_views=1, seed=t.seed)
        class_x0 = encode_views(cviews, model.encode_images).to(accelerator.device)
    extras = _extras(model, job, views, cviews, accelerator.device)
    # SR validation upsamples the first photo's low-res view, as a base model's sample would be upsampled.
    sample_inputs = {} if model.sr is None else {"image": [views[0].resize((model.sr.lowres,) * 2, Image.BOX)]}
    text = conditioning(model, trainable, instance_prompt, class_prompt if class_job else None, t)

    max_steps = t.max_train_steps if t.max_train_steps is not None else \
        -(-t.num_train_epochs * len(views) // (t.train_batch_size * t.gradient_accumulation_steps))
    # every text tower trains at the text encoder's rate (SDXL has two)
    lrs = {n: lrs["text_encoder" if n.startswith("text_encoder") else n] for n in trainable}
    lrs, optimizer, lr_scheduler = make_optimizer(job, trainable, lrs, max_steps, accelerator)
    notes = photos.notes + photo_notes(photos.photos, model.resolution) + (class_job.notes if class_job else [])
    plan = Plan.build(job, model=model, device=str(accelerator.device), n_photos=len(photos.photos),
                      n_views=len(views), skipped=photos.skipped, notes=notes, class_job=class_job,
                      n_class_views=len(class_x0),
                      params=params, lrs=lrs, max_steps=max_steps, num_processes=accelerator.num_processes,
                      identifier=identifier, instance_prompt=instance_prompt,
                      class_prompt=class_prompt if class_job else None, adapter=_adapter_plan(job, trainable))
    return Run(job=job, accelerator=accelerator, model=model, output_dir=output_dir, identifier=identifier,
               instance_prompt=instance_prompt, class_prompt=class_prompt, instance_x0=instance_x0,
               class_x0=class_x0, extras=extras, sample_inputs=sample_inputs, batches=BatchPlan(len(instance_x0), len(class_x0), t.train_batch_size, t.seed),
               text=text, trainable=trainable, optimizer=optimizer, lr_scheduler=lr_scheduler, start_step=0,
               max_steps=max_steps, plan=plan, save=saver(job),
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


def _extras(model: Model, job: TrainJob, views, class_views, device) -> Callable:
    """Per-batch inputs beyond (x_t, t, text), one row per view, made once here like the latents:
    for SR models the low-res version of each view (box filter, as the base model's images are made);
    for SDXL each view's time ids (original size, crop, target size)."""
    per_view = {}
    if model.sr is not None:
        from ..superres.conditioning import downsample
        per_view["low"] = torch.cat([downsample(torch.stack([to_tensor(v) for v in vs]), model.sr.lowres)
                                     for vs in (views, class_views) if vs]).to(device)      # (N + M, 3, l, l)
    if model.added_cond:
        per_view["time_ids"] = time_ids(views + class_views, model.resolution, job.data.crops_coords_top_left_h,
                                        job.data.crops_coords_top_left_w).to(device)        # (N + M, 6)
    n = len(views)

    def extras(inst: list[int], cls: list[int], gen: torch.Generator) -> dict:
        rows = torch.tensor(inst + [n + i for i in cls], dtype=torch.long)
        return {k: v[rows] for k, v in per_view.items()} | ({"gen": gen} if model.sr is not None else {})
    return extras


def check_request(job: TrainJob):
    """Paths, photos and flag combinations, checked before any model is loaded.
    -> (the photo intake, learning rate per module to train)."""
    d, p, o, t = job.data, job.prior, job.optim, job.train
    preflight(job)   # settings' ranges, paths, the model folder (the CLI already ran it before its imports)
    photos = read_image_folder(Path(d.instance_data_dir), role="instance")
    if p.with_prior_preservation and is_super_resolution(job.model.pretrained_model_name_or_path):
        step_a_class_images(p)   # an SR model needs step (a)'s class images: say so before loading anything
    lrs = {"unet": o.learning_rate}
    if t.train_text_encoder:   # rates are > 0: the config's ranges
        lrs["text_encoder"] = o.text_encoder_lr if o.text_encoder_lr is not None else o.learning_rate
    if o.use_8bit_adam:
        _check_bitsandbytes()
    if o.optimizer.lower() == "prodigy":
        _check_prodigy(o)
    return photos, lrs


def open_trainable(model: Model, job: TrainJob, accelerator: Accelerator):
    """Freeze everything, then open up the UNet (and text encoders): all their weights, or a LoRA
    adapter in each (--lora). -> (wrapped modules, param report)."""
    t = job.train
    for module in model.pipe.components.values():
        if isinstance(module, torch.nn.Module):
            module.requires_grad_(False)
    names = ["unet"] + (tower_names(model.pipe) if t.train_text_encoder else [])
    trainable = {name: getattr(model.pipe, name) for name in names}
    if job.adapter.lora:
        dtype = lora.weight_dtype(accelerator.mixed_precision)
        if dtype != torch.float32:      # the frozen base (trained towers or not) in training precision
            for name in tower_names(model.pipe):
                getattr(model.pipe, name).to(dtype)
        lora.add_adapters(trainable, job.adapter, dtype)
    else:
        for module in trainable.values():
            module.requires_grad_(True)
    for module in trainable.values():
        module.train()
        if t.gradient_checkpointing:
            module.enable_gradient_checkpointing() if hasattr(module, "enable_gradient_checkpointing") \
                else module.gradient_checkpointing_enable()
    params = parameter_report(trainable)
    for name, (n_train, _) in params.items():
        if n_train == 0:
            raise DreamboothError(f"The {name} was asked to train but has 0 trainable parameters.")
    # Forward passes go through accelerate's wrappers (DDP under several processes) so gradients sync.
    trainable = {name: accelerator.prepare_model(m) for name, m in trainable.items()}
    model.predict = make_predictor(trainable["unet"], model.learned_variance, model.sr, model.added_cond)
    return trainable, params


def _adapter_plan(job: TrainJob, trainable: dict) -> dict | None:
    """What the plan says about a LoRA adapter: its shape and the size of the file it becomes."""
    a = job.adapter
    if not a.lora:
        return None
    n = sum(q.numel() for m in trainable.values() for q in m.parameters() if q.requires_grad)
    return {"rank": a.rank, "alpha": a.lora_alpha or a.rank, "dora": a.use_dora, "dropout": a.lora_dropout,
            "file_mib": round(n * 4 / 2**20, 2)}   # fp32 tensors; the header adds a few KiB


def prepare_class_images(job: TrainJob, model: Model, class_prompt: str | None, accelerator: Accelerator):
    """Find or generate the class images (the main process generates; the others wait)."""
    p = job.prior
    if not p.with_prior_preservation:
        accelerator.print("prior preservation OFF")
        if p.class_data_dir:
            accelerator.print("note: --class_data_dir is unused without --with_prior_preservation.")
        return None
    recipe = f"{sampler_name(model.pipe, p.class_scheduler)}/{p.class_inference_steps}steps/cfg{p.class_guidance_scale}"
    if model.sr is None:   # the base model samples its class images
        class_job, inputs = plan_class_images(model.source, class_prompt, p.class_data_dir, p.num_class_images,
                                              model.resolution, recipe), None
    else:                  # an SR model makes class pairs from step (a)'s class images
        class_job, inputs = plan_sr_class_pairs(p, model, class_prompt, recipe)
        accelerator.print(f"class pairs for super-resolution from the {class_job.wanted} class images in "
                          f"{class_job.source}" + (", upscaled by the untouched SR model" if inputs else ""))
    accelerator.print(f"prior preservation ON: {class_job.found} found, {class_job.missing} to generate "
                      f"in {class_job.folder}")
    for note in class_job.notes:
        accelerator.print(f"note: {note}")
    if class_job.missing and accelerator.is_main_process:
        # a generated PNG holds at most 3 bytes per pixel
        files.require_free_space([(class_job.folder, class_job.missing * 3 * model.resolution ** 2, "class images")])
        with _generation_precision(p.prior_generation_precision, accelerator), sampler(model.pipe, p.class_scheduler):
            generate_class_images(class_job, model.pipe, seed=job.train.seed, steps=p.class_inference_steps,
                                  guidance_scale=p.class_guidance_scale, batch_size=p.sample_batch_size,
                                  sampler=recipe, inputs=inputs, **model.sample_kwargs())
    accelerator.wait_for_everyone()
    return class_job


def make_optimizer(job: TrainJob, trainable: dict, lrs: dict[str, float], max_steps: int, accelerator: Accelerator):
    """AdamW (or 8-bit AdamW) with one parameter group per module. -> (effective lrs, optimizer, schedule)."""
    o, t = job.optim, job.train
    scale = t.train_batch_size * t.gradient_accumulation_steps * accelerator.num_processes if o.scale_lr else 1
    lrs = {name: lr * scale for name, lr in lrs.items()}
    te_decay = o.adam_weight_decay if o.adam_weight_decay_text_encoder is None else o.adam_weight_decay_text_encoder
    groups = [{"params": [q for q in m.parameters() if q.requires_grad], "lr": lrs[n],
               "weight_decay": o.adam_weight_decay if n == "unet" else te_decay} for n, m in trainable.items()]
    if o.optimizer.lower() == "prodigy":
        import prodigyopt
        optimizer = prodigyopt.Prodigy(groups, betas=(o.adam_beta1, o.adam_beta2), beta3=o.prodigy_beta3,
                                       weight_decay=o.adam_weight_decay, eps=o.adam_epsilon,
                                       decouple=o.prodigy_decouple, use_bias_correction=o.prodigy_use_bias_correction,
                                       safeguard_warmup=o.prodigy_safeguard_warmup)
    else:
        optimizer = _adamw_class(o.use_8bit_adam)(groups, betas=(o.adam_beta1, o.adam_beta2),
                                                  weight_decay=o.adam_weight_decay, eps=o.adam_epsilon)
    lr_scheduler = get_scheduler(o.lr_scheduler, optimizer, num_warmup_steps=o.lr_warmup_steps,
                                 num_training_steps=max_steps, num_cycles=o.lr_num_cycles, power=o.lr_power)
    return lrs, accelerator.prepare_optimizer(optimizer), lr_scheduler


def _generation_precision(precision: str | None, accelerator: Accelerator):
    """Autocast for class-image sampling: the training precision unless set separately."""
    if precision is None:
        return accelerator.autocast()
    if precision in ("no", "fp32"):
        return contextlib.nullcontext()
    dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}[precision]
    return torch.autocast(accelerator.device.type, dtype=dtype)


def _adamw_class(eight_bit: bool):
    if not eight_bit:
        # The fused kernel (CPU and CUDA): 21 ms vs 75 ms per step on a 24.5M-parameter UNet (benchmarks).
        return functools.partial(torch.optim.AdamW, fused=True)
    import bitsandbytes as bnb
    return bnb.optim.AdamW8bit


def _check_prodigy(o) -> None:
    try:
        import prodigyopt  # noqa: F401
    except ImportError:
        raise DreamboothError("--optimizer prodigy needs the prodigyopt package (`pip install prodigyopt`). Install "
                              "it, or use --optimizer adamw.") from None
    if o.learning_rate < 0.1:
        print(f"warning: Prodigy estimates the step size itself; its authors advise --learning_rate 1.0 (got "
              f"{o.learning_rate:g}), which then scales that estimate.")


def _check_bitsandbytes() -> None:
    try:
        import bitsandbytes  # noqa: F401
    except ImportError:
        raise DreamboothError("--use_8bit_adam needs the bitsandbytes package (`pip install bitsandbytes`) and a "
                              "CUDA GPU. Install it, or drop the flag to use standard AdamW.") from None
    if not torch.cuda.is_available():
        raise DreamboothError("--use_8bit_adam needs a CUDA GPU; none is visible. Drop the flag on this machine.")


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
