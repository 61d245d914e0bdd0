"""The judges: image (and text) encoders for the metrics, loaded with transformers.

CLIP (CLIP-I, CLIP-T): a `CLIPModel` folder or hub id, e.g. openai/clip-vit-base-patch32 or -large-patch14.
DINO (DINO, PRES, DIV-DINO): a `ViTModel` folder or hub id, e.g. facebook/dino-vits16; the embedding
is the CLS token of the last hidden state, as in the paper.

Preprocessing is done here with PIL and torch (no image processor, no torchvision): center-crop to a
square, resize to the model's input size, normalise with the folder's preprocessor_config.json
when it has one, else CLIP's (CLIP) or ImageNet's (DINO) mean and std.

The micro world's own encoders (micro-CLIP and the instance encoder, `world/encoders.py`) were
trained on [-1, 1] images without mean/std; they are recognised by the `training.json` world
pretraining writes beside them and go through the world's own helpers unchanged.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from PIL import Image

from ..data.intake import to_tensor
from ..errors import DreamboothError
from ..world.defaults import MODELS as WORLD_MODELS     # where the shipped world models live

Tensor = torch.Tensor
CLIP_MEAN, CLIP_STD = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
_BATCH = 32     # images per forward pass: bounds memory with ViT-L/14 at 224 px

FLAGS_HINT = "--clip-model /path/to/clip-vit-base-patch32 --dino-model /path/to/dino-vits16"


class EncoderUnavailable(DreamboothError):
    """An evaluation encoder is missing or cannot be loaded (printed by the CLI without a traceback)."""


def _how_to_get_them() -> str:
    return ("Evaluation needs two encoders, loaded with transformers from a local folder (or a hub id already in "
            "the local cache): CLIP ViT-B/32 or L/14 for CLIP-I/CLIP-T and DINO ViT-S/16 for DINO, PRES and DIV. "
            "No model hub is reachable from here: download them on a connected machine (`huggingface-cli download "
            "openai/clip-vit-base-patch32 --local-dir clip-vit-base-patch32` and the same for "
            f"facebook/dino-vits16), copy both folders here and pass {FLAGS_HINT}.")


@dataclass(frozen=True)
class ImagePrep:
    """How a PIL image becomes the encoder's pixel values."""
    size: int                                  # square input size in pixels
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    world: bool = False                        # micro-world encoder: [-1, 1] through world.encoders.to_64


