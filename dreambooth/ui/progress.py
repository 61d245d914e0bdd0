"""A run's progress, read from the events its worker wrote (events.jsonl) and the files it wrote:
stage, step, loss, speed and ETA, the loss curve, the validation previews."""

from __future__ import annotations

import html
import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from .runs import RunFolder

ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")   # tqdm's cursor moves for nested bars
RATE_WINDOW = 20   # steps over which it/s is measured: recent speed, not the average since loading


@dataclass
class Progress:
    stage: str = ""                 # 'step (a): base model', 'step (b): super-resolution'
    step: int = 0
    max_steps: int = 0
    loss: float | None = None
    rate: float | None = None       # steps per second
    identifier: str | None = None
    plans: list[str] = field(default_factory=list)
    losses: list[tuple[int, float]] = field(default_factory=list)   # this stage's (step, loss)
    class_images: tuple[int, int] | None = None   # (generated, to generate) while the prior's samples are drawn

    @property
    def eta(self) -> float | None:
        return (self.max_steps - self.step) / self.rate if self.rate else None


def stage_name(output_dir: str) -> str:
    return "step (b): super-resolution" if Path(output_dir).name == "sr" else "step (a): base model"


def read_events(run: RunFolder) -> list[dict]:
    try:
        lines = run.events.read_text().splitlines()
    except OSError:
        return []
    events = []
    for line in lines:
        try:
            events.append(json.loads(line))
        except ValueError:
            continue   # a line being written right now
    return events


def progress(run: RunFolder) -> Progress:
    p = Progress()
    times: list[tuple[int, float]] = []
    for e in read_events(run):
        if e.get("kind") == "plan":
            p.plans.append(e["text"])
            p.stage, p.identifier = stage_name(e["output_dir"]), e.get("identifier") or p.identifier
            p.step, p.max_steps, p.losses, times = e["start_step"], e["max_steps"], [], []
            p.class_images = None
        elif e.get("kind") == "class_images":
            p.class_images = (e["done"], e["total"])
        elif e.get("kind") == "step":
            p.class_images = None
            p.step, p.max_steps, p.loss = e["step"], e["max_steps"], e["loss"]
            p.losses.append((e["step"], e["loss"]))
            times.append((e["step"], e["time"]))
    recent = times[-RATE_WINDOW:]
    if len(recent) >= 2 and recent[-1][1] > recent[0][1]:
        p.rate = (recent[-1][0] - recent[0][0]) / (recent[-1][1] - recent[0][1])
    return p


def previews(run: RunFolder) -> list[tuple[str, str]]:
    """Validation grids as written, (path, caption), step (a) then step (b)."""
    found = []
    for folder, label in ((run.model / "validation", "base"), (run.model / "sr" / "validation", "SR")):
        found += [(str(p), f"{label} {p.stem}") for p in sorted(folder.glob("step-*.png"))]
    return found


def _clock(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    s = int(seconds)
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60}:{s % 60:02d}"


def bar_html(p: Progress, state: str) -> str:
    """The progress bar with step, loss, it/s and ETA (plain HTML: no script, values escaped)."""
    if p.class_images is not None:   # before step 1 with prior preservation: minutes of sampling
        done, total = p.class_images
        return (f"<div id='db-progress'><div>generating class images for prior preservation: <b>{done}</b> / {total}"
                f" &middot; {html.escape(state)}</div>{_bar(100 * done / max(total, 1))}</div>")
    if not p.max_steps:
        return f"<div id='db-progress'>{html.escape(state)}: no training step yet.</div>"
    pct = 100 * p.step / p.max_steps
    loss = f"{p.loss:.4f}" if p.loss is not None else "-"
    rate = f"{p.rate:.2f} it/s" if p.rate else "- it/s"
    return (f"<div id='db-progress'><div>{html.escape(p.stage)}: step <b id='db-step'>{p.step}</b> / {p.max_steps}"
            f" &middot; loss <b>{loss}</b> &middot; {rate} &middot; ETA {_clock(p.eta)} &middot; {html.escape(state)}"
            f"</div>{_bar(pct)}</div>")


def _bar(pct: float) -> str:
    return (f"<div style='background:#ddd;height:14px;border-radius:7px'><div style='background:#f97316;"
            f"height:14px;border-radius:7px;width:{pct:.1f}%'></div></div>")


def curve_svg(points: list[tuple[int, float]], width: int = 480, height: int = 160) -> str:
    """The loss curve as an inline SVG polyline (no plotting library needed)."""
    if len(points) < 2:
        return "<div id='db-curve'>The loss curve appears after two steps.</div>"
    xs, ys = [s for s, _ in points], [v for _, v in points]
    x0, x1, y0, y1 = min(xs), max(xs), min(ys), max(ys)
    sx = (width - 50) / max(x1 - x0, 1)
    sy = (height - 30) / ((y1 - y0) or 1.0)
    coords = " ".join(f"{40 + (x - x0) * sx:.1f},{10 + (y1 - y) * sy:.1f}" for x, y in points)
    return (f"<svg id='db-curve' width='{width}' height='{height}' xmlns='http://www.w3.org/2000/svg'>"
            f"<text x='0' y='14' font-size='11'>{y1:.3g}</text><text x='0' y='{height - 20}' font-size='11'>{y0:.3g}"
            f"</text><text x='40' y='{height - 4}' font-size='11'>step {x0}</text><text x='{width - 60}' "
            f"y='{height - 4}' font-size='11'>step {x1}</text><polyline fill='none' stroke='#f97316' stroke-width='1.5'"
            f" points='{coords}'/></svg>")


def log_tail(run: RunFolder, lines: int = 40) -> str:
    """The end of the worker's output, progress-bar redraws (carriage returns) collapsed to their last state."""
    try:
        text = ANSI.sub("", run.log.read_text(errors="replace"))
    except OSError:
        return ""
    shown = [line.split("\r")[-1] for line in text.split("\n")[-lines:]]   # not splitlines: it splits at \r
    return "\n".join(s for s in shown if s.strip())[-8000:]
