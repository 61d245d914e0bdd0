"""What a run trains and with what: the modules opened (all weights, or a LoRA adapter), then put in
training form, and the optimizer.

Opening is split in two so the plan can be printed before the class images are drawn: `open_trainable`
decides and counts (the adapters are inserted, in fp32, with the base untouched), `ready_trainable`
runs after the class images (base in training precision, train mode, accelerate's wrappers). Between
the two the pipeline still samples exactly as the base model (see `lora.bypassed`).
"""

from __future__ import annotations

import functools

import torch
from accelerate import Accelerator
from diffusers.optimization import get_scheduler

from ..config import TrainJob
from ..errors import DreamboothError
from . import lora
from .models import Model, make_predictor, parameter_report
from .identifier import is_common_word
from .embedding import identifier_token_ids, open_identifier_rows, trained_rows
from .text import TOWERS, tower_names


def open_trainable(model: Model, job: TrainJob, identifier: str) -> tuple[dict[str, torch.nn.Module], dict]:
    """Freeze everything, then open up the UNet (and text encoders): all their weights, or a LoRA
    adapter in each (--lora); with --train_text_encoder_ti alone, only the identifier's embedding rows
    of each text encoder. -> (modules, param report). Modes, precision and wrappers are left as
    loaded: `ready_trainable` sets them once the class images are drawn."""
    for module in model.pipe.components.values():
        if isinstance(module, torch.nn.Module):
            module.requires_grad_(False)
    t = job.train
    pivotal = t.train_text_encoder_ti and not t.train_text_encoder   # a trained tower trains its rows anyway
    names = ["unet"] + (tower_names(model.pipe) if t.train_text_encoder or pivotal else [])
    trainable = {name: getattr(model.pipe, name) for name in names}
    if job.adapter.lora:   # pivotal tuning's towers take no adapter: their rows train as they are
        lora.add_adapters({n: m for n, m in trainable.items() if n == "unet" or not pivotal}, job.adapter)
    else:
        for module in trainable.values():
            module.requires_grad_(True)
    if pivotal:
        if is_common_word(identifier):
            raise DreamboothError("--train_text_encoder_ti learns the identifier's embedding, but this run's "
                                  f"identifier {identifier!r} is a common word (the word before the class noun): "
                                  "learning it would change every prompt that uses it. Give --identifier (or an "
                                  "instance prompt with a rare token before the class noun), or add "
                                  "--no-train_text_encoder_ti.")
        for tok_name, name in TOWERS:
            if name in trainable:
                ids = identifier_token_ids(getattr(model.pipe, tok_name), identifier)
                if not ids:
                    raise DreamboothError("--train_text_encoder_ti learns the identifier's embedding, but this "
                                          "run's instance prompt has no identifier. Give --identifier (or an "
                                          "instance prompt with a rare token before the class noun), or add "
                                          "--no-train_text_encoder_ti.")
                open_identifier_rows(trainable[name], ids)
    params = parameter_report(trainable)
    for name, (n_train, _) in params.items():
        if n_train == 0:
            raise DreamboothError(f"The {name} was asked to train but has 0 trainable parameters.")
    return trainable, params


def ready_trainable(model: Model, trainable: dict, job: TrainJob, accelerator: Accelerator) -> dict:
    """The opened modules in training form -> the modules as the loop calls them (accelerate's wrappers)."""
    t = job.train
    if job.adapter.lora:
        towers = {n: getattr(model.pipe, n) for n in tower_names(model.pipe)}   # trained towers or not
        lora.store_base(towers | trainable, lora.weight_dtype(accelerator.mixed_precision))
    for module in trainable.values():
        module.train()
        if t.gradient_checkpointing:
            module.enable_gradient_checkpointing() if hasattr(module, "enable_gradient_checkpointing") \
                else module.gradient_checkpointing_enable()
    # Forward passes go through accelerate's wrappers (DDP under several processes) so gradients sync.
    trainable = {name: accelerator.prepare_model(m) for name, m in trainable.items()}
    model.predict = make_predictor(trainable["unet"], model.learned_variance, model.sr, model.added_cond)
    return trainable


def adapter_plan(job: TrainJob, trainable: dict) -> dict | None:
    """What the plan says about a LoRA adapter: its shape and the size of the file it becomes."""
    a = job.adapter
    if not a.lora:
        return None
    n = sum(q.numel() for m in trainable.values() for q in m.parameters() if q.requires_grad)
    return {"rank": a.rank, "alpha": a.lora_alpha or a.rank, "dora": a.use_dora, "dropout": a.lora_dropout,
            "file_mib": round(n * 4 / 2**20, 2)}   # fp32 tensors; the header adds a few KiB


def scaled_lrs(job: TrainJob, lrs: dict[str, float], num_processes: int) -> dict[str, float]:
    """The learning rate of each module as the optimizer gets it (--scale_lr: times the effective batch)."""
    t = job.train
    scale = t.train_batch_size * t.gradient_accumulation_steps * num_processes if job.optim.scale_lr else 1
    return {name: lr * scale for name, lr in lrs.items()}


def make_optimizer(job: TrainJob, trainable: dict, lrs: dict[str, float], max_steps: int, accelerator: Accelerator):
    """AdamW (or 8-bit AdamW, or Prodigy) with one parameter group per module at its (scaled) rate.
    -> (optimizer, schedule)."""
    o = job.optim
    te_decay = o.adam_weight_decay if o.adam_weight_decay_text_encoder is None else o.adam_weight_decay_text_encoder
    # Pivotal tuning's rows get no decay (as measured in session 14): the identifier keeps what it learns.
    groups = [{"params": [q for q in m.parameters() if q.requires_grad], "lr": lrs[n],
               "weight_decay": 0.0 if trained_rows(m) is not None else o.adam_weight_decay if n == "unet"
               else te_decay} for n, m in trainable.items()]
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
    return accelerator.prepare_optimizer(optimizer), lr_scheduler


def _adamw_class(eight_bit: bool):
    if not eight_bit:
        # The fused kernel (CPU and CUDA): 21 ms vs 75 ms per step on a 24.5M-parameter UNet (benchmarks).
        return functools.partial(torch.optim.AdamW, fused=True)
    import bitsandbytes as bnb
    return bnb.optim.AdamW8bit


def check_prodigy(o) -> None:
    try:
        import prodigyopt  # noqa: F401
    except ImportError:
        raise DreamboothError("--optimizer prodigy needs the prodigyopt package (`pip install prodigyopt`). Install "
                              "it, or use --optimizer adamw.") from None
    if o.learning_rate < 0.1:
        print(f"warning: Prodigy estimates the step size itself; its authors advise --learning_rate 1.0 (got "
              f"{o.learning_rate:g}), which then scales that estimate.")


def check_bitsandbytes() -> None:
    try:
        import bitsandbytes  # noqa: F401
    except ImportError:
        raise DreamboothError("--use_8bit_adam needs the bitsandbytes package (`pip install bitsandbytes`) and a "
                              "CUDA GPU. Install it, or drop the flag to use standard AdamW.") from None
    if not torch.cuda.is_available():
        raise DreamboothError("--use_8bit_adam needs a CUDA GPU; none is visible. Drop the flag on this machine.")
