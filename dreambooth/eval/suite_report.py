"""The micro-world suite's report: the four comparisons averaged over subjects, the issue's targets
as ratios, per-subject tables and grids, metrics.json and a per-prompt CSV."""

from __future__ import annotations

from pathlib import Path

from PIL import Image

from .. import files
from .report import NOTES, bar_chart, fmt, labelled_grid, markdown_table, paper_chart, prompt_rows, write_csv
from .detail import DETAIL_KEYS
from .score import LABELS, Figures, mean_figures

BASE, IDEAL = "base", "ideal"
GRID_PROMPTS = 3            # prompts shown per variant in a subject's grid
UPSCALERS = ("bicubic", "untouched", "finetuned")


def _ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None or b == 0 else a / b


def targets(means: dict[str, dict]) -> list[list[object]]:
    """The issue's targets as rows: [what, ours, reference, ratio, goal, met], for DreamBooth as the paper
    trains it and, when run, with each photo trained on its caption."""
    rows = []
    for ours, how in (("dreambooth", ""), ("captions", ", photos captioned")):
        if ours not in means and ours != "dreambooth":
            continue
        for what, ref, key, goal in (
                ("subject fidelity (DINO) vs the ideal renders'", IDEAL, "dino", 0.90),
                ("prompt fidelity (CLIP-T) vs the base model's", BASE, "clip_t", 0.95),
                ("prompt fidelity (context read by micro-CLIP) vs the base model's", BASE, "context_read", 0.95),
                ("class diversity (DIV-DINO, with prior preservation) vs the base model's", BASE, "div_dino", 0.90)):
            a, b = means.get(ours, {}).get(key), means.get(ref, {}).get(key)
            if a is None and b is None:
                continue                  # a figure these encoders do not give (context read: world only)
            r = _ratio(a, b)
            rows.append([what + how, a, b, r, f">= {goal:.2f}", "—" if r is None else ("yes" if r >= goal else "no")])
    return rows


def detail_summary(results: dict) -> dict | None:
    """Step (b) on known low-res inputs (eval/detail.py), over subjects: the per-subject figures, their
    means, and on how many subjects the fine-tuned SR beat the untouched one on each figure."""
    done = {s: r["detail"] for s, r in results.items() if r.get("detail")}
    if not done:
        return None
    means = {up: {k: sum(d[up][k] for d in done.values()) / len(done) for k in DETAIL_KEYS} for up in UPSCALERS}
    better = {k: [s for s, d in done.items() if d["finetuned"][k] > d["untouched"][k]] for k in DETAIL_KEYS}
    return {"subjects": done, "mean": means, "finetuned_better": better}


def detail_target(detail: dict | None) -> list[list[object]]:
    """Issue 9's step (b) point as a row: the share of subjects whose detail the fine-tuned SR improved."""
    if not detail:
        return []
    n, better = len(detail["subjects"]), len(detail["finetuned_better"]["dino"])
    return [["subjects where the fine-tuned SR beats the untouched one on detail (instance similarity, "
             "known low-res inputs)", better, n, better / n, "> 0.50", "yes" if better / n > 0.5 else "no"]]


