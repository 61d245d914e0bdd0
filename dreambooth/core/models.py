"""Load a base pipeline and decide, once, how the loop talks to it.

Everything goes through diffusers' own `DiffusionPipeline.from_pretrained`, so a user's folder is
read exactly as diffusers reads it. The differences between model families are settled here, at
setup, as small callables (`encode_images`, `predict`, `encode_text`): latent models with a VAE vs
pixel-space models, learned-variance UNets (DeepFloyd IF) vs plain ones, T5 vs CLIP text towers,
SDXL's two towers and added conditions (pooled text embedding + time ids). A single-file checkpoint
in the original SD / SDXL layout is read through diffusers' `from_single_file`.
The training loop then never asks which kind of model it has.
"""

from __future__ import annotations

import inspect
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
from diffusers import DDPMScheduler, DiffusionPipeline

from ..config import ModelConfig
from ..errors import DreamboothError
from ..export.names import SR_HINT
from ..superres import residual  # noqa: F401 (registers ResidualSRUNet: diffusers loads it from sys.modules)
from .model_folder import is_super_resolution, locate, read_model_index, require_safetensors  # noqa: F401 (re-exported)

Tensor = torch.Tensor


@dataclass
class Model:
    pipe: DiffusionPipeline          # holds the very modules we train: sampling sees current weights
    source: str                      # folder or hub id it came from
    noise_scheduler: DDPMScheduler   # the training noise schedule (DDPM form of the model's own)
    resolution: int                  # native image size in pixels
    latent: bool                     # VAE latent model (SD) vs pixel-space (IF, micro world)
    encode_images: Callable[[Tensor], Tensor]       # (B,3,H,W) in [-1,1] -> x0 (B,C,h,w)
    predict: Callable[..., Tensor]   # (x_t, t, text, **extras) -> model target estimate
    use_attention_mask: bool         # whether the pipeline passes the padding mask to the text encoder
    learned_variance: bool           # UNet predicts [target, variance] (DeepFloyd IF)
    sr: "SuperResolution | None" = None   # set for super-resolution models (low-res image conditioning)
    added_cond: bool = False         # SDXL: the UNet also takes the pooled text embedding and 6 time ids

    @property
    def unet(self):
        return self.pipe.unet

    @property
    def text_encoder(self):
        return self.pipe.text_encoder

    @property
    def tokenizer(self):
        return self.pipe.tokenizer

    @property
    def tokenizers(self) -> list:
        """Every tokenizer the prompts go through (SDXL has two; the identifier must suit both)."""
        return [tok for tok in (self.pipe.tokenizer, getattr(self.pipe, "tokenizer_2", None)) if tok is not None]

    @property
    def family(self) -> str:
        """'sd' (SD 1.x/2.x), 'sdxl', or 'other' (DeepFloyd IF, the micro world, SR models): what the
        A1111 / ComfyUI layouts exist for."""
        name = type(self.pipe).__name__
        return {"StableDiffusionPipeline": "sd", "StableDiffusionXLPipeline": "sdxl"}.get(name, "other")

    @property
    def vae(self):
        return getattr(self.pipe, "vae", None)

    @property
    def prediction_type(self) -> str:
        return self.noise_scheduler.config.prediction_type

    def sample_kwargs(self) -> dict:
        """Arguments every pipeline call needs for this family (IF cleans captions with extra
        packages unless told not to)."""
        params = inspect.signature(self.pipe.__call__).parameters
        kwargs = {} if self.sr else {"height": self.resolution, "width": self.resolution}
        if "clean_caption" in params:
            kwargs["clean_caption"] = False
        return kwargs