def center_square(image: Image.Image) -> Image.Image:
    w, h = image.size
    s = min(w, h)
    return image.crop(((w - s) // 2, (h - s) // 2, (w - s) // 2 + s, (h - s) // 2 + s))


def pixel_values(images: Sequence[Image.Image], prep: ImagePrep) -> Tensor:
    """PIL images -> (B, 3, size, size) float32 as the encoder expects."""
    out = []
    for im in images:
        x = to_tensor(center_square(im))[None]                                    # (1, 3, s, s) in [-1, 1]
        if prep.world:
            from ..world.encoders import to_64
            out.append(to_64(x))
            continue
        # bicubic with antialias: close to PIL's resize that CLIP/DINO preprocessing uses
        x = F.interpolate(x, size=(prep.size, prep.size), mode="bicubic", align_corners=False,
                          antialias=x.shape[-1] > prep.size).clamp(-1, 1)
        x = (x + 1) / 2                                                           # [0, 1]
        mean, std = torch.tensor(prep.mean).view(1, 3, 1, 1), torch.tensor(prep.std).view(1, 3, 1, 1)
        out.append((x - mean) / std)
    return torch.cat(out)


@dataclass
class ImageEncoder:
    source: str                                 # folder or hub id, for the report
    prep: ImagePrep
    forward: Callable[[Tensor], Tensor]         # pixel values (B, 3, S, S) -> (B, D)
    device: str = "cpu"

    @torch.no_grad()
    def embed(self, images: Sequence[Image.Image]) -> Tensor:
        """-> (N, D) L2-normalised embeddings, on the CPU."""
        chunks = [self.forward(pixel_values(images[i:i + _BATCH], self.prep).to(self.device)).float().cpu()
                  for i in range(0, len(images), _BATCH)]
        return F.normalize(torch.cat(chunks), dim=-1)


@dataclass
class ClipEncoder(ImageEncoder):
    embed_text_fn: Callable[[Sequence[str]], Tensor] | None = None

    @torch.no_grad()
    def embed_text(self, prompts: Sequence[str]) -> Tensor:
        """-> (P, D) L2-normalised text embeddings, on the CPU."""
        assert self.embed_text_fn is not None
        return F.normalize(self.embed_text_fn(list(prompts)).float().cpu(), dim=-1)


@dataclass
class Encoders:
    clip: ClipEncoder
    dino: ImageEncoder


# -- loading ----------------------------------------------------------------------------------

def is_world_encoder(folder: Path) -> bool:
    """World pretraining writes training.json beside its models; hub folders carry a preprocessor config."""
    return (folder / "training.json").is_file() and not (folder / "preprocessor_config.json").is_file()


def _prep_from_folder(folder: Path, size: int, mean: tuple, std: tuple) -> ImagePrep:
    cfg_path = folder / "preprocessor_config.json"
    if not cfg_path.is_file():
        return ImagePrep(size, mean, std)
    cfg = json.loads(cfg_path.read_text())
    crop = cfg.get("crop_size") or cfg.get("size") or size
    crop = crop if isinstance(crop, int) else crop.get("height") or crop.get("shortest_edge") or size
    return ImagePrep(int(crop), tuple(cfg.get("image_mean", mean)), tuple(cfg.get("image_std", std)))


def _load(kind: str, source: str, loader: Callable[[str], object]) -> object:
    path = Path(source).expanduser()
    looks_local = source.startswith((".", "/", "~")) or path.exists() or source.count("/") > 1
    if looks_local and not path.is_dir():
        raise EncoderUnavailable(f"The {kind} encoder folder {source} does not exist. " + _how_to_get_them())
    try:
        return loader(str(path) if path.exists() else source)
    except (OSError, ValueError) as e:
        raise EncoderUnavailable(f"Could not load the {kind} encoder {source!r} ({str(e).splitlines()[0][:200]}). "
                                 + _how_to_get_them()) from None


def _clip_tokenizer(source: str):
    """The CLIP folder's own tokenizer; world CLIP folders keep theirs beside them (../tokenizer, or
    the base pipeline's, ../base/tokenizer). A tokenizer is saved as vocab.json + merges.txt or as
    tokenizer.json alone (what transformers 5 writes with a pipeline). A local folder without one is
    an error: transformers would otherwise build an empty tokenizer that reads every prompt as the
    same unknown tokens, and CLIP-T would silently measure nothing."""
    from transformers import CLIPTokenizer
    path = Path(source).expanduser()
    for cand in (path, path / "tokenizer", path.parent / "tokenizer", path.parent / "base" / "tokenizer"):
        if (cand / "vocab.json").is_file() or (cand / "tokenizer.json").is_file():
            return CLIPTokenizer.from_pretrained(str(cand))
    if path.is_dir():
        raise ValueError(f"no tokenizer (vocab.json or tokenizer.json) in {path}, its tokenizer/ subfolder or "
                         f"beside it ({path.parent / 'tokenizer'}, {path.parent / 'base' / 'tokenizer'})")
    return CLIPTokenizer.from_pretrained(source)       # a hub id in the local cache


def load_clip(source: str, device: str = "cpu") -> ClipEncoder:
    from transformers import CLIPModel

    from ..world import encoders as world

    folder = Path(source).expanduser()
    is_world = folder.is_dir() and is_world_encoder(folder)
    load = world.load_world_clip if is_world else (lambda s: CLIPModel.from_pretrained(s, dtype=torch.float32,
                                                                                   use_safetensors=True).eval())
    model = _load("CLIP", source, load).to(device)
    tokenizer = _load("CLIP tokenizer", source, _clip_tokenizer)

    def texts(prompts: Sequence[str]) -> Tensor:
        # pads to the longest prompt; truncates at the text tower's own length
        return world.clip_text_embeds(model, tokenizer, prompts)

    if is_world:
        return ClipEncoder(source, ImagePrep(world.SIZE, (0.5,) * 3, (0.5,) * 3, world=True),
                           lambda x: world.clip_image_embeds(model, x), device, texts)
    prep = _prep_from_folder(folder, model.config.vision_config.image_size, CLIP_MEAN, CLIP_STD)
    return ClipEncoder(source, prep, lambda x: model.get_image_features(pixel_values=x).pooler_output, device, texts)


def load_dino(source: str, device: str = "cpu") -> ImageEncoder:
    from transformers import ViTModel

    from ..world import encoders as world

    folder = Path(source).expanduser()
    if folder.is_dir() and is_world_encoder(folder):
        model = _load("DINO", source, world.load_instance_encoder).to(device)
        return ImageEncoder(source, ImagePrep(world.SIZE, (0.5,) * 3, (0.5,) * 3, world=True),
                            lambda x: world.instance_embeds(model, x), device)
    vit = _load("DINO", source, lambda s: ViTModel.from_pretrained(s, dtype=torch.float32, use_safetensors=True,
                                                                     add_pooling_layer=False).eval()).to(device)
    prep = _prep_from_folder(folder, vit.config.image_size, IMAGENET_MEAN, IMAGENET_STD)
    return ImageEncoder(source, prep, lambda x: vit(pixel_values=x).last_hidden_state[:, 0], device)




def world_dir_of(model: str | Path) -> Path | None:
    """The micro-world folder a model belongs to, or None for any other model: the world's base
    model (it has pretrain.json) or a `dreambooth train` output whose base model is one."""
    import yaml
    folder = Path(model)
    for _ in range(2):
        if (folder / "pretrain.json").is_file():
            return folder.parent
        config = folder / "dreambooth.yaml"
        if not config.is_file():
            return None
        base = (yaml.safe_load(config.read_text()) or {}).get("model", {}).get("pretrained_model_name_or_path")
        if not base:
            return None
        folder = Path(base)
    return None


def resolve_encoders(clip: str | None, dino: str | None, model: str | Path | None = None,
                     device: str = "cpu") -> Encoders:
    """Explicit flags first; for micro-world models the world's own encoders are the defaults."""
    if clip is None or dino is None:
        world = world_dir_of(model) if model is not None else None
        candidates = [d for d in (world, WORLD_MODELS) if d is not None]
        found = next((d for d in candidates if (d / "clip").is_dir() and (d / "instance").is_dir()), None)
        if world is None or found is None:
            missing = " and ".join(f"--{k}-model" for k, v in (("clip", clip), ("dino", dino)) if v is None)
            why = ("this is not a micro-world model, so the world's encoders do not apply" if world is None else
                   f"the micro world's encoders are not in {world} or {WORLD_MODELS} (run `dreambooth world pretrain`)")
            raise EncoderUnavailable(f"No encoder given for {missing}, and {why}. " + _how_to_get_them())
        clip = clip or str(found / "clip")
        dino = dino or str(found / "instance")
    return Encoders(load_clip(clip, device), load_dino(dino, device))