def _sr_section(means: dict[str, dict], labels: dict[str, str], config: dict, detail: dict | None) -> list[str]:
    if "sr_finetuned" not in means:
        return ["Not run: the world has no SR model (sr/), or the sr_finetuned variant was not selected."]
    lines = [f"Both rows share DreamBooth's step (a) model; the first goes through the world's untouched SR "
             f"model, the second through an SR model fine-tuned on the same photos "
             f"({config['sr_train_steps']} steps). Images at 64 px.", "",
             comparison(means, labels, ("dreambooth", "sr_finetuned"), ("dino", "clip_i", "clip_t", "dino_ideal"))]
    if detail:
        n = len(detail["subjects"])
        def row(label: str, d: dict) -> list[str]:       # similarities differ in the 4th digit
            return [label, f"{d['psnr']:.2f}", f"{d['dino']:.5f}"]
        rows = [row(f"{s}: {up}", d[up]) for s, d in detail["subjects"].items() for up in UPSCALERS]
        rows += [row(f"mean: {up}", detail["mean"][up]) for up in UPSCALERS]
        lines += ["", "**Detail on known inputs.** The rows above go through what the base drew, which varies "
                  "far more than what an SR model adds. Here the subject's ideal renders of the same prompts, "
                  "box-filtered to the base's size, are upscaled bicubically, by the untouched SR and by the "
                  "fine-tuned SR, and scored against the ideal render: the fine-tuned SR is better on instance "
                  f"similarity for {len(detail['finetuned_better']['dino'])} of {n} subject(s) and on PSNR for "
                  f"{len(detail['finetuned_better']['psnr'])} of {n}.", "",
                  markdown_table(["subject: upscaler", "PSNR (dB)", "instance similarity"], rows)]
    return lines


def comparison(means: dict[str, dict], labels: dict[str, str], names: tuple[str, ...], keys: tuple[str, ...]) -> str:
    rows = [[labels.get(n, n), *(means[n].get(k) for k in keys)] for n in names if n in means]
    return markdown_table(["", *(LABELS[k] for k in keys)], rows)


def subject_grid(samples: dict, labels: dict[str, str]) -> Image.Image:
    """Rows = variants (ideal first), columns = the first prompts' images."""
    order = [IDEAL, BASE] + [n for n in samples if n not in (IDEAL, BASE)]
    images, row_labels = [], []
    for name in order:
        s = samples[name]
        shown = [im for im, p in zip(s.images, s.prompt_index) if p < GRID_PROMPTS]
        images += shown
        row_labels.append(labels.get(name, name))
    cols = len(images) // len(order)
    return labelled_grid(images, row_labels, cols=cols)


def row_labels(variant_labels: dict[str, str]) -> dict[str, str]:
    return {IDEAL: "ideal renders (upper bound)", BASE: "base model, '[V] class' (no fine-tuning)", **variant_labels}


