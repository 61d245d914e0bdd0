"""Single-file checkpoints in the original Stable Diffusion / SDXL key layout (what A1111 and ComfyUI
load), written from a diffusers pipeline and read back through diffusers' `from_single_file`.

diffusers ships only the reading direction (original -> diffusers) in its package, plus the table of
fixed names `DIFFUSERS_TO_LDM_MAPPING`; the writing direction here uses that table and renames the
block-structured parts by rule. The tests check it against diffusers' reader: every tensor written
must come back to the same place.
"""

from __future__ import annotations

from pathlib import Path

import torch
from diffusers.loaders.single_file_utils import DIFFUSERS_TO_LDM_MAPPING
from safetensors import safe_open
from safetensors.torch import save_file

from ..errors import DreamboothError

Tensor = torch.Tensor
UNET, VAE = "model.diffusion_model.", "first_stage_model."
CLIP_PREFIX = {"sd": ["cond_stage_model.transformer."], "sdxl": ["conditioner.embedders.0.transformer."]}
OPEN_CLIP_SDXL = "conditioner.embedders.1.model."
RESNET = {"norm1": "in_layers.0", "conv1": "in_layers.2", "time_emb_proj": "emb_layers.1", "norm2": "out_layers.0",
          "conv2": "out_layers.3", "conv_shortcut": "skip_connection"}
VAE_ATTN = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}


def _rename_first(rest: str, table: dict[str, str]) -> str:
    for old, new in table.items():
        if rest == old or rest.startswith(old + "."):
            return new + rest[len(old):]
    return rest


def unet_to_ldm(sd: dict[str, Tensor], config) -> dict[str, Tensor]:
    """diffusers UNet2DConditionModel keys -> the original UNetModel's (input/middle/output blocks)."""
    if not isinstance(config.layers_per_block, int):
        raise DreamboothError("Single-file export needs the same number of layers in every UNet block (SD, SDXL).")
    per = config.layers_per_block + 1          # input blocks per level: L resnets + a downsampler
    table = DIFFUSERS_TO_LDM_MAPPING["unet"]
    fixed = dict(table["layers"])
    fixed.update(table["addition_embed_type"] if config.addition_embed_type else {})
    fixed.update(table["class_embed_type"] if config.class_embed_type else {})
    out = {}
    for key, value in sd.items():
        if key in fixed:
            out[UNET + fixed[key]] = value
            continue
        head, _, rest = key.partition(".")
        if head == "mid_block":
            kind, j, rest = rest.split(".", 2)
            block = {("resnets", "0"): 0, ("attentions", "0"): 1, ("resnets", "1"): 2}[(kind, j)]
            name = f"middle_block.{block}.{_rename_first(rest, RESNET) if kind == 'resnets' else rest}"
        elif head in ("down_blocks", "up_blocks"):
            i, kind, j, rest = rest.split(".", 3)
            i, j = int(i), int(j)
            if kind == "downsamplers":        # downsamplers.0.conv.* -> the level's last input block's op
                name = f"input_blocks.{(i + 1) * per}.0.op.{rest.partition('.')[2]}"
            elif kind == "upsamplers":        # after the level's last resnet (and attention, if any)
                has_attn = "CrossAttn" in config.up_block_types[i]
                name = f"output_blocks.{i * per + per - 1}.{2 if has_attn else 1}.{rest}"
            else:
                n = 1 + i * per + j if head == "down_blocks" else i * per + j
                sub, rest = (0, _rename_first(rest, RESNET)) if kind == "resnets" else (1, rest)
                name = f"{'input' if head == 'down_blocks' else 'output'}_blocks.{n}.{sub}.{rest}"
        else:
            raise DreamboothError(f"Single-file export does not know the UNet weight {key!r}.")
        out[UNET + name] = value
    return out


def vae_to_ldm(sd: dict[str, Tensor], config) -> dict[str, Tensor]:
    """diffusers AutoencoderKL keys -> the original AutoencoderKL's (down/mid/up, attention as 1x1 convs)."""
    n_up = len(config.up_block_types)
    fixed = DIFFUSERS_TO_LDM_MAPPING["vae"]
    out = {}
    for key, value in sd.items():
        if key in fixed:
            out[VAE + fixed[key]] = value
            continue
        part, head, rest = key.split(".", 2)       # encoder|decoder, block kind, the rest
        if head == "mid_block":
            kind, j, rest = rest.split(".", 2)
            if kind == "attentions":
                name = f"mid.attn_1.{_rename_first(rest, VAE_ATTN)}"
                value = value[:, :, None, None] if value.ndim == 2 else value   # linear -> 1x1 conv
            else:
                name = f"mid.block_{int(j) + 1}.{_rename_first(rest, {'conv_shortcut': 'nin_shortcut'})}"
        else:
            i, kind, rest = rest.split(".", 2)
            level = int(i) if head == "down_blocks" else n_up - 1 - int(i)   # the original decoder counts up
            stage = "down" if head == "down_blocks" else "up"
            if kind in ("downsamplers", "upsamplers"):
                name = f"{stage}.{level}.{kind[:-2]}.{rest.partition('.')[2]}"   # -> downsample / upsample
            else:
                j, rest = rest.split(".", 1)
                name = f"{stage}.{level}.block.{j}.{_rename_first(rest, {'conv_shortcut': 'nin_shortcut'})}"
        out[VAE + f"{part}.{name}"] = value
    return out


