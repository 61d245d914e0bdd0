"""Random-weight tiny SD / IF pipelines: offline build, load, and a 2-step generation."""

from __future__ import annotations

import json
import math
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import DiffusionPipeline
from transformers import AutoTokenizer, CLIPTokenizer, CLIPTokenizerFast, T5TokenizerFast
from transformers.convert_slow_tokenizer import bytes_to_unicode

from dreambooth.tiny import build_clip_tokenizer, build_tiny_if, build_tiny_sd, tokenizer_corpus

diffusers = pytest.importorskip("diffusers")

SENTENCES = [
    "a photo of sks dog",
    "A Photo of a RED backpack, on the beach at night: 3 vxq toys!",
    "a teapot floating in the water near a blue star",
]


def _folder_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def _assert_safetensors_only(path: Path) -> None:
    assert not [f for f in path.rglob("*") if f.suffix in {".bin", ".pt", ".pth", ".pkl", ".ckpt"}]
    assert list(path.rglob("*.safetensors"))


def _run(pipe, **kwargs):
    pipe.set_progress_bar_config(disable=True)
    gen = torch.Generator().manual_seed(0)
    return pipe("a photo of sks dog", num_inference_steps=2, generator=gen, **kwargs).images


def _reference_clip_ids(vocab: dict[str, int], merges: list[tuple[str, str]], text: str) -> list[int]:
    """OpenAI simple_tokenizer's BPE, in plain Python, reading only vocab.json / merges.txt."""
    ranks = {m: r for r, m in enumerate(merges)}
    b2u = bytes_to_unicode()
    ids = [vocab["<|startoftext|>"]]
    for word in re.findall(r"[a-z]+|[0-9]|[^\sa-z0-9]+", text.lower()):
        token = "".join(b2u[b] for b in word.encode())
        parts = [*token[:-1], token[-1] + "</w>"]
        while len(parts) > 1:
            rank, i = min((ranks.get(p, math.inf), i) for i, p in enumerate(zip(parts, parts[1:])))
            if rank == math.inf:
                break
            parts[i : i + 2] = [parts[i] + parts[i + 1]]
        ids += [vocab[p] for p in parts]
    return ids + [vocab["<|endoftext|>"]]


@pytest.fixture(scope="module")
def sd_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_sd(tmp_path_factory.mktemp("sd"))


@pytest.fixture(scope="module")
def if_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_if(tmp_path_factory.mktemp("if"))


# -- CLIP tokenizer -----------------------------------------------------------------------------

def test_clip_tokenizer_files_and_layout(tmp_path: Path) -> None:
    out = build_clip_tokenizer(tmp_path / "tok")
    for name in ("vocab.json", "merges.txt", "tokenizer_config.json"):
        assert (out / name).is_file()
    vocab = json.loads((out / "vocab.json").read_text(encoding="utf-8"))
    assert len(vocab) < 2000
    # CLIP layout: 256 byte chars, the same with '</w>', merges, and the two specials last.
    base = list(bytes_to_unicode().values())
    by_id = sorted(vocab, key=vocab.__getitem__)
    assert by_id[:512] == base + [b + "</w>" for b in base]
    assert vocab["<|startoftext|>"] == len(vocab) - 2 and vocab["<|endoftext|>"] == len(vocab) - 1
    assert (out / "merges.txt").read_text(encoding="utf-8").startswith("#version: 0.2\n")


