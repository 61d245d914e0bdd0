"""Small random-weight models of the real SD-1.x, SDXL and DeepFloyd IF architectures.

Everything is built offline (no hub access) and saved as ordinary diffusers pipeline
folders in safetensors, so tests, benchmarks and the demo exercise the same loading
and inference code paths as real checkpoints, just on tiny tensors.
"""

from __future__ import annotations

import itertools
import json
import math
import random
import re
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

# -- vocabulary corpus ----------------------------------------------------------------------

_FUNCTION_WORDS = (
    "a an the of on in with at by and or to for from under over near next behind front top "
    "photo picture image painting drawing sketch rendering close up view high quality style "
    "is are this that its his her their my our your one two three some many small large big "
    "little old new wet dirty shiny cute happy sitting standing lying floating wearing made"
).split()
# DreamBench (Ruiz et al. 2023) subject classes plus a few common prior-preservation classes.
_CLASS_WORDS = (
    "dog cat backpack teapot toy ball box star bowl boot can candle clock glasses sneaker "
    "shoe vase bear teddy duck robot monster cartoon plushie person man woman child car house "
    "chair table cup bag hat bird flower tree sunglasses dice figure berry"
).split()
_CONTEXT_WORDS = (
    "beach snow jungle city forest water mountain desert street room kitchen bed floor grass "
    "rock sand road garden river lake sky sea ocean field park bridge night sunset rain wall "
    "moon space tower bucket basket wheat cobblestone bath oil"
).split()
_COLORS = "red blue green yellow orange purple pink black white gray brown golden silver".split()

_BOS, _EOS = "<|startoftext|>", "<|endoftext|>"
_N_RARE = 150


