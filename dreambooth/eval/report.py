"""The evaluation report: metrics.json, per-prompt tables (CSV), image grids and bar charts (PNG,
drawn with PIL, no plotting library) and a Markdown page that shows them all."""

from __future__ import annotations

import csv
import math
from collections.abc import Sequence
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

from .. import files
from .protocol import Samples
from .score import LABELS, METRICS, Figures

# DreamBooth paper, Table 1 (DINO / CLIP-I / CLIP-T): the reference bars of every chart.
PAPER_TABLE1: dict[str, dict[str, float | None]] = {
    "Real images (paper)": {"dino": 0.774, "clip_i": 0.885, "clip_t": None},
    "DreamBooth, Stable Diffusion (paper)": {"dino": 0.668, "clip_i": 0.803, "clip_t": 0.305},
    "Textual Inversion (paper)": {"dino": 0.569, "clip_i": 0.780, "clip_t": 0.255},
}
NOTES = (
    "DINO and CLIP-I: mean cosine similarity over all (generated, real) image pairs; CLIP-T: mean cosine "
    "between each prompt and its own images, the prompt read with the identifier removed (the rare token "
    "means nothing to the encoder).",
    "PRES: DINO similarity between the real subject images and the model's samples of the bare class prompt "
    "(lower = the class drifted less towards the subject).",
    "DIV-DINO: 1 - mean DINO similarity between distinct class-prompt samples. The paper measures diversity "
    "with LPIPS; no LPIPS weights are available here, so this DINO-based figure stands in for it and is not "
    "comparable with the paper's DIV numbers.",
)
PALETTE = [(66, 114, 196), (237, 125, 49), (112, 173, 71), (165, 165, 165), (255, 192, 0), (91, 155, 213),
           (158, 72, 14), (99, 99, 99)]
MIN_CELL = 96        # grid cells are upscaled (nearest) to at least this size: 32-px samples stay visible


def _font(size: int) -> ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError):            # Pillow built without FreeType: the fixed bitmap font
        return ImageFont.load_default()


def fmt(value: float | None) -> str:
    return "—" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.3f}"


# -- pictures -------------------------------------------------------------------------------

