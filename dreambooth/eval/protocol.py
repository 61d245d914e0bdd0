"""The paper's evaluation protocol (DreamBooth §4.1): DreamBench's 25 prompts per subject (one list
for objects, one for live subjects), the identifier substituted, K images per prompt with fixed
seeds, plus samples of the bare class prompt for prior preservation (PRES) and diversity (DIV).

Images are drawn through the same code as `dreambooth generate` (`core.generate.open_model` and
`render`), with the same seeds: image i of every prompt uses seed + i, so `dreambooth generate
--model M --prompt P --seed S -n K` redraws any row of the report. A cascade (MODEL/sr/, as
`dreambooth train --sr-model` writes it, or --sr-model) renders base -> SR, each base image the SR
model's low-res input under the same seed, as `dreambooth generate` does.

Prompt templates: DreamBench, from google/dreambooth `dataset/prompts_and_classes.txt`
(Ruiz et al., CVPR 2023), licensed CC-BY 4.0; "{0}" is the identifier, "{1}" the class noun.
"""

from __future__ import annotations

import gc
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from ..config import SAMPLERS
from ..core.identifier import default_prompts
from ..errors import DreamboothError

if TYPE_CHECKING:       # torch, diffusers and PIL load only when sampling starts: `--help` stays fast
    from PIL import Image

_SHARED = (  # the first ten prompts are the same in both lists: recontextualisation
    "a {0} {1} in the jungle", "a {0} {1} in the snow", "a {0} {1} on the beach",
    "a {0} {1} on a cobblestone street", "a {0} {1} on top of pink fabric", "a {0} {1} on top of a wooden floor",
    "a {0} {1} with a city in the background", "a {0} {1} with a mountain in the background",
    "a {0} {1} with a blue house in the background", "a {0} {1} on top of a purple rug in a forest",
)
_PROPERTIES = ("a red {0} {1}", "a purple {0} {1}", "a shiny {0} {1}", "a wet {0} {1}", "a cube shaped {0} {1}")

OBJECT_PROMPTS: tuple[str, ...] = _SHARED + (
    "a {0} {1} with a wheat field in the background", "a {0} {1} with a tree and autumn leaves in the background",
    "a {0} {1} with the Eiffel Tower in the background", "a {0} {1} floating on top of water",
    "a {0} {1} floating in an ocean of milk", "a {0} {1} on top of green grass with sunflowers around it",
    "a {0} {1} on top of a mirror", "a {0} {1} on top of the sidewalk in a crowded street",
    "a {0} {1} on top of a dirt road", "a {0} {1} on top of a white rug",
) + _PROPERTIES

LIVE_PROMPTS: tuple[str, ...] = _SHARED + (
    "a {0} {1} wearing a red hat", "a {0} {1} wearing a santa hat", "a {0} {1} wearing a rainbow scarf",
    "a {0} {1} wearing a black top hat and a monocle", "a {0} {1} in a chef outfit",
    "a {0} {1} in a firefighter outfit", "a {0} {1} in a police outfit", "a {0} {1} wearing pink glasses",
    "a {0} {1} wearing a yellow shirt", "a {0} {1} in a purple wizard outfit",
) + _PROPERTIES

# DreamBench's live subjects are its cats and dogs; other living things get the same list. Toys of
# them are objects, as DreamBench's "stuffed animal" plushies are: only the class's head noun counts.
LIVE_CLASSES = frozenset("""dog dogs puppy cat cats kitten pet bird parrot rabbit bunny hamster horse pony cow
sheep goat pig fox wolf bear lion tiger monkey person man woman boy girl child baby""".split())
PROMPT_LISTS = ("auto", "object", "live", "world")


def is_live(class_name: str) -> bool:
    words = class_name.lower().split()
    return bool(words) and words[-1] in LIVE_CLASSES


def world_prompts() -> tuple[str, ...]:
    """DreamBench's object prompts that the micro world can render: its 9 contexts and its colours."""
    from ..world.vocab import COLORS, CONTEXTS
    return tuple(t for t in OBJECT_PROMPTS if t.removeprefix("a {0} {1} ") in CONTEXTS
                 or any(t == f"a {c} {{0}} {{1}}" for c in COLORS))


def prompt_templates(class_name: str, kind: str = "auto", limit: int | None = None) -> tuple[str, ...]:
    """The protocol's templates for a class: the live-subject list for animals, else the object list."""
    if kind not in PROMPT_LISTS:
        raise DreamboothError(f"--prompt-list must be one of {', '.join(PROMPT_LISTS)}, got {kind!r}.")
    if kind == "auto":
        kind = "live" if is_live(class_name) else "object"
    templates = {"object": OBJECT_PROMPTS, "live": LIVE_PROMPTS}.get(kind) or world_prompts()
    if limit is not None and limit < 1:
        raise DreamboothError(f"--prompts must be at least 1, got {limit}.")
    return templates[:limit]


def fill(template: str, identifier: str, class_name: str) -> str:
    """'a {0} {1} in the snow' -> 'a sks dog in the snow'; an empty identifier leaves no double space."""
    return " ".join(template.format(identifier, class_name).split())


