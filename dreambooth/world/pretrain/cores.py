"""Cores freed by a finished lane go to the lanes still running.

`pretrain` runs its stages in one-thread lane processes, because two busy two-thread processes on a
shared 2-core CPU ran several times slower than two one-thread ones. But the lanes do not end
together (the base lane runs about an hour longer), and for that hour one core sat idle: one base
step took 2.19 s on one thread and 1.34 s on two (idle machine, docs/microworld.md). So a lane that
finishes leaves a marker, and a lane still training tries one more thread per finished lane. It
keeps them only if its next window of steps is faster: on a machine busy with other work, more
threads can be slower, and then it goes back to one.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import torch


def marker(out: Path, row: int) -> Path:
    return out / f".lane{row}.done"


def clear_markers(out: Path) -> None:
    """Before the lanes start: markers left by an earlier, interrupted run say nothing about this one."""
    for stale in out.glob(".lane*.done"):
        stale.unlink()


class CoreShare:
    """One per lane process; `after_window(seconds_per_step)` is called every few dozen steps."""

    def __init__(self, out: Path | None = None, row: int = 0, log: Callable[[str], object] = print):
        self.out, self.row, self.log = out, row, log
        self.before: float | None = None     # s/step before the thread count was last raised
        self.settled = False                 # more threads were slower here: stay at one

    def finished_lanes(self) -> int:
        if self.out is None:
            return 0
        return sum(1 for p in self.out.glob(".lane*.done") if p != marker(self.out, self.row))

    def after_window(self, seconds_per_step: float) -> None:
        if self.out is None or self.settled:
            return
        threads = torch.get_num_threads()
        if self.before is not None:          # judge the last raise
            if seconds_per_step >= self.before:
                torch.set_num_threads(1)
                self.settled = True
                self.log(f"{threads} threads: {seconds_per_step:.2f} s/step, not faster than "
                         f"{self.before:.2f} s/step on 1; back to 1 thread")
            else:
                self.log(f"{threads} threads: {seconds_per_step:.2f} s/step (was {self.before:.2f}); keeping them")
            self.before = None
            return
        want = min(1 + self.finished_lanes(), os.cpu_count() or 1)
        if want > threads:
            self.before = seconds_per_step
            torch.set_num_threads(want)
            self.log(f"another lane finished: trying {want} threads (now {seconds_per_step:.2f} s/step)")


# The lane process's own instance; `run.run_lane` points it at OUT and its row.
SHARE = CoreShare()
