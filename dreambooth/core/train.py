"""The DreamBooth training loop: plan (printed) -> setup -> for each step: batch, loss, backward, step,
log, checkpoint, validate -> export a diffusers pipeline folder (or LoRA files).

All decisions (model family, precision, text encoder trained or cached, prior on/off) were made
in setup.py; here a step is the same few calls for every configuration.
"""

from __future__ import annotations

import contextlib
import math
import time
from pathlib import Path

import torch
from tqdm.auto import tqdm

from ..config import TrainJob
from ..errors import DreamboothError
from . import checkpoint as ckpt
from . import events
from .identifier import fill_identifier
from .interrupt import Interrupted, StopSignals, resume_command
from .losses import LossParts, add_noise, dreambooth_loss, min_snr_weights, noise_target, per_sample_mse, sample_noise
from .publish import publish
from .sample import generate, make_grid, sampler
from .setup import Run, plan_run, prepare_run, write_run_files
from ..export.outputs import has_export, output_bytes
from ..data.batches import step_generator


def train(job: TrainJob) -> Path:
    """Run a whole DreamBooth job; returns the output folder. SIGINT/SIGTERM stop it cleanly
    (interrupt.py): a checkpoint at the end of the current step, then `Interrupted`."""
    with StopSignals(Path(job.output.output_dir)) as stop:
        return _train(job, stop)


def _train(job: TrainJob, stop: StopSignals) -> Path:
    spec = job.checkpoint.resume_from_checkpoint
    # Look for the checkpoint first: a wrong path should fail before minutes of setup.
    resume_from = ckpt.find_checkpoint(Path(job.output.output_dir), spec) if spec else None
    draft = plan_run(job)
    acc = draft.accelerator
    if spec and resume_from is None:
        acc.print(f"No checkpoint in {draft.output_dir} yet; starting from step 0.")
    # The plan before the slow part (class images, encoding): a first run says at once what it will do.
    start_step = ckpt.checkpoint_step(resume_from) if resume_from is not None else 0
    acc.print(draft.plan.render())
    events.emit("plan", output_dir=str(draft.output_dir), text=draft.plan.render(), identifier=draft.identifier,
                start_step=start_step, max_steps=draft.max_steps)
    run = prepare_run(draft)
    if resume_from is not None:
        resume(run, resume_from)
    # The files describing the outputs are swapped in with them (export); an earlier export keeps its own.
    if acc.is_main_process and not has_export(run.output_dir):
        write_run_files(run, run.output_dir)
    with stop.steps():
        if run.start_step >= run.max_steps:
            acc.print(f"Nothing left to train: the checkpoint is at step {run.start_step} and max_train_steps is "
                      f"{run.max_steps}. Raise --max_train_steps to train further.")
        else:
            acc.init_trackers("dreambooth")
            loop(run, stop)
            acc.end_training()
    if acc.is_main_process:
        export(run)
    return run.output_dir


def resume(run: Run, folder: Path) -> None:
    run.start_step = ckpt.load_checkpoint(folder, {n: run.accelerator.unwrap_model(m) for n, m in
                                                   run.trainable.items()}, run.optimizer, run.lr_scheduler)
    run.accelerator.print(f"Resumed from {folder} at step {run.start_step}.")


def compute_loss(run: Run, micro_step: int) -> LossParts:
    """One micro-batch: [instance views ; class views] in a single forward pass (paper Eq. 2)."""
    inst, cls = run.batches.indices(micro_step)
    gen = step_generator(run.job.train.seed, micro_step, run.accelerator.process_index)
    x0, extras = run.inputs(inst, cls, gen)                                    # (B, C, h, w), UNet extras
    is_prior = torch.tensor([False] * len(inst) + [True] * len(cls), device=x0.device)
    sched = run.model.noise_scheduler
    alphas = sched.alphas_cumprod.to(x0.device)
    noise = sample_noise(x0.shape, gen, offset=run.job.train.offset_noise).to(x0.device)
    t = torch.randint(0, sched.config.num_train_timesteps, (x0.shape[0],), generator=gen).to(x0.device)
    dropped = torch.rand(x0.shape[0], generator=gen) < run.job.data.caption_dropout_rate     # (B,) drawn last
    cond = run.text(inst, cls, dropped)                                        # (B, L, D)
    pred = run.model.predict(add_noise(x0, noise, t, alphas), t, cond, **extras)
    target = noise_target(run.model.prediction_type, x0, noise, t, alphas)
    gamma = run.job.train.snr_gamma
    weights = min_snr_weights(t, alphas, gamma, run.model.prediction_type) if gamma else None
    return dreambooth_loss(per_sample_mse(pred, target), is_prior, run.job.prior.prior_loss_weight, weights)