def test_clip_tokenizer_words_are_single_tokens(tmp_path: Path) -> None:
    out = build_clip_tokenizer(tmp_path / "tok", extra_words=["corgi"])
    tok = CLIPTokenizer.from_pretrained(out)
    freqs, rare = tokenizer_corpus(["corgi"])
    assert {"a", "photo", "of", "the", "dog", "backpack", "beach", "red", "corgi"} <= set(freqs)
    assert len(rare) >= 140 and "sks" in rare and all(2 <= len(w) <= 3 for w in rare)
    ids = {w: tok(w, add_special_tokens=False).input_ids for w in [*freqs, *rare]}
    assert all(len(i) == 1 for i in ids.values()), [w for w, i in ids.items() if len(i) != 1]
    assert max(ids[w][0] for w in freqs) < min(ids[w][0] for w in rare)
    assert tok.model_max_length == 77
    enc = tok("a photo of sks dog").input_ids
    assert enc[0] == tok.bos_token_id and enc[-1] == tok.eos_token_id and len(enc) == 7


def test_clip_tokenizer_slow_fast_and_reference_agree(tmp_path: Path) -> None:
    out = build_clip_tokenizer(tmp_path / "tok")
    # transformers 5 has a single CLIPTokenizer class (CLIPTokenizerFast is an alias), so compare
    # its tokenizer.json path with the vocab.json + merges.txt path and a pure-Python BPE.
    files_only = tmp_path / "files_only"
    files_only.mkdir()
    for name in ("vocab.json", "merges.txt"):
        shutil.copy(out / name, files_only / name)
    from_json = CLIPTokenizer.from_pretrained(out)
    from_files = CLIPTokenizerFast.from_pretrained(files_only)
    vocab = json.loads((out / "vocab.json").read_text(encoding="utf-8"))
    lines = (out / "merges.txt").read_text(encoding="utf-8").splitlines()[1:]
    merges = [tuple(line.split()) for line in lines]
    for s in SENTENCES:
        ids = from_json(s).input_ids
        assert ids == from_files(s).input_ids == _reference_clip_ids(vocab, merges, s)
        assert from_json.decode(ids, skip_special_tokens=True) == " ".join(
            re.findall(r"[a-z]+|[0-9]|[^\sa-z0-9]+", s.lower()))


def test_clip_tokenizer_reproducible_across_processes(tmp_path: Path) -> None:
    # The BPE trainer hashes with a per-process random seed; the files must not depend on it.
    here = build_clip_tokenizer(tmp_path / "here")
    code = "import sys; from dreambooth.tiny import build_clip_tokenizer as b; b(sys.argv[1])"
    subprocess.run([sys.executable, "-c", code, str(tmp_path / "there")], check=True,
                   cwd=Path(__file__).resolve().parents[1])
    for name in ("vocab.json", "merges.txt", "tokenizer.json"):
        assert (here / name).read_bytes() == (tmp_path / "there" / name).read_bytes()


# -- Stable Diffusion -----------------------------------------------------------------------------

def test_tiny_sd_loads_and_generates(sd_dir: Path) -> None:
    _assert_safetensors_only(sd_dir)
    assert _folder_bytes(sd_dir) < 3 * 2**20
    pipe = diffusers.DiffusionPipeline.from_pretrained(sd_dir)
    assert type(pipe).__name__ == "StableDiffusionPipeline"
    assert pipe.safety_checker is None and pipe.feature_extractor is None
    sched = pipe.scheduler.config
    assert type(pipe.scheduler).__name__ == "DDIMScheduler"
    assert (sched.beta_schedule, sched.beta_start, sched.beta_end) == ("scaled_linear", 0.00085, 0.012)
    assert (sched.prediction_type, sched.clip_sample, sched.set_alpha_to_one, sched.steps_offset) == (
        "epsilon", False, False, 1)
    images = _run(pipe, output_type="np")
    assert images.shape == (1, 32, 32, 3) and np.isfinite(images).all()


def test_tiny_sd_is_deterministic_and_keeps_rng(sd_dir: Path, tmp_path: Path) -> None:
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    again = build_tiny_sd(tmp_path / "again", prediction_type="v_prediction")
    assert torch.equal(torch.rand(3), expected)  # building must not consume the caller's RNG
    for f in sd_dir.rglob("*.safetensors"):
        assert f.read_bytes() == (again / f.relative_to(sd_dir)).read_bytes()
    sched = json.loads((again / "scheduler" / "scheduler_config.json").read_text())
    assert sched["prediction_type"] == "v_prediction"