def write_suite_report(out: Path, results: dict, *, config: dict, command: str, wall_seconds: float,
                       variant_labels: dict[str, str]) -> Path:
    """`results`: subject -> {figures, grid (its subject_grid image), seconds, real_self, output_mib}."""
    out.mkdir(parents=True, exist_ok=True)
    labels = row_labels(variant_labels)
    names = list(next(iter(results.values()))["figures"])
    means = {n: mean_figures([r["figures"][n] for r in results.values()]) for n in names}
    detail = detail_summary(results)
    goals = targets(means) + detail_target(detail)
    record = {
        "command": command, "config": config, "wall_seconds": wall_seconds,
        "mean_over_subjects": means, "targets": goals,
        "step_b_detail": detail,
        "subjects": {s: {"seconds": r["seconds"], "output_mib": r.get("output_mib", {}),
                         "photos_vs_one_another": r["real_self"],
                         "figures": {n: f.headline() for n, f in r["figures"].items()},
                         "per_prompt": {n: f.per_prompt for n, f in r["figures"].items()}}
                     for s, r in results.items()},
        "notes": list(NOTES),
    }
    files.write_json(out / "metrics.json", record)
    write_csv(out / "per_prompt.csv", ["subject", "variant"], [row for subject, r in results.items()
                                                               for n, f in r["figures"].items()
                                                               for row in prompt_rows([subject, n], f)])

    as_figures = {labels[n]: Figures(**{k: v for k, v in means[n].items() if k in Figures.__dataclass_fields__})
                  for n in names if n in (IDEAL, BASE, "dreambooth")}
    paper_chart(as_figures, "Micro world, mean over subjects, vs the paper's Table 1").save(out / "chart_fidelity.png")
    prior = [n for n in (BASE, "dreambooth", "captions", "no_prior") if n in means]
    bar_chart(["PRES", "DIV-DINO"], {labels[n]: [means[n]["pres"], means[n]["div_dino"]] for n in prior},
              "Prior preservation and class diversity").save(out / "chart_prior.png")
    ident = [n for n in ("dreambooth", "common_word", "no_identifier") if n in means]
    bar_chart(["DINO", "CLIP-I", "CLIP-T", "DINO vs ideal"],
              {labels[n]: [means[n][k] for k in ("dino", "clip_i", "clip_t", "dino_ideal")] for n in ident},
              "Identifier: rare token vs common word vs none").save(out / "chart_identifier.png")

    s = config["settings"]
    md = ["# Micro-world evaluation suite", "",
          f"Command: `{command}`", "",
          f"{len(results)} subject(s): {', '.join(results)}. Per subject: {config['photos']} photos, "
          f"{s['prompts'] or 'all'} world prompts x {s['images_per_prompt']} images, {s['class_images']} class "
          f"samples, {s['steps']} sampler steps, guidance {s['guidance_scale']}, seed {s['seed']} (image i of "
          f"each prompt: seed + i). Training: {config['train_steps']} steps of "
          f"{config.get('preset', {}).get('train_batch_size', 1)} photo(s) at lr {config['learning_rate']}, "
          f"{config['num_class_images']} class images, "
          + ("each photo on its caption (no_identifier: one prompt)" if config.get("captions")
             else "one prompt for every photo, as the paper") + ". Images: "
          + (f"base -> SR (`{config['sr_folder']}`, untouched unless said) at 64 px" if config["sr_folder"]
             else "the base model's own output") + f". Wall time {wall_seconds:.0f} s"
          + (f" (not counting {', '.join(config['reused'])}: reused from an earlier run)" if config.get("reused")
             else "") + ".", "",
          "## Targets (issue 5)", "",
          markdown_table(["", "ours", "reference", "ratio", "target", "met"], goals), "",
          "## 1. Base model vs DreamBooth vs ideal renders", "",
          comparison(means, labels, (IDEAL, BASE, "dreambooth", "captions"),
                     ("dino", "clip_i", "clip_t", "context_read", "dino_ideal")), "",
          "![fidelity](chart_fidelity.png)", "",
          "## 2. Prior preservation", "", comparison(means, labels, tuple(prior), ("pres", "div_dino")), "",
          "![prior](chart_prior.png)", "",
          "## 3. Super-resolution fine-tuning (step b)", "", *_sr_section(means, labels, config, detail), "",
          "## 4. Identifier", "",
          comparison(means, labels, tuple(ident), ("dino", "clip_i", "clip_t", "dino_ideal")), "",
          "![identifier](chart_identifier.png)", "", "## Per subject", ""]
    for subject, r in results.items():
        r["grid"].save(out / f"grid_{subject}.png")
        keys = ("dino", "clip_i", "clip_t", "context_read", "pres", "div_dino", "dino_ideal")
        rows = [[labels.get(n, n), *(getattr(f, k) for k in keys)] for n, f in r["figures"].items()]
        md += [f"### {subject}", "", markdown_table(["", *(LABELS[k] for k in keys)], rows), "",
               f"Photos vs one another: DINO {fmt(r['real_self'].get('dino'))}, CLIP-I "
               f"{fmt(r['real_self'].get('clip_i'))}. Seconds: "
               + ", ".join(f"{k} {v}" for k, v in r["seconds"].items()), "",
               f"![{subject}](grid_{subject}.png)", ""]
    md += ["## Notes", "", *[f"- {n}" for n in NOTES],
           "- 'DINO vs ideal': mean DINO (instance encoder) similarity between a prompt's samples and the ideal "
           "renders of the same prompt, at the model's output size.", "",
           "Prompt templates: DreamBench (google/dreambooth, Ruiz et al. 2023), CC-BY 4.0.", ""]
    files.write_text(out / "report.md", "\n".join(md))
    return out / "report.md"
