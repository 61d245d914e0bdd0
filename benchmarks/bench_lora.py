"""LoRA against full DreamBooth on CPU, side by side in one run: training steps/s, peak RSS, output size.

Same job as bench_train.py (the ~24.5M-parameter SD-shaped 'bench' model with random weights, 128 px,
prior preservation with 8 class images generated from an empty folder, 40 steps, the dog photos), run by
`dreambooth train` as a fresh process per variant: full fine-tuning, then LoRA at two ranks. Reuses
bench_train.py's runner (wall time, steps/s between the first and last step, peak RSS, other load), and
reports the CPU time per training step too, which stays comparable on a machine other jobs load.
Figures: docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_train import REPO, Result, fmt, measure, median  # noqa: E402

VARIANTS = [("full", "ours", []), ("LoRA rank 4", "ours", ["--lora", "--rank=4"]),
            ("LoRA rank 16", "ours", ["--lora", "--rank=16"])]


def table(results: list[Result]) -> str:
    rows = ["| variant | train CPU s/step | train steps/s | wall s | peak RSS MiB | exported weights MiB | checkpoint MiB "
            "| other load (cores, max) | runs |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for name, _, _ in VARIANTS:
        rs = [r for r in results if r.tool == name and r.returncode == 0]
        if not rs:
            continue
        cells = [name, fmt(median(rs, "train_cpu_s_per_step"), 3), fmt(median(rs, "train_steps_per_s"), 2), fmt(median(rs, "wall_s")),
                 fmt(median(rs, "peak_rss_mib"), 0), fmt(median(rs, "output_mib"), 2),
                 fmt(median(rs, "checkpoint_mib"), 2), fmt(max(r.other_load_cores for r in rs), 2), str(len(rs))]
        rows.append("| " + " | ".join(cells) + " |")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--photos", default=str(REPO.parent / "shared" / "dreambench" / "dog"), help="instance photos")
    ap.add_argument("--model", help="SD pipeline folder (default: build the 'bench' tiny model in a temp folder)")
    ap.add_argument("--repeats", type=int, default=1, help="runs per variant, interleaved; the table shows medians")
    ap.add_argument("--steps", type=int, default=40, help="training steps")
    ap.add_argument("--threads", default="1", help="OMP_NUM_THREADS for every run")
    ap.add_argument("--class-inference-steps", type=int, default=25,
                    help="sampler steps per class image (the same for every variant; fewer shortens each run)")
    ap.add_argument("--wait-quiet", type=float, default=0, metavar="SECONDS",
                    help="before each run, wait up to this long for other processes to go idle; rerun disturbed runs")
    ap.add_argument("--json", help="write all runs (with phases and log tails) here")
    args = ap.parse_args(argv)
    args.diffusers_script = args.torchvision_dir = None      # what bench_train's runner reads
    variants = [(name, kind, extra + [f"--class_inference_steps={args.class_inference_steps}"])
                for name, kind, extra in VARIANTS]
    results = measure(variants, args, table)
    print(table(results))
    return 0 if all(r.returncode == 0 for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
