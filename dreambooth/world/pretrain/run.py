"""`dreambooth world pretrain`: rebuild every micro-world model from seeds, stage by stage.

Each stage is skipped when its folder is complete, and the long stages resume from their own
checkpoints, so rerunning the same command after an interruption continues where it stopped.
Wall time per stage is appended to OUT/pretrain_log.json.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from ...tiny import build_clip_tokenizer
from ..vocab import world_words

# Steps of the shipped diffusion models: as long as the session that trained them could give them.
BASE_STEPS = 3500
SR_STEPS = 2000

STAGES = ("tokenizer", "text", "clip", "instance", "base", "sr")


@dataclass(frozen=True)
class Scale:
    text_steps: int
    clip_steps: int
    clip_batch: int
    clip_cache: int
    instance_steps: int
    base_steps: int
    base_batch: int
    sr_steps: int
    sr_batch: int
    sr_crop: int
    cache_size: int        # renders held in memory by the diffusion stages


SCALES = {
    # The shipped models, as they were trained: on the project's 2-core CPU (no GPU was lent), one
    # thread per stage, base and SR side by side. See docs/microworld.md for the times.
    "full": Scale(text_steps=300, clip_steps=600, clip_batch=64, clip_cache=10000, instance_steps=1500,
                  base_steps=BASE_STEPS, base_batch=32, sr_steps=SR_STEPS, sr_batch=16, sr_crop=32, cache_size=20000),
    # Exercises every code path in about a minute on a CPU (tests, smoke runs); the results are not useful models.
    "toy": Scale(text_steps=4, clip_steps=4, clip_batch=4, clip_cache=32, instance_steps=4, base_steps=4, base_batch=4,
                 sr_steps=4, sr_batch=4, sr_crop=0, cache_size=32),
}


def pretrain(out: Path, *, stages: tuple[str, ...] = STAGES, scale: str = "full", seed: int = 0,
             log: Callable[[str], None] = print) -> dict[str, float]:
    """Run the requested stages in order; returns seconds spent per stage this time."""
    from .clip import train_clip
    from .diffusion import DiffusionRun, train_diffusion
    from .instance import train_instance_encoder
    from .text import train_text_encoder

    s = SCALES[scale]
    out.mkdir(parents=True, exist_ok=True)
    tok = out / "tokenizer"

    def diffusion(kind: str, steps: int, batch_size: int, crop: int = 0) -> Path:
        run = DiffusionRun(kind=kind, scale=scale, steps=steps, batch_size=batch_size, cache_size=s.cache_size,
                           seed=seed, crop=crop, checkpoint_every=max(2, min(250, steps // 4)))
        return train_diffusion(run, out, tok, out / "text_encoder", log)

    work = {
        "tokenizer": lambda: tok if (tok / "vocab.json").exists() else build_clip_tokenizer(tok, world_words()),
        "text": lambda: train_text_encoder(out, tok, steps=s.text_steps, seed=seed, log=log,
                                           **({"batch_size": s.clip_batch, "pool": s.cache_size} if scale == "toy" else {})),
        "clip": lambda: train_clip(out, tok, steps=s.clip_steps, batch_size=s.clip_batch, seed=seed,
                                   cache_size=s.clip_cache, log=log),
        "instance": lambda: train_instance_encoder(out, steps=s.instance_steps, seed=seed, log=log),
        "base": lambda: diffusion("base", s.base_steps, s.base_batch),
        "sr": lambda: diffusion("sr", s.sr_steps, s.sr_batch, s.sr_crop),
    }
    spent = {}
    for stage in STAGES:
        if stage in stages:
            start = time.time()
            log(f"== {stage}")
            work[stage]()
            spent[stage] = round(time.time() - start, 1)
    record = out / "pretrain_log.json"
    history = json.loads(record.read_text()) if record.exists() else []
    history.append({"scale": scale, "seed": seed, "seconds": spent})
    record.write_text(json.dumps(history, indent=1))
    return spent