def labelled_grid(images: Sequence[Image.Image], labels: Sequence[str], cols: int,
                  label_width: int = 260) -> Image.Image:
    """Rows of `cols` images, each row with its label (a prompt) on the left."""
    rows = math.ceil(len(images) / cols)
    w, h = images[0].size
    scale = max(1, math.ceil(MIN_CELL / max(w, h)))
    cw, ch = w * scale, h * scale
    grid = Image.new("RGB", (label_width + cols * cw, rows * ch), "white")
    draw, font = ImageDraw.Draw(grid), _font(13)
    for r in range(rows):
        draw.multiline_text((6, r * ch + 6), _wrap(labels[r] if r < len(labels) else "", 34), fill="black", font=font)
    for i, im in enumerate(images):
        grid.paste(im.convert("RGB").resize((cw, ch), Image.NEAREST), (label_width + (i % cols) * cw, (i // cols) * ch))
    return grid


def _wrap(text: str, width: int) -> str:
    lines, line = [], ""
    for word in text.split():
        if line and len(line) + 1 + len(word) > width:
            lines.append(line)
            line = word
        else:
            line = f"{line} {word}".strip()
    return "\n".join(lines + [line])


def samples_grid(samples: Samples) -> Image.Image:
    k = len(samples.images) // max(1, len(samples.prompts))
    return labelled_grid(samples.images, samples.prompts, cols=k)


def class_grid(samples: Samples, cols: int = 8) -> Image.Image:
    cols = min(cols, len(samples.class_images))
    rows = math.ceil(len(samples.class_images) / cols)
    return labelled_grid(samples.class_images, [samples.class_prompt or ""] + [""] * (rows - 1), cols=cols)


def bar_chart(groups: Sequence[str], series: dict[str, Sequence[float | None]], title: str,
              y_max: float = 1.0) -> Image.Image:
    """Grouped bars: one group per metric, one bar per series (None: no bar), value printed on top."""
    bar_w, gap, left, top, plot_h = 26, 28, 48, 40, 260
    group_w = bar_w * len(series) + gap
    legend_h = 20 * len(series) + 10
    width = max(left + group_w * len(groups) + 20, 520)
    img = Image.new("RGB", (width, top + plot_h + 30 + legend_h), "white")
    draw, font, small = ImageDraw.Draw(img), _font(14), _font(11)
    draw.text((left, 10), title, fill="black", font=font)
    y0 = top + plot_h
    for tick in range(6):                                  # y axis: 0 .. y_max in 5 steps
        value = y_max * tick / 5
        y = y0 - plot_h * tick / 5
        draw.line([(left, y), (width - 10, y)], fill=(225, 225, 225))
        draw.text((4, y - 7), f"{value:.1f}", fill="black", font=small)
    for g, group in enumerate(groups):
        x = left + gap // 2 + g * group_w
        for s, values in enumerate(series.values()):
            value = values[g]
            if value is None or math.isnan(value):
                continue
            h = plot_h * max(0.0, min(value, y_max)) / y_max
            draw.rectangle([x + s * bar_w, y0 - h, x + (s + 1) * bar_w - 3, y0], fill=PALETTE[s % len(PALETTE)])
            draw.text((x + s * bar_w - 2, y0 - h - 13), f"{value:.2f}", fill="black", font=small)
        draw.text((x, y0 + 6), group, fill="black", font=font)
    for s, name in enumerate(series):
        y = y0 + 30 + 20 * s
        draw.rectangle([left, y, left + 14, y + 14], fill=PALETTE[s % len(PALETTE)])
        draw.text((left + 22, y), name, fill="black", font=small)
    return img


def paper_chart(rows: dict[str, Figures], title: str, real_self: dict[str, float] | None = None) -> Image.Image:
    """DINO / CLIP-I / CLIP-T of our rows (and of our real images against one another) next to the
    paper's Table 1."""
    keys = ("dino", "clip_i", "clip_t")
    series = {name: [getattr(f, k) for k in keys] for name, f in rows.items()}
    if real_self:
        series["real images vs one another"] = [real_self.get(k) for k in keys]
    series.update({name: [row[k] for k in keys] for name, row in PAPER_TABLE1.items()})
    return bar_chart([LABELS[k] for k in keys], series, title)


# -- tables -----------------------------------------------------------------------------------

def markdown_table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    cells = [[fmt(c) if c is None or isinstance(c, float) else str(c) for c in row] for row in rows]
    rule = "|" + "|".join("---" if i == 0 else "---:" for i in range(len(header))) + "|"     # numbers right-aligned
    lines = ["| " + " | ".join(header) + " |", rule]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in cells])


PROMPT_COLUMNS = ("dino", "clip_i", "clip_t", "dino_ideal")


def prompt_rows(prefix: Sequence[str], figures: Figures) -> list[list[str]]:
    """CSV rows for one model's per-prompt figures, each row starting with `prefix`."""
    def cell(v: float | None) -> str:       # CSV: an empty cell, not a dash, where there is no figure
        return "" if v is None or math.isnan(v) else f"{v:.4f}"
    return [[*prefix, row["prompt"], *(cell(row.get(c)) for c in PROMPT_COLUMNS), " ".join(map(str, row["seeds"]))]
            for row in figures.per_prompt]


def write_csv(path: Path, header: Sequence[str], rows: Sequence[Sequence[str]]) -> Path:
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow([*header, "prompt", *PROMPT_COLUMNS, "seeds"])
        writer.writerows(rows)
    return path


def figures_table(rows: dict[str, Figures], real_self: dict[str, float]) -> str:
    """The headline table: our rows, the real images against one another, the paper's Table 1."""
    keys = (*METRICS, *(k for k in ("dino_ideal", "context_read") if any(getattr(f, k) is not None
                                                                          for f in rows.values())))
    body: list[list[object]] = [[name, *(getattr(f, k) for k in keys)] for name, f in rows.items()]
    if real_self:
        body.append(["real images vs one another", *(real_self.get(k) for k in keys)])
    body += [[name, *(row.get(k) for k in keys)] for name, row in PAPER_TABLE1.items()]
    return markdown_table(["", *(LABELS[k] for k in keys)], body)


# -- the single-model report ----------------------------------------------------------------------

def write_report(out: Path, results: list[tuple[Samples, Figures]], *, real_self: dict[str, float], n_real: int,
                 command: str, settings: dict, encoders: dict[str, str], class_name: str) -> Path:
    """metrics.json, per_prompt.csv, grids, charts and report.md in `out`; returns report.md."""
    out.mkdir(parents=True, exist_ok=True)
    rows = {s.label: f for s, f in results}
    slugs = {s.label: _slug(s.label) for s, _ in results}
    record = {
        "command": command, "class_name": class_name, "settings": settings, "encoders": encoders,
        "real_images": {"count": n_real, **real_self},
        "models": {slugs[s.label]: {"label": s.label, "model": s.model, "figures": f.headline(),
                                    "prompts": s.prompts, "clip_t_texts": s.texts, "seeds": sorted(set(s.seeds)),
                                    "sr_model": s.sr_model, "class_prompt": s.class_prompt,
                                    "class_seeds": s.class_seeds,
                                    "sampling_seconds": s.seconds, "per_prompt": f.per_prompt}
                   for s, f in results},
        "paper_table1": PAPER_TABLE1, "notes": list(NOTES),
    }
    files.write_json(out / "metrics.json", record)
    write_csv(out / "per_prompt.csv", ["model"], [r for name, f in rows.items() for r in prompt_rows([name], f)])
    paper_chart(rows, "Subject and prompt fidelity vs the paper's Table 1", real_self).save(out / "chart_fidelity.png")
    md = [f"# DreamBooth evaluation: {class_name}", "", f"Command: `{command}`", "",
          f"{len(results[0][0].prompts)} prompts x {settings['images_per_prompt']} images, {settings['steps']} sampler "
          f"steps, guidance {settings['guidance_scale']}, seed {settings['seed']} (image i of each prompt: seed + i); "
          f"{n_real} real images. Encoders: CLIP `{encoders['clip']}`, DINO `{encoders['dino']}`.", "",
          figures_table(rows, real_self), "", "![fidelity](chart_fidelity.png)", ""]
    with_class = [(s, f) for s, f in results if f.pres is not None]
    if with_class:
        chart = bar_chart(["PRES", "DIV-DINO"], {s.label: [f.pres, f.div_dino] for s, f in with_class},
                          "Prior preservation and class diversity (class-prompt samples)")
        chart.save(out / "chart_prior.png")
        md += ["## Prior preservation and diversity", "", f"Class prompt: `{with_class[0][0].class_prompt}`.", "",
               "![prior](chart_prior.png)", ""]
    for s, f in results:
        samples_grid(s).save(out / f"grid_{slugs[s.label]}.png")
        stage = f" -> SR `{s.sr_model}`" if s.sr_model else ""
        size = "x".join(map(str, s.images[0].size))
        md += [f"## {s.label}: `{s.model}`{stage}", "", f"{size} px. ![{s.label}](grid_{slugs[s.label]}.png)", ""]
        if s.class_images:
            class_grid(s).save(out / f"class_{slugs[s.label]}.png")
            md += [f"Class-prompt samples: ![{s.label} class samples](class_{slugs[s.label]}.png)", ""]
        md += [markdown_table(["prompt", "DINO", "CLIP-I", "CLIP-T"],
                              [[r["prompt"], r["dino"], r["clip_i"], r["clip_t"]] for r in f.per_prompt]), ""]
    md += ["## Notes", "", *[f"- {n}" for n in NOTES], "",
           "Prompt templates: DreamBench (google/dreambooth, Ruiz et al. 2023), CC-BY 4.0.", ""]
    files.write_text(out / "report.md", "\n".join(md))
    return out / "report.md"


def _slug(label: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in label.lower()).strip("_")