def loop(run: Run, stop: StopSignals | None = None) -> None:
    acc, t, job = run.accelerator, run.job.train, run.job
    accum = t.gradient_accumulation_steps
    last_save = time.monotonic()
    params = [q for m in run.trainable.values() for q in m.parameters() if q.requires_grad]
    bar = tqdm(range(run.start_step, run.max_steps), initial=run.start_step, total=run.max_steps,
               desc="train", unit="step", disable=not acc.is_local_main_process)
    for step in bar:
        for micro in range(accum):
            # Gradients are all-reduced only on the last micro-batch of a step.
            sync = contextlib.nullcontext() if micro == accum - 1 else _no_sync(acc, run.trainable.values())
            with sync, acc.autocast():
                parts = compute_loss(run, step * accum + micro)
            acc.backward(parts.total / accum)
        if job.optim.max_grad_norm > 0:
            acc.clip_grad_norm_(params, job.optim.max_grad_norm)
        run.optimizer.step()
        run.lr_scheduler.step()
        run.optimizer.zero_grad(set_to_none=True)

        done = step + 1
        loss = parts.total.item()
        if not math.isfinite(loss):
            raise DreamboothError(f"The loss became {loss} at step {done}. Lower --learning_rate, or use "
                                  "--mixed_precision bf16 instead of fp16; checkpoints before this step are intact.")
        logs = {"loss": loss, "loss_instance": parts.instance.item(), "lr": run.lr_scheduler.get_last_lr()[0]}
        if parts.prior is not None:
            logs["loss_prior"] = parts.prior.item()
        acc.log(logs, step=done)
        bar.set_postfix(loss=f"{loss:.4f}", lr=f"{logs['lr']:.2g}")
        events.emit("step", output_dir=str(run.output_dir), step=done, max_steps=run.max_steps, **logs)
        scheduled = done % job.checkpoint.checkpointing_steps == 0 or done == run.max_steps
        minutes = job.checkpoint.checkpointing_minutes
        signum, overdue = _agree(acc, stop.requested if stop else None,
                                 minutes > 0 and time.monotonic() - last_save >= minutes * 60)
        if scheduled or signum or overdue:
            if acc.is_main_process:
                ckpt.save_checkpoint(run.output_dir, done, {n: acc.unwrap_model(m) for n, m in run.trainable.items()},
                                     run.optimizer, run.lr_scheduler, job.checkpoint.checkpoints_total_limit,
                                     interim=not scheduled)
            acc.wait_for_everyone()
            last_save = time.monotonic()
        if signum:
            raise Interrupted(signum, f"Stopped at step {done} of {run.max_steps}; checkpoint-{done} is saved in "
                                      f"{run.output_dir}. Resume with:\n  {resume_command()}")
        if job.validation.validation_prompt and (done % job.validation.validation_steps == 0 or done == run.max_steps):
            if acc.is_main_process:
                validate(run, done)


def _agree(acc, signum: int | None, overdue: bool) -> tuple[int, bool]:
    """Every process stops, or saves on the timer, at the same step: the largest signal number
    and any process's clock decide (each process may have caught the signal, or not)."""
    flags = acc.gather(torch.tensor([[signum or 0, int(overdue)]], device=acc.device)).amax(dim=0)
    return int(flags[0]), bool(flags[1])


def _no_sync(acc, modules):
    stack = contextlib.ExitStack()
    for m in modules:
        stack.enter_context(acc.no_sync(m))
    return stack


def validate(run: Run, step: int) -> Path:
    """A grid of `num_validation_images` for the validation prompt, same seeds every time."""
    v = run.job.validation
    prompt = fill_identifier(v.validation_prompt, run.identifier)
    seeds = [run.job.train.seed + i for i in range(v.num_validation_images)]
    for m in run.trainable.values():
        m.eval()
    with run.accelerator.autocast(), sampler(run.model.pipe, v.validation_scheduler):
        # one image per call when the pipeline takes an input image (SR): its batch must match the prompts
        batch = 1 if run.sample_inputs else len(seeds)
        images = [im for _, im in generate(run.model.pipe, [prompt] * len(seeds), seeds,
                                           steps=v.validation_inference_steps, guidance_scale=v.validation_guidance_scale,
                                           batch_size=batch, **run.model.sample_kwargs(), **run.sample_inputs)]
    for m in run.trainable.values():
        m.train()
    folder = run.output_dir / "validation"
    folder.mkdir(exist_ok=True)
    path = folder / f"step-{step:06d}.png"
    grid = make_grid(images)
    grid.save(path)
    events.emit("validation", output_dir=str(run.output_dir), step=step, path=str(path))
    for tracker in run.accelerator.trackers:
        if tracker.name == "tensorboard":
            import numpy as np
            tracker.writer.add_image("validation", np.asarray(grid), step, dataformats="HWC")
    return path


def export(run: Run) -> Path:
    """Write the outputs setup chose (a diffusers pipeline folder, or LoRA files; safetensors only)
    with the files that describe them, swapped in atomically over an earlier export (publish.py)."""
    for m in run.trainable.values():
        m.eval()
    said = []

    def write(folder: Path) -> None:
        said.append(run.save(run, folder))
        write_run_files(run, folder)

    last = ckpt.list_checkpoints(run.output_dir)
    kept = f"The earlier contents of {run.output_dir} are unchanged" + (
        f", and {last[-1].name} holds the trained weights: resume with `{resume_command()}` to export again."
        if last else ".")
    what = "the LoRA adapter" if run.job.adapter.lora else "the fine-tuned pipeline"
    publish(run.output_dir, write, output_bytes(run), what, kept)
    events.emit("exported", output_dir=str(run.output_dir))
    run.accelerator.print(f"Saved {said[0]} to {run.output_dir} "
                          f"(identifier {run.identifier!r}: try the prompt "
                          f"{run.instance_prompt + ' on the beach'!r})")
    return run.output_dir