def load_model(cfg: ModelConfig, resolution: int | None = None) -> Model:
    pipe = load_pipeline(cfg)
    for module in pipe.components.values():   # inference state until the trainer opens what it trains
        if isinstance(module, torch.nn.Module):
            module.eval().requires_grad_(False)
    for name in ("unet", "text_encoder", "tokenizer", "scheduler"):
        if getattr(pipe, name, None) is None:
            raise DreamboothError(f"The model at {cfg.pretrained_model_name_or_path} has no '{name}' component; "
                                  "DreamBooth needs a text-conditioned UNet pipeline (Stable Diffusion, "
                                  "DeepFloyd IF stage I, or a micro-world model).")
    vae = getattr(pipe, "vae", None)
    unet = pipe.unet
    native = int(unet.config.sample_size * (pipe.vae_scale_factor if vae is not None else 1))
    x0_channels = vae.config.latent_channels if vae is not None else 3
    learned_variance = unet.config.out_channels == 2 * x0_channels
    sr = _super_resolution(pipe, cfg, resolution or native)
    return Model(
        pipe=pipe,
        source=cfg.pretrained_model_name_or_path,
        noise_scheduler=DDPMScheduler.from_config(pipe.scheduler.config),
        resolution=resolution or native,
        latent=vae is not None,
        encode_images=_vae_encoder(vae) if vae is not None else _pixels,
        predict=make_predictor(unet, learned_variance, sr, _takes_added_cond(unet)),
        use_attention_mask=_pipeline_uses_mask(pipe),
        learned_variance=learned_variance,
        sr=sr,
        added_cond=_takes_added_cond(unet),
    )


def _takes_added_cond(unet) -> bool:
    return unet.config.addition_embed_type == "text_time"


def load_pipeline(cfg: ModelConfig) -> DiffusionPipeline:
    src = cfg.pretrained_model_name_or_path
    if not src:
        raise DreamboothError("No base model given. Pass --model PATH (a diffusers pipeline folder), e.g. one made "
                              "by `dreambooth tiny-model --out tiny-sd`.")
    path = Path(src).expanduser()
    from .publish import finish_interrupted_export
    folder = locate(src, revision=cfg.revision)   # a pipeline folder, a cached hub id or a single .safetensors
    if folder.is_file():
        from ..export.single_file import load_single_file
        return _finish_loading(load_single_file(folder, cfg.original_config), cfg)
    finish_interrupted_export(folder)   # a pipeline this tool was swapping in when it was killed
    require_safetensors(folder)
    try:
        pipe = DiffusionPipeline.from_pretrained(str(path) if path.exists() else src, revision=cfg.revision,
                                                 variant=cfg.variant, use_safetensors=True)  # fp32, never a pickle
    except (OSError, ValueError) as e:
        where = "folder" if path.exists() else "hub id"
        raise DreamboothError(
            f"Could not load the base model {src!r} ({where}): {str(e).splitlines()[0][:300]} "
            "No model hub is reachable from here, so a hub id only works if it is already in the local cache. "
            "Download the model on a connected machine (`huggingface-cli download ID --local-dir FOLDER`), copy "
            "the folder here and pass --model FOLDER.") from None
    return _finish_loading(pipe, cfg)


def _finish_loading(pipe: DiffusionPipeline, cfg: ModelConfig) -> DiffusionPipeline:
    if cfg.tokenizer_name:
        pipe.tokenizer = _load_tokenizer(cfg.tokenizer_name)
    if cfg.pretrained_vae_model_name_or_path:
        pipe.vae = _load_vae(cfg.pretrained_vae_model_name_or_path)
    return pipe


def _load_vae(src: str):
    """A VAE folder (config.json at its root) or a pipeline folder with vae/, as diffusers' scripts take it."""
    from diffusers import AutoencoderKL
    sub = "vae" if (Path(src) / "vae" / "config.json").exists() else None
    try:
        return AutoencoderKL.from_pretrained(src, subfolder=sub)
    except (OSError, ValueError) as e:
        raise DreamboothError(f"Could not load the VAE {src!r} given by --pretrained_vae_model_name_or_path: "
                              f"{str(e).splitlines()[0][:200]} Pass a local folder with the VAE's config.json and "
                              "weights (or a pipeline folder with vae/).") from None