def clip_to_ldm(sd: dict[str, Tensor], prefix: str) -> dict[str, Tensor]:
    """A CLIP text encoder keeps its transformers names under the prefix (with the 'text_model.' level
    that transformers 5 no longer puts in CLIPTextModel's own keys)."""
    return {prefix + (k if k.startswith(("text_model.", "text_projection")) else "text_model." + k): v
            for k, v in sd.items()}


def open_clip_to_ldm(sd: dict[str, Tensor], prefix: str) -> dict[str, Tensor]:
    """CLIPTextModelWithProjection -> OpenCLIP's layout (SDXL's second tower): fused q/k/v, its own
    names, and the projection stored transposed."""
    table = DIFFUSERS_TO_LDM_MAPPING["openclip"]
    renames = {d: ldm for d, ldm in table["transformer"].items() if not d.startswith("transformer.")}
    out, qkv = {}, {}
    for key, value in sd.items():
        key = key if key.startswith(("text_model.", "text_projection")) else "text_model." + key
        if key in table["layers"]:
            out[prefix + table["layers"][key]] = value.T.contiguous() if key == "text_projection.weight" else value
            continue
        name = key
        for d, ldm in renames.items():     # diffusers name -> OpenCLIP name
            name = name.replace(d, ldm)
        for proj in ("q_proj", "k_proj", "v_proj"):
            if f".attn.{proj}." in name:
                layer, kind = name.split(f".attn.{proj}.")
                qkv.setdefault((layer, kind), {})[proj] = value
                break
        else:
            out[prefix + "transformer." + name] = value
    for (layer, kind), parts in qkv.items():
        out[prefix + f"transformer.{layer}.attn.in_proj_{kind}"] = torch.cat([parts[p] for p in ("q_proj", "k_proj",
                                                                                                  "v_proj")])
    return out


def save_single_file(pipe, family: str, path: Path, metadata: dict[str, str] | None = None) -> Path:
    """Write `pipe` (Stable Diffusion 1.x or SDXL) as one safetensors file in the original layout."""
    tensors = unet_to_ldm(pipe.unet.state_dict(), pipe.unet.config)
    tensors.update(vae_to_ldm(pipe.vae.state_dict(), pipe.vae.config))
    for prefix in CLIP_PREFIX[family]:
        tensors.update(clip_to_ldm(pipe.text_encoder.state_dict(), prefix))
    if family == "sdxl":
        tensors.update(open_clip_to_ldm(pipe.text_encoder_2.state_dict(), OPEN_CLIP_SDXL))
    tensors = {k: v.detach().contiguous() for k, v in tensors.items()}
    save_file(tensors, path, metadata={"format": "pt", **(metadata or {})})
    return path


def load_single_file(path: Path, original_config: str | None):
    """A single .safetensors checkpoint in the original SD / SDXL layout -> a diffusers pipeline."""
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline
    if path.suffix != ".safetensors":
        raise DreamboothError(f"{path} is not a .safetensors file. Checkpoints in other formats (.ckpt, .pt) are "
                              "Python pickles that can run code when opened, so dreambooth does not open them; "
                              "convert it to safetensors on a machine you trust, or pass a diffusers folder.")
    with safe_open(str(path), "pt") as f:
        sdxl = any(k.startswith(OPEN_CLIP_SDXL) for k in f.keys())
    cls, kwargs = (StableDiffusionXLPipeline, {}) if sdxl else (StableDiffusionPipeline, {"safety_checker": None})
    if original_config:
        key = "config" if Path(original_config).is_dir() else "original_config"
        kwargs[key] = str(original_config)
    try:
        return cls.from_single_file(str(path), **kwargs)
    except Exception as e:   # diffusers raises many kinds here (missing config, hub unreachable, bad keys)
        raise DreamboothError(
            f"Could not read the single-file model {path} as {cls.__name__}: {str(e).splitlines()[0][:300]} "
            "Offline, diffusers needs its configuration: pass --original_config FOLDER, a diffusers pipeline folder "
            "of the same architecture (only its config and tokenizer files are read), or the model's original "
            "YAML (with its tokenizers in the local cache).") from None