@dataclass
class Settings:
    """The protocol's knobs (CLI flags of `dreambooth eval`)."""
    prompts: int | None = None               # first N prompts of the list (None: all 25)
    images_per_prompt: int = 4               # the paper's 4
    class_images: int = 16                   # class-prompt samples for PRES and DIV
    steps: int = 25
    guidance_scale: float = 7.5
    seed: int = 0
    scheduler: str = "auto"
    prompt_list: str = "auto"
    batch_size: int = 8
    sr_model: str | None = None              # None: MODEL/sr/ when present; 'none': base only; or a folder
    sr_steps: int | None = None              # SR sampler steps (default: steps)

    def check(self) -> None:
        if self.images_per_prompt < 1 or self.steps < 1:
            raise DreamboothError("--images-per-prompt and --steps must be at least 1.")
        if self.class_images == 1 or self.class_images < 0:
            raise DreamboothError("--class-images must be 0 (skip PRES and DIV) or at least 2 (DIV compares pairs).")
        if self.scheduler not in SAMPLERS:
            raise DreamboothError(f"--scheduler must be one of {', '.join(SAMPLERS)}.")


@dataclass
class Samples:
    """One model's images under the protocol. Images are prompt-major: images[p * K + i]."""
    label: str                               # 'DreamBooth', 'base model', 'ideal renders', ...
    model: str                               # folder it came from (or a description)
    prompts: list[str]                       # as given to the model, identifier filled in
    texts: list[str]                         # as CLIP-T reads them: identifier removed
    images: list[Image.Image]
    prompt_index: list[int]                  # (N,) which prompt made each image
    seeds: list[int]                         # (N,)
    class_prompt: str | None = None
    class_images: list[Image.Image] = field(default_factory=list)
    class_seeds: list[int] = field(default_factory=list)
    seconds: float = 0.0
    sr_model: str | None = None              # the SR stage the images went through, if any
    low_res: list[Image.Image] = field(default_factory=list)   # a cascade's base-stage images (all, in draw order)


def read_class_prompt(model: str | Path, class_name: str) -> str:
    """The class prompt the model was trained to preserve (identifier.json), else 'a photo of <class>'."""
    path = Path(model) / "identifier.json"
    recorded = json.loads(path.read_text()).get("class_prompt") if path.is_file() else None
    return recorded or default_prompts("", class_name)[1]


def model_identifier(model: str | Path, given: str | None) -> str:
    """--identifier if given, else the one `dreambooth train` saved in the model folder."""
    from ..core.generate import read_identifier
    if given is not None:
        return given
    found = read_identifier(Path(model))
    if found is None:
        raise DreamboothError(f"{model} has no identifier.json (it was not made by `dreambooth train`), so the "
                              "protocol does not know the subject's identifier. Pass --identifier WORD.")
    return found


def sample_model(model: str | Path, templates: tuple[str, ...], *, identifier: str, class_name: str,
                 class_prompt: str | None, settings: Settings, label: str,
                 sr_model: str | None = None, low_res: list[Image.Image] | None = None) -> Samples:
    """Generate the protocol's images for one model (and its class-prompt samples when asked).
    sr_model: None = settings.sr_model (default MODEL/sr/ when present), 'none', or an SR folder.
    low_res: the base stage's images when already drawn (another Samples' `low_res` from the same
    model, prompts and seeds), so only the SR stage runs."""
    import torch

    from ..core.generate import find_sr_model, open_model, render

    start = time.time()
    k = settings.images_per_prompt
    prompts = [fill(t, identifier, class_name) for t in templates]
    texts = [fill(t, "", class_name) for t in templates]
    seeds = [settings.seed + i for _ in prompts for i in range(k)]
    class_seeds = [settings.seed + i for i in range(settings.class_images if class_prompt else 0)]
    # one stream for both sets: batches stay full; one seed per image, so batching changes no pixel
    todo = [p for p in prompts for _ in range(k)] + [class_prompt or ""] * len(class_seeds)
    sr_path = find_sr_model(str(model), sr_model or settings.sr_model)
    if low_res is None:
        base, _ = open_model(str(model))
        low_res = render(base, todo, seeds + class_seeds, steps=settings.steps,
                         guidance_scale=settings.guidance_scale, scheduler=settings.scheduler,
                         batch_size=settings.batch_size)
        del base                             # one pipeline in memory at a time
    drawn = upscale(sr_path, todo, seeds + class_seeds, low_res, settings) if sr_path else low_res
    if torch.cuda.is_available():            # the next model (--base-model) should not sit beside this one
        gc.collect()
        torch.cuda.empty_cache()
    index = [p for p in range(len(prompts)) for _ in range(k)]
    return Samples(label, str(model), prompts, texts, drawn[:len(seeds)], index, seeds, class_prompt,
                   drawn[len(seeds):], class_seeds, round(time.time() - start, 1), sr_path, low_res)


def upscale(sr_path: str, prompts: list[str], seeds: list[int], images: list[Image.Image],
            settings: Settings) -> list[Image.Image]:
    """Low-res images through an SR model, as `dreambooth generate` samples every cascade: the SR folder's
    recommended sampling (else the pipeline's defaults), --sr-steps over its step count."""
    from ..core.generate import open_model, render, sr_sampling
    sr, _ = open_model(sr_path)
    return render(sr, prompts, seeds, images=images, scheduler=settings.scheduler, batch_size=settings.batch_size,
                  **sr_sampling(sr, sr_path, steps=settings.sr_steps, noise_level=None, guidance_scale=None,
                                fallback_steps=settings.steps))