def _bytes_to_unicode() -> dict[int, str]:
    """CLIP/GPT-2 byte -> printable unicode char table (same order as OpenAI's simple_tokenizer)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    bs += list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, (chr(c) for c in cs)))


def _rare_words(common: set[str]) -> list[str]:
    """~150 made-up 2-3 letter tokens (plus the customary 'sks'), deterministic.

    Candidates must not end any common word: a shared suffix would make their
    word-final token an early (low-id) merge instead of a late, rare one.
    """
    letters = "bcdfghjklmnpqrstvwxz"
    cands = sorted(
        "".join(t)
        for n in (2, 3)
        for t in itertools.product(letters, repeat=n)
        if set(t) & set("qxzjvkw")
    )
    random.Random(0).shuffle(cands)
    rare = ["sks"]
    for c in cands:
        if len(rare) == _N_RARE:
            break
        if c not in rare and not any(w.endswith(c) for w in common):
            rare.append(c)
    return rare


def tokenizer_corpus(extra_words: Sequence[str] = ()) -> tuple[dict[str, int], list[str]]:
    """Word -> frequency for the common words, and the list of rare tokens (frequency 1).

    Common frequencies are all > number of rare words, so no pair that occurs only in rare
    words can win a BPE round before every common word is fully merged; rare tokens
    therefore get the last merges, i.e. the highest ids, like rare tokens in real CLIP.
    """
    bad = [w for w in extra_words if not re.fullmatch(r"[a-z]+", w)]
    if bad:
        raise ValueError(f"extra_words must be lowercase ascii words, got {bad}")
    freqs: dict[str, int] = {}
    groups = ((_FUNCTION_WORDS, 400), (_CLASS_WORDS, 300), (_CONTEXT_WORDS, 200), (_COLORS, 200),
              (tuple(extra_words), 200))
    for group, base in groups:
        for rank, w in enumerate(group):
            freqs.setdefault(w, base + len(group) - rank)  # graded Zipf-ish, always > _N_RARE
    common = set(freqs)
    return freqs, [w for w in _rare_words(common) if w not in common]


def _train_merges(freqs: dict[str, int], base: list[str]) -> list[tuple[str, str]]:
    from tokenizers import Regex, Tokenizer, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE(end_of_word_suffix="</w>", continuing_subword_prefix=""))
    # Same pre-tokenization as CLIPTokenizer so the learned merges apply identically.
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(r"[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"), behavior="removed", invert=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    # Equal pair counts are broken by token id, and the trainer numbers 'x</w>' tokens in
    # hash-map order, which changes every process. Pinning the 512 CLIP base tokens first (as
    # "special" tokens) fixes all ids, making the merges reproducible across runs.
    trainer = trainers.BpeTrainer(
        vocab_size=100_000, min_frequency=0, show_progress=False, special_tokens=base,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), end_of_word_suffix="</w>",
    )

    def lines() -> Iterator[str]:  # the trainer only counts words, so repeat each one
        for w, f in freqs.items():
            yield " ".join([w] * f)

    tok.train_from_iterator(lines(), trainer=trainer)
    return [tuple(m) for m in json.loads(tok.to_str())["model"]["merges"]]


def build_clip_tokenizer(out_dir: Path, extra_words: Sequence[str] = ()) -> Path:
    """Write a small CLIP BPE tokenizer (vocab.json, merges.txt + transformers files)."""
    from transformers import CLIPTokenizer

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    freqs, rare = tokenizer_corpus(extra_words)
    # CLIP layout: 256 byte chars, the same with '</w>', one token per merge, then the specials.
    chars = list(_bytes_to_unicode().values())
    base = chars + [c + "</w>" for c in chars]
    merges = _train_merges({**freqs, **{w: 1 for w in rare}}, base)
    tokens = base + ["".join(m) for m in merges] + [_BOS, _EOS]
    vocab = {t: i for i, t in enumerate(tokens)}
    if len(vocab) != len(tokens):
        raise RuntimeError("BPE produced a duplicate token")
    (out_dir / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False))
    (out_dir / "merges.txt").write_text(
        "#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges), encoding="utf-8"
    )
    tok = CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=77)
    # Cheap guard for the invariants tests and DreamBooth prompts rely on.
    encoded = tok(list(freqs) + rare, add_special_tokens=False).input_ids
    if any(len(e) != 1 for e in encoded):
        raise RuntimeError("every corpus word must encode to a single token")
    ids = [e[0] for e in encoded]
    if max(ids[: len(freqs)]) > min(ids[len(freqs) :]):
        raise RuntimeError("rare tokens must have higher ids than common words")
    tok.save_pretrained(out_dir)
    return out_dir


# -- Stable Diffusion 1.x -------------------------------------------------------------------

_SD_SIZES: dict[str, dict[str, Any]] = {
    # unit tests: 32 px images (VAE /2, latent 16x16), whole folder ~2 MB
    "tiny": dict(
        unet=dict(block_out_channels=(16, 32), layers_per_block=1, norm_num_groups=8, attention_head_dim=2,
                  down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                  up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), sample_size=16),
        vae=dict(block_out_channels=(16, 32), norm_num_groups=8, sample_size=32),
        text=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4),
    ),
    # benchmarks: SD-1.x block layout, 128 px images (VAE /8, latent 16x16), UNet ~24.5M params
    "bench": dict(
        unet=dict(block_out_channels=(96, 128, 192, 192), layers_per_block=2, norm_num_groups=32,
                  attention_head_dim=8, sample_size=16),
        vae=dict(block_out_channels=(32, 64, 128, 128), norm_num_groups=32, sample_size=128),
        text=dict(hidden_size=256, intermediate_size=1024, num_hidden_layers=4, num_attention_heads=4),
    ),
}


def _tiny_clip_text(out_dir: Path, seed: int, *, projection: bool = False, **config):
    """(CLIP tokenizer saved under out_dir/tokenizer, random CLIPTextModel; with `projection`, the
    CLIPTextModelWithProjection that gives SDXL its pooled embedding)."""
    import torch
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

    tokenizer = CLIPTokenizer.from_pretrained(build_clip_tokenizer(out_dir / "tokenizer"))
    config = config or _SD_SIZES["tiny"]["text"]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        text_encoder = (CLIPTextModelWithProjection if projection else CLIPTextModel)(CLIPTextConfig(
            vocab_size=len(tokenizer), max_position_embeddings=77, bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, **config))
    return tokenizer, text_encoder


def build_tiny_sd(out_dir: Path, *, size: str = "tiny", prediction_type: str = "epsilon",
                  seed: int = 0) -> Path:
    """Save a random-weight StableDiffusionPipeline folder ('tiny' or 'bench')."""
    import torch
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel

    if size not in _SD_SIZES:
        raise ValueError(f"size must be one of {sorted(_SD_SIZES)}, got {size!r}")
    cfg = _SD_SIZES[size]
    out_dir = Path(out_dir)
    tokenizer, text_encoder = _tiny_clip_text(out_dir, seed, **cfg["text"])
    hidden = cfg["text"]["hidden_size"]
    # Forked RNG: deterministic weights without disturbing the caller's random stream.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        n_vae = len(cfg["vae"]["block_out_channels"])
        vae = AutoencoderKL(
            in_channels=3, out_channels=3, latent_channels=4, layers_per_block=1,
            down_block_types=("DownEncoderBlock2D",) * n_vae, up_block_types=("UpDecoderBlock2D",) * n_vae,
            **cfg["vae"],
        )
        # SD-1.x defaults (CrossAttn x3 + Down, mid cross-attn) unless the size overrides them.
        unet = UNet2DConditionModel(in_channels=4, out_channels=4, cross_attention_dim=hidden, **cfg["unet"])
    scheduler = DDIMScheduler(
        num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
        prediction_type=prediction_type, clip_sample=False, set_alpha_to_one=False, steps_offset=1,
    )
    pipe = StableDiffusionPipeline(
        vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet, scheduler=scheduler,
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )
    pipe.save_pretrained(out_dir, safe_serialization=True)
    return out_dir


# -- Stable Diffusion XL ---------------------------------------------------------------------

def build_tiny_sdxl(out_dir: Path, *, seed: int = 0) -> Path:
    """Save a random-weight StableDiffusionXLPipeline folder (32 px): two CLIP text encoders (the second
    with the projection that gives the pooled embedding) and tokenizers (the second pads with '!', as
    SDXL's does), and a UNet with SDXL's "text_time" added conditioning (pooled text + 6 time ids)."""
    import shutil

    import torch
    from diffusers import AutoencoderKL, EulerDiscreteScheduler, StableDiffusionXLPipeline, UNet2DConditionModel
    from transformers import CLIPTokenizer

    out_dir = Path(out_dir)
    text = _SD_SIZES["tiny"]["text"]
    tokenizer, text_encoder = _tiny_clip_text(out_dir, seed, **text)
    # A wider second tower, as in SDXL (768 vs 1280): single-file readers tell the towers apart by width.
    text_2 = {**text, "hidden_size": 48, "intermediate_size": 96}
    _, text_encoder_2 = _tiny_clip_text(out_dir / "_t2", seed + 1, projection=True, projection_dim=32, **text_2)
    shutil.rmtree(out_dir / "_t2")
    tokenizer_2 = CLIPTokenizer.from_pretrained(out_dir / "tokenizer", pad_token="!")
    time_dim = 8
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        vae = AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, layers_per_block=1,
                            down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
                            scaling_factor=0.13025, force_upcast=True, **_SD_SIZES["tiny"]["vae"])
        unet = UNet2DConditionModel(
            sample_size=16, in_channels=4, out_channels=4, layers_per_block=2, block_out_channels=(16, 32),
            norm_num_groups=8, down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), transformer_layers_per_block=(1, 2),
            attention_head_dim=(2, 4), use_linear_projection=True, addition_embed_type="text_time",
            addition_time_embed_dim=time_dim, cross_attention_dim=text["hidden_size"] + text_2["hidden_size"],
            projection_class_embeddings_input_dim=6 * time_dim + text_encoder_2.config.projection_dim)
    scheduler = EulerDiscreteScheduler(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012,
                                       beta_schedule="scaled_linear", steps_offset=1, timestep_spacing="leading")
    pipe = StableDiffusionXLPipeline(vae=vae, text_encoder=text_encoder, text_encoder_2=text_encoder_2,
                                     tokenizer=tokenizer, tokenizer_2=tokenizer_2, unet=unet, scheduler=scheduler)
    pipe.save_pretrained(out_dir, safe_serialization=True)
    return out_dir


# -- DeepFloyd IF stage I -------------------------------------------------------------------

def _t5_tokenizer(words: Sequence[str], freqs: dict[str, int]) -> Any:
    """T5 tokenizer over a Unigram model: one '▁word' piece per corpus word plus characters."""
    from transformers import T5TokenizerFast

    total = sum(freqs.values()) + len(words)
    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("▁", -2.0)]
    # Unigram scores are log-probabilities; whole words beat any split into characters.
    pieces += [("▁" + w, math.log(freqs.get(w, 1) / total)) for w in words]
    chars = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.,!?'-:;()\"/"
    pieces += [(c, -20.0) for c in chars]
    return T5TokenizerFast(vocab=pieces, extra_ids=100, model_max_length=77)


def _tiny_t5(seed: int):
    """(tokenizer, T5 v1.1-style encoder) as IF uses, tiny."""
    import torch
    from transformers import T5Config, T5EncoderModel

    freqs, rare = tokenizer_corpus()
    tokenizer = _t5_tokenizer(list(freqs) + rare, freqs)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        # T5 v1.1 flavour (as t5-v1_1-xxl used by IF): gated-GELU FFN, untied embeddings.
        text_encoder = T5EncoderModel(T5Config(
            vocab_size=len(tokenizer), d_model=_T5_DIM, d_kv=8, d_ff=64, num_layers=2, num_heads=4,
            relative_attention_num_buckets=8, feed_forward_proj="gated-gelu", tie_word_embeddings=False,
            pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
        ))
    return tokenizer, text_encoder


_T5_DIM = 32


def _if_unet(seed: int, **kw):
    """IF block types, attention pooling of the text ("text" addition embedding), learned variance."""
    import torch
    from diffusers import UNet2DConditionModel

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return UNet2DConditionModel(
            out_channels=6, layers_per_block=1, block_out_channels=(16, 32), norm_num_groups=8,
            down_block_types=("ResnetDownsampleBlock2D", "SimpleCrossAttnDownBlock2D"),
            mid_block_type="UNetMidBlock2DSimpleCrossAttn",
            up_block_types=("SimpleCrossAttnUpBlock2D", "ResnetUpsampleBlock2D"),
            cross_attention_dim=32, encoder_hid_dim=_T5_DIM, attention_head_dim=8,
            addition_embed_type="text", addition_embed_type_num_heads=2,
            cross_attention_norm="group_norm", resnet_time_scale_shift="scale_shift", act_fn="gelu", **kw,
        )


def _if_scheduler(**kw):
    from diffusers import DDPMScheduler
    return DDPMScheduler(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2", beta_start=0.0001,
                         beta_end=0.02, prediction_type="epsilon", clip_sample=True, **kw)


_IF_SAFETY = dict(safety_checker=None, feature_extractor=None, watermarker=None, requires_safety_checker=False)


def build_tiny_if(out_dir: Path, *, seed: int = 0) -> Path:
    """Save a random-weight DeepFloyd IF stage-I IFPipeline folder (32 px, pixel space)."""
    from diffusers import IFPipeline

    tokenizer, text_encoder = _tiny_t5(seed)
    scheduler = _if_scheduler(variance_type="learned_range", thresholding=True, dynamic_thresholding_ratio=0.95,
                              sample_max_value=1.5)
    pipe = IFPipeline(tokenizer=tokenizer, text_encoder=text_encoder, unet=_if_unet(seed, sample_size=32, in_channels=3),
                      scheduler=scheduler, **_IF_SAFETY)
    pipe.save_pretrained(Path(out_dir), safe_serialization=True)
    return Path(out_dir)


def build_tiny_if_sr(out_dir: Path, *, seed: int = 0, lowres: int | None = None) -> Path:
    """Save a random-weight DeepFloyd IF stage-II IFSuperResolutionPipeline folder: 16 -> 64 px (4x, as
    IF's 64 -> 256), input = noisy image + upsampled noise-augmented low-res image, level as class label.
    `lowres` declares another low-res size in dreambooth_sr.json, as the micro world's SR does (32 -> 64,
    matching the tiny IF stage I's 32 px for a tiny cascade)."""
    from diffusers import IFSuperResolutionPipeline

    tokenizer, text_encoder = _tiny_t5(seed)
    unet = _if_unet(seed, sample_size=64, in_channels=6, class_embed_type="timestep")
    pipe = IFSuperResolutionPipeline(
        tokenizer=tokenizer, text_encoder=text_encoder, unet=unet,
        scheduler=_if_scheduler(variance_type="learned_range"), image_noising_scheduler=_if_scheduler(), **_IF_SAFETY)
    pipe.save_pretrained(Path(out_dir), safe_serialization=True)
    if lowres:
        (Path(out_dir) / "dreambooth_sr.json").write_text(json.dumps({"lowres_resolution": lowres}))
    return Path(out_dir)


def build_tiny_sd_upscaler(out_dir: Path, *, seed: int = 0) -> Path:
    """Save a random-weight StableDiffusionUpscalePipeline folder (the SD x4 upscaler layout): VAE /4,
    UNet input = 4 latent + 3 low-res pixel channels at latent size, noise level as class label
    (num_class_embeds), its own low_res_scheduler. 16 px in -> 64 px out."""
    import torch
    from diffusers import (AutoencoderKL, DDIMScheduler, DDPMScheduler, StableDiffusionUpscalePipeline,
                           UNet2DConditionModel)

    out_dir = Path(out_dir)
    tokenizer, text_encoder = _tiny_clip_text(out_dir, seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        vae = AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, layers_per_block=1,
                            block_out_channels=(16, 32, 32), norm_num_groups=8, scaling_factor=0.08333,
                            down_block_types=("DownEncoderBlock2D",) * 3, up_block_types=("UpDecoderBlock2D",) * 3)
        unet = UNet2DConditionModel(
            sample_size=16, in_channels=7, out_channels=4, layers_per_block=1, block_out_channels=(16, 32),
            norm_num_groups=8, down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), cross_attention_dim=text_encoder.config.hidden_size,
            attention_head_dim=8, num_class_embeds=1000)
    pipe = StableDiffusionUpscalePipeline(
        vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
        low_res_scheduler=DDPMScheduler(num_train_timesteps=1000, beta_schedule="linear"),
        scheduler=DDIMScheduler(num_train_timesteps=1000, beta_schedule="scaled_linear", beta_start=0.0001,
                                beta_end=0.02, prediction_type="v_prediction", clip_sample=False),
        max_noise_level=350)
    pipe.save_pretrained(out_dir, safe_serialization=True)
    return out_dir
