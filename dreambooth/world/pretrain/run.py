"""`dreambooth world pretrain`: rebuild every micro-world model from seeds, stage by stage.

Each stage is skipped when its folder is complete, and the long stages resume from their own
checkpoints, so rerunning the same command after an interruption continues where it stopped.
After the tokenizer and the text encoder (which everything else reads), the stages run in two
side-by-side processes of one thread each ("lanes"): on a 2-core CPU two one-thread processes do
more work than one two-thread process (measured, docs/microworld.md). Wall time per stage is
appended to OUT/pretrain_log.json; each lane's log is OUT/pretrain-lane<N>.log.
"""

from __future__ import annotations

import json
import multiprocessing
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from ...tiny import build_clip_tokenizer
from ..vocab import world_words

STAGES = ("tokenizer", "text", "clip", "instance", "base", "sr")
FIRST = ("tokenizer", "text")                         # every later stage reads their output
LANES = (("base",), ("clip", "instance", "sr"))       # sized so both lanes take about as long


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
    # The shipped models: `dreambooth world pretrain --out dreambooth/world/models` on the project's
    # 2-core CPU, within the 2-hour budget (times in docs/microworld.md).
    "full": Scale(text_steps=300, clip_steps=800, clip_batch=128, clip_cache=20000, instance_steps=1000,
                  base_steps=4000, base_batch=32, sr_steps=1500, sr_batch=16, sr_crop=32, cache_size=20000),
    # Exercises every code path in about a minute on a CPU (tests, smoke runs); the results are not useful models.
    "toy": Scale(text_steps=4, clip_steps=4, clip_batch=4, clip_cache=32, instance_steps=4, base_steps=4, base_batch=4,
                 sr_steps=4, sr_batch=4, sr_crop=0, cache_size=32),
}


def run_stage(stage: str, out: Path, scale: str, seed: int, log: Callable[[str], None]) -> None:
    from .clip import train_clip
    from .diffusion import DiffusionRun, train_diffusion
    from .instance import train_instance_encoder
    from .text import train_text_encoder

    s, tok = SCALES[scale], out / "tokenizer"

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
    work[stage]()


def run_lane(stages: tuple[str, ...], out: Path, scale: str, seed: int, row: int | None = None,
             log: Callable[[str], None] = print) -> dict[str, float]:
    """Run `stages` in order here; -> seconds per stage. `row` set: this is a lane process of its
    own (one thread, progress bars on that row, messages into OUT/pretrain-lane<row>.log)."""
    if row is not None:
        import torch

        from . import common, cores
        torch.set_num_threads(1)
        common.PROGRESS_ROW = row
        lane_log = out / f"pretrain-lane{row}.log"

        def log(msg: str) -> None:
            with lane_log.open("a") as f:
                f.write(f"{time.strftime('%H:%M:%S')} {msg}\n")
        cores.SHARE = cores.CoreShare(out, row, log)
    spent = {}
    for stage in stages:
        start = time.time()
        log(f"== {stage}")
        run_stage(stage, out, scale, seed, log)
        spent[stage] = round(time.time() - start, 1)
    if row is not None:
        cores.marker(out, row).touch()       # the lanes still running may take this core
    return spent


def pretrain(out: Path, *, stages: tuple[str, ...] = STAGES, scale: str = "full", seed: int = 0,
             parallel: bool = True, log: Callable[[str], None] = print) -> dict[str, float]:
    """Run the requested stages; returns seconds spent per stage this time (and the total wall)."""
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    if parallel:   # the first stages, too, on one thread: two busy threads on a shared 2-core CPU ran 6x slower
        import torch
        torch.set_num_threads(1)
    spent = run_lane(tuple(s for s in FIRST if s in stages), out, scale, seed, log=log)
    lanes = [tuple(s for s in lane if s in stages) for lane in LANES]
    lanes = [lane for lane in lanes if lane]
    if parallel and len(lanes) > 1:
        log(f"running {' | '.join(' -> '.join(lane) for lane in lanes)} side by side (logs: {out}/pretrain-lane*.log)")
        from .cores import clear_markers
        clear_markers(out)
        with multiprocessing.get_context("spawn").Pool(len(lanes)) as pool:
            jobs = [pool.apply_async(run_lane, (lane, out, scale, seed, row)) for row, lane in enumerate(lanes)]
            for job in jobs:
                spent.update(job.get())
            pool.close()   # let the workers exit on their own: terminate() (the with-block's exit) leaves their
            pool.join()    # progress-bar locks to the resource tracker, which warns about "leaked semaphores"
    else:
        for lane in lanes:
            spent.update(run_lane(lane, out, scale, seed, log=log))
    spent["wall"] = round(time.time() - t0, 1)
    record = out / "pretrain_log.json"
    history = json.loads(record.read_text()) if record.exists() else []
    history.append({"scale": scale, "seed": seed, "parallel": parallel, "seconds": spent})
    tmp = record.with_suffix(".tmp")
    tmp.write_text(json.dumps(history, indent=1))
    tmp.replace(record)
    return spent