def _load_tokenizer(name: str):
    from transformers import AutoTokenizer
    try:
        return AutoTokenizer.from_pretrained(name)
    except OSError as e:
        raise DreamboothError(f"Could not load the tokenizer {name!r} given by --tokenizer_name: "
                              f"{str(e).splitlines()[0][:200]} Pass a local tokenizer folder.") from None


def _pipeline_uses_mask(pipe) -> bool:
    """Train the text encoder's input exactly as the pipeline feeds it at inference: the IF family
    always passes the padding mask; Stable Diffusion only when the encoder's config asks for it."""
    from diffusers import IFPipeline
    return isinstance(pipe, IFPipeline) or bool(getattr(pipe.text_encoder.config, "use_attention_mask", False))


def _pixels(images: Tensor) -> Tensor:
    return images


def _vae_encoder(vae) -> Callable[[Tensor], Tensor]:
    shift = getattr(vae.config, "shift_factor", None) or 0.0
    scale = vae.config.scaling_factor

    @torch.no_grad()
    def encode(images: Tensor) -> Tensor:
        # The posterior mean, not a sample: latents are cached once per view, so a random draw
        # would freeze one arbitrary sample forever; the mean is the faithful fixed encoding.
        latents = vae.encode(images.to(vae.device, vae.dtype)).latent_dist.mean
        return ((latents - shift) * scale).float()
    return encode


def make_predictor(unet, learned_variance: bool, sr: "SuperResolution | None" = None,
                   added_cond: bool = False) -> Callable[..., Tensor]:
    """`unet` may be a DDP wrapper (no .config), hence the flags are passed in.
    Learned-variance UNets (IF) output [prediction, variance] along channels; the loss uses the first half.
    Super-resolution UNets also see the noise-augmented low-res image, its noise level as class label.
    SDXL's UNet gets `text` as (hidden states, pooled embedding) and each view's time ids."""

    def predict(x_t: Tensor, t: Tensor, text, **extras) -> Tensor:
        kwargs = {}
        if added_cond:
            text, pooled = text
            kwargs["added_cond_kwargs"] = {"text_embeds": pooled, "time_ids": extras.pop("time_ids")}
        x_in, labels = (x_t, None) if sr is None else sr.condition(x_t, **extras)
        out = unet(x_in, t, encoder_hidden_states=text, class_labels=labels, return_dict=False, **kwargs)[0]
        return out[:, : x_t.shape[1]] if learned_variance else out
    return predict


def time_ids(views, resolution: int, crop_h: int | None = None, crop_w: int | None = None) -> Tensor:
    """SDXL's micro-conditioning of each view, as its pipeline lays it out: (original height, width,
    crop top, left, target height, width). The crop is where `fit_square` cut the view from the
    resized photo, unless --crops_coords_top_left_h/w fix it."""
    rows = []
    for view in views:
        h, w, top, left = view.info.get("dreambooth_crop", (resolution, resolution, 0, 0))
        rows.append([h, w, top if crop_h is None else crop_h, left if crop_w is None else crop_w,
                     resolution, resolution])
    return torch.tensor(rows, dtype=torch.float32)