def test_bench_sd_size(tmp_path: Path) -> None:
    out = build_tiny_sd(tmp_path / "bench", size="bench")
    _assert_safetensors_only(out)
    pipe = diffusers.DiffusionPipeline.from_pretrained(out)
    n_unet = sum(p.numel() for p in pipe.unet.parameters())
    assert 22e6 < n_unet < 26e6
    assert pipe.vae_scale_factor == 8 and pipe.unet.config.sample_size == 16
    images = _run(pipe, output_type="np", num_images_per_prompt=1)
    assert images.shape == (1, 128, 128, 3) and np.isfinite(images).all()


def test_unknown_size_rejected(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="size"):
        build_tiny_sd(tmp_path, size="huge")


# -- DeepFloyd IF -----------------------------------------------------------------------------------

def test_tiny_if_loads_and_generates(if_dir: Path) -> None:
    _assert_safetensors_only(if_dir)
    pipe = diffusers.DiffusionPipeline.from_pretrained(if_dir)
    assert type(pipe).__name__ == "IFPipeline"
    assert pipe.safety_checker is None and pipe.watermarker is None and pipe.feature_extractor is None
    unet = pipe.unet.config
    assert (unet.in_channels, unet.out_channels, unet.addition_embed_type) == (3, 6, "text")
    assert unet.encoder_hid_dim == pipe.text_encoder.config.d_model
    assert pipe.scheduler.config.variance_type == "learned_range"
    assert pipe.scheduler.config.beta_schedule == "squaredcos_cap_v2"
    images = _run(pipe, output_type="pt", clean_caption=False)
    assert images.shape == (1, 3, 32, 32) and torch.isfinite(images).all()
    images = _run(pipe, output_type="np", clean_caption=False)
    assert images.shape == (1, 32, 32, 3) and np.isfinite(images).all()


def test_tiny_if_t5_tokenizer_reloads(if_dir: Path) -> None:
    auto = AutoTokenizer.from_pretrained(if_dir / "tokenizer")
    fast = T5TokenizerFast.from_pretrained(if_dir / "tokenizer")
    assert (fast.pad_token, fast.eos_token, fast.unk_token) == ("<pad>", "</s>", "<unk>")
    assert (fast.pad_token_id, fast.eos_token_id, fast.unk_token_id) == (0, 1, 2)
    for s in SENTENCES:
        assert auto(s).input_ids == fast(s).input_ids
    ids = fast("a photo of sks dog").input_ids
    assert len(ids) == 6 and ids[-1] == fast.eos_token_id and fast.unk_token_id not in ids
    assert fast.decode(ids, skip_special_tokens=True) == "a photo of sks dog"


@pytest.mark.parametrize("builder, cls", [("build_tiny_if_sr", "IFSuperResolutionPipeline"),
                                          ("build_tiny_sd_upscaler", "StableDiffusionUpscalePipeline")])
def test_super_resolution_layouts_upscale_4x(builder, cls, tmp_path):
    import dreambooth.tiny as tiny
    out = getattr(tiny, builder)(tmp_path / builder)
    pipe = DiffusionPipeline.from_pretrained(out)
    assert type(pipe).__name__ == cls
    assert not [p for p in out.rglob("*") if p.suffix in {".bin", ".pt", ".pkl"}]
    low = torch.rand(1, 3, 16, 16)
    kwargs = {"clean_caption": False} if cls.startswith("IF") else {}
    images = pipe(image=low * 2 - 1 if cls.startswith("IF") else low, prompt="a dog", num_inference_steps=2,
                  output_type="np", generator=torch.Generator().manual_seed(0), **kwargs).images
    assert images.shape == (1, 64, 64, 3) and np.isfinite(images).all()
