"""LoRA / DoRA adapters through peft: which modules get one, and in which precision.

Decided once at setup (open_trainable calls `add_adapters`); the loop then trains whatever has
requires_grad, not knowing it is an adapter. As diffusers' LoRA scripts do, the frozen base weights
are stored in the training precision (bf16/fp16 under mixed precision: half the memory) while the
adapter weights stay fp32, so small updates are not rounded away (`store_base`, after the class
images, which are drawn with the adapters bypassed and the base as loaded).
"""

from __future__ import annotations

import contextlib

import torch
from diffusers import ModelMixin
from diffusers.training_utils import cast_training_params
from peft import LoraConfig, inject_adapter_in_model
from peft.tuners.tuners_utils import BaseTunerLayer

from ..config import AdapterConfig
from ..errors import DreamboothError

# diffusers' train_dreambooth_lora*.py defaults: every attention projection of the UNet, and
# IF-style attention's extra key/value projections of the text tokens when the UNet has them.
UNET_TARGETS = ("to_k", "to_q", "to_v", "to_out.0")
ADDED_KV_TARGETS = ("add_k_proj", "add_v_proj")
TEXT_TARGETS = {"t5": ("q", "k", "v", "o"), "clip": ("q_proj", "k_proj", "v_proj", "out_proj")}


def weight_dtype(mixed_precision: str) -> torch.dtype:
    return {"fp16": torch.float16, "bf16": torch.bfloat16}.get(mixed_precision, torch.float32)


def unet_targets(unet, spec: str | None) -> list[str]:
    if spec:
        return _split(spec)
    names = {name.rsplit(".", 1)[-1] for name, _ in unet.named_modules()}
    return list(UNET_TARGETS) + [t for t in ADDED_KV_TARGETS if t in names]


def text_targets(text_encoder, spec: str | None) -> list[str]:
    if spec:
        return _split(spec)
    return list(TEXT_TARGETS["t5" if text_encoder.config.model_type.startswith("t5") else "clip"])


def _split(spec: str) -> list[str]:
    return [s.strip() for s in spec.split(",") if s.strip()]


def lora_config(a: AdapterConfig, targets: list[str]) -> LoraConfig:
    # "gaussian" A and zero B, as diffusers' scripts: the adapter starts as an exact no-op.
    return LoraConfig(r=a.rank, lora_alpha=a.lora_alpha or a.rank, lora_dropout=a.lora_dropout, use_dora=a.use_dora,
                      init_lora_weights="gaussian", target_modules=targets)


def add_adapters(modules: dict[str, torch.nn.Module], a: AdapterConfig) -> None:
    """Insert a LoRA adapter into each module in place (the pipeline keeps sampling through them)."""
    for name, module in modules.items():
        flag = "--lora_layers" if name == "unet" else "--text_encoder_lora_layers"
        spec = a.lora_layers if name == "unet" else a.text_encoder_lora_layers
        targets = unet_targets(module, spec) if name == "unet" else text_targets(module, spec)
        try:
            insert(module, lora_config(a, targets))
        except ValueError as e:
            raise DreamboothError(f"LoRA could not be added to the {name}: {str(e).splitlines()[0][:300]} "
                                  f"Name modules it has with {flag} (comma separated, e.g. "
                                  f"{','.join(UNET_TARGETS if name == 'unet' else TEXT_TARGETS['clip'])}).") from None


def store_base(modules: dict[str, torch.nn.Module], dtype: torch.dtype) -> None:
    """The frozen base weights of these modules in `dtype`, their adapters (all that requires grad) in fp32."""
    for module in modules.values():
        if dtype != torch.float32:     # (a no-op cast still makes diffusers warn)
            module.to(dtype)
        cast_training_params(module, dtype=torch.float32)


@contextlib.contextmanager
def bypassed(modules):
    """The adapters of these modules switched off: each adapted layer returns its base layer's output
    exactly (peft), so the pipeline samples as the untouched base model. Their grads come back on exit."""
    layers = [m for module in modules for m in module.modules() if isinstance(m, BaseTunerLayer)]
    for layer in layers:
        layer.enable_adapters(False)
    try:
        yield
    finally:
        for layer in layers:
            layer.enable_adapters(True)


def insert(module: torch.nn.Module, config: LoraConfig) -> None:
    """diffusers models: their own add_adapter. Text encoders: what transformers' add_adapter does (inject
    the layers, record the config where peft's state-dict helpers look), done through peft directly because
    transformers 5.x refuses peft < 0.22 and no such release is installable here."""
    if isinstance(module, ModelMixin):
        module.add_adapter(config)
        return
    inject_adapter_in_model(config, module, adapter_name="default")
    module.peft_config = {"default": config}