@dataclass
class SuperResolution:
    """What a cascaded SR model adds: its low-res input, built as its pipeline builds it at inference."""
    lowres: int                      # low-res input size in pixels
    noising_alphas: Tensor           # alphas_cumprod of the pipeline's image-noising scheduler
    max_level: int                   # augmentation levels are drawn from [0, max_level)
    fixed_level: int | None          # or always this level
    upsample: Callable | None = None   # the model's own upsampling of its low-res input (None: the IF pipeline's)
    # Sampling its maker measured best ({"steps", "noise_level", "guidance_scale"}, any subset), from
    # dreambooth_sr.json: the world's SR is sharpest at 4 steps from an un-noised input, while the IF
    # pipeline's defaults (noise level 250, guidance 4) suit DeepFloyd's stage II. Flags override it.
    sampling: dict = field(default_factory=dict)

    def hint(self) -> dict:
        """dreambooth_sr.json's content: written beside every SR pipeline this tool saves."""
        return {"lowres_resolution": self.lowres, **({"sampling": self.sampling} if self.sampling else {})}

    def condition(self, x_t: Tensor, low: Tensor, gen: torch.Generator) -> tuple[Tensor, Tensor]:
        """-> ([x_t ; upsampled noised low-res] along channels, level per sample)."""
        from ..superres.conditioning import lowres_condition, upsample
        b = x_t.shape[0]
        level = (torch.full((b,), self.fixed_level) if self.fixed_level is not None
                 else torch.randint(0, self.max_level, (b,), generator=gen))
        # drawn at the upsampled size, as the pipeline draws it
        noise = torch.randn((b, low.shape[1], *x_t.shape[-2:]), generator=gen).to(low.device, low.dtype)
        cond = lowres_condition(low, x_t.shape[-1], noise, level.to(low.device), self.noising_alphas.to(low.device),
                                self.upsample or upsample)
        return torch.cat([x_t, cond.to(x_t.dtype)], dim=1), level.to(x_t.device)


def _super_resolution(pipe, cfg: ModelConfig, resolution: int) -> SuperResolution | None:
    """IF stage II keeps its noising schedule in `image_noising_scheduler`, the SD x4 upscaler in
    `low_res_scheduler`; a pipeline with neither is a base model."""
    noising = getattr(pipe, "image_noising_scheduler", None) or getattr(pipe, "low_res_scheduler", None)
    if noising is None:
        return None
    hint = Path(cfg.pretrained_model_name_or_path) / SR_HINT   # written by our own SR models
    latent = getattr(pipe, "vae", None) is not None
    hinted = json.loads(hint.read_text()) if hint.exists() else {}
    default_low = hinted.get("lowres_resolution", resolution // 4)
    # The x4 upscaler's low-res image sits at latent size; IF stage II upsamples it to the output size.
    max_level = getattr(pipe.config, "max_noise_level", None) or noising.config.num_train_timesteps
    return SuperResolution(lowres=default_low if not latent else resolution // pipe.vae_scale_factor,
                           noising_alphas=noising.alphas_cumprod, max_level=int(max_level), fixed_level=None,
                           upsample=getattr(pipe.unet, "lowres_upsample", None), sampling=hinted.get("sampling", {}))


def tokenize(tokenizer, prompts: list[str], max_length: int | None = None) -> tuple[Tensor, Tensor]:
    """-> input_ids (B, L), attention_mask (B, L), padded to the tokenizer's model length."""
    enc = tokenizer(prompts, padding="max_length", truncation=True,
                    max_length=max_length or tokenizer.model_max_length, return_tensors="pt")
    return enc.input_ids, enc.attention_mask


def encode_text(text_encoder, input_ids: Tensor, attention_mask: Tensor | None) -> Tensor:
    """(B, L) token ids -> (B, L, D) hidden states, as the pipelines condition the UNet."""
    device = next(text_encoder.parameters()).device  # also works on a DDP wrapper
    return text_encoder(input_ids.to(device), attention_mask=None if attention_mask is None
                        else attention_mask.to(device), return_dict=False)[0]


def parameter_report(modules: dict[str, torch.nn.Module]) -> dict[str, tuple[int, int]]:
    """name -> (trainable parameters, all parameters)."""
    return {name: (sum(p.numel() for p in m.parameters() if p.requires_grad), sum(p.numel() for p in m.parameters()))
            for name, m in modules.items()}


def state_bytes(modules) -> int:
    """Bytes the modules' weights take on disk (safetensors stores them as they are in memory)."""
    return sum(t.numel() * t.element_size() for m in modules for t in m.state_dict().values())
