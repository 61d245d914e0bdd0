"""End-to-end DreamBooth benchmark on CPU: `dreambooth train` against diffusers' train_dreambooth.py.

Both tools get the same job (prior preservation, 8 class images generated from an empty folder, 40 steps,
128 px) on the same random-weight ~24.5M-parameter SD-shaped model, photos and environment, each as its own
process in a fresh temporary folder. Per run: wall time (process start to exit), training steps/s, peak RSS
and a phase timeline read from the tools' progress bars. Figures and commands: docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import bisect
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import psutil

REPO = Path(__file__).resolve().parents[1]
PROMPT, CLASS_PROMPT = "a photo of sks dog", "a photo of dog"

# PyPI's torchvision wheels are CUDA builds whose compiled ops do not load against a CPU-only torch.
# The diffusers script needs only torchvision.transforms (pure Python), so this wrapper registers the
# package without running its __init__ (which loads the ops) and then runs the script unchanged.
TV_WRAPPER = """import importlib.machinery, importlib.metadata, importlib.util, runpy, sys
tv_dir, script = sys.argv[1:3]
tv = importlib.util.module_from_spec(importlib.machinery.PathFinder.find_spec("torchvision", [tv_dir]))
# diffusers and transformers read the version to decide what torchvision can do
tv.__version__ = next(importlib.metadata.distributions(name="torchvision", path=[tv_dir])).version
sys.modules["torchvision"] = tv
sys.argv = sys.argv[2:]
runpy.run_path(script, run_name="__main__")
"""


@dataclass
class Result:
    tool: str
    repeat: int
    returncode: int
    wall_s: float
    train_steps_per_s: float | None
    peak_rss_mib: float
    cpu_s: float                   # user + sys of the tool's process (and any children it waited for)
    other_load_cores: float        # CPU used by everything else on the machine during the run, in cores
    phases: dict[str, float]       # seconds since process start, read from progress-bar output
    log: str
    train_cpu_s_per_step: float | None = None   # CPU time per training step (robust to other load)
    output_mib: float = 0.0        # exported weights: every .safetensors in the output folder but checkpoints
    checkpoint_mib: float = 0.0    # the last resumable checkpoint


def output_sizes(out: Path) -> tuple[float, float]:
    """(exported weights, last checkpoint) in MiB."""
    def mib(files) -> float:
        return round(sum(f.stat().st_size for f in files) / 2**20, 2)
    ckpts = sorted(out.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1])) if out.is_dir() else []
    exported = [f for f in out.rglob("*.safetensors") if not f.relative_to(out).parts[0].startswith("checkpoint-")]
    return mib(exported), mib(ckpts[-1].rglob("*")) if ckpts else 0.0


def command(kind: str, extra: list[str], root: Path, model: Path, args: argparse.Namespace) -> list[str]:
    # The issue's flags, spelled the way both tools accept them. report_to=tensorboard is both tools'
    # default; diffusers' script rejects "none" (accelerate has no such tracker). class_images/ does not
    # exist yet, so both tools generate all 8 class images.
    flags = [f"--pretrained_model_name_or_path={model}", f"--instance_data_dir={Path(args.photos).resolve()}",
             f"--output_dir={root / 'out'}", f"--instance_prompt={PROMPT}", "--resolution=128", "--train_batch_size=1",
             "--gradient_accumulation_steps=1", "--learning_rate=5e-6", "--lr_scheduler=constant",
             "--lr_warmup_steps=0", f"--max_train_steps={args.steps}", "--with_prior_preservation",
             f"--class_data_dir={root / 'class_images'}", f"--class_prompt={CLASS_PROMPT}", "--num_class_images=8",
             "--report_to=tensorboard", "--mixed_precision=no"]
    if kind == "ours":
        return [sys.executable, "-m", "dreambooth", "train", *flags, *extra]
    script = str(Path(args.diffusers_script).resolve())
    if args.torchvision_dir:
        return [sys.executable, "-c", TV_WRAPPER, str(Path(args.torchvision_dir).resolve()), script, *flags]
    return [sys.executable, script, *flags]


# Progress-bar labels: (class-image bar, training bar) for each tool.
BARS = {"ours": (r"class images:", r"train:"), "diffusers": (r"Generating class images:", r"Steps:")}
COUNT = re.compile(r"\|\s*(\d+)/(\d+)\s*\[")
QUIET = 0.2   # cores used by other processes below which a run counts as undisturbed


def timeline(lines: list[tuple[float, str]], kind: str) -> tuple[dict[str, float], float | None]:
    """Phase boundaries and training steps/s from timestamped progress-bar redraws. Steps/s runs from the
    first redraw showing step 1 to the first showing step N-1: the first step (lazy init, allocator warm-up)
    and the last (where our trainer also writes its final checkpoint) are excluded in both tools."""
    cls_re, train_re = (re.compile(r"^\s*" + b) for b in BARS[kind])
    phases: dict[str, float] = {}
    seen: dict[int, float] = {}
    total = 0
    for t, text in lines:
        if cls_re.match(text):
            phases.setdefault("class_start", t)
            phases["class_end"] = t
        elif train_re.match(text):
            phases.setdefault("train_start", t)
            phases["train_end"] = t
            m = COUNT.search(text)
            if m:
                seen.setdefault(int(m.group(1)), t)
                total = int(m.group(2))
    ok = total > 2 and 1 in seen and total - 1 in seen
    if ok:   # the timed window, for the CPU time spent in it
        phases.update(timed_from=seen[1], timed_to=seen[total - 1], timed_steps=total - 2)
    return phases, ((total - 2) / (seen[total - 1] - seen[1]) if ok else None)


def cpu_per_step(phases: dict[str, float], cpu: list[tuple[float, float]]) -> float | None:
    """CPU seconds of the process per training step over the timed window, interpolated from samples
    of (seconds since start, CPU seconds so far): unlike steps/s, it does not count time spent waiting
    for a core that other processes hold."""
    if "timed_steps" not in phases or len(cpu) < 2:
        return None
    times, used = zip(*cpu)

    def at(t: float) -> float:
        i = min(max(bisect.bisect_left(times, t), 1), len(times) - 1)
        (t0, c0), (t1, c1) = cpu[i - 1], cpu[i]
        return c0 + (c1 - c0) * (t - t0) / max(t1 - t0, 1e-9)
    return (at(phases["timed_to"]) - at(phases["timed_from"])) / phases["timed_steps"]


def busy_jiffies() -> int:
    # /proc/stat cpu line: user nice system idle iowait irq softirq steal ...; count all but idle/iowait.
    f = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    return f[0] + f[1] + f[2] + f[5] + f[6] + f[7]


def wait_quiet(max_wait: float, limit: float = QUIET) -> None:
    """Start only once other processes use < `limit` cores: a busy neighbour slows 2 OMP threads several-fold."""
    deadline = time.time() + max_wait
    while time.time() < deadline:
        j = busy_jiffies()
        time.sleep(5)   # this process is idle meanwhile, so all busy time is someone else's
        if (busy_jiffies() - j) / os.sysconf("SC_CLK_TCK") / 5 < limit:
            return
    print(f"warning: the machine stayed busy for {max_wait:.0f} s; timing anyway", file=sys.stderr)


def run_once(name: str, kind: str, extra: list[str], repeat: int, args: argparse.Namespace, model: Path,
             env: dict[str, str]) -> Result:
    with tempfile.TemporaryDirectory(prefix=f"bench-{kind}-") as tmp:
        cmd = command(kind, extra, Path(tmp), model, args)
        lines: list[tuple[float, str]] = []
        j0, t0 = busy_jiffies(), time.perf_counter()
        proc = subprocess.Popen(cmd, cwd=tmp, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        assert proc.stdout is not None

        def read(fd: int) -> None:
            # tqdm redraws as '\r' + text, with no terminator until the next redraw, in one flushed write
            # (atomic on a pipe): each piece of a chunk is complete on arrival, so stamp it with that time.
            while chunk := os.read(fd, 65536):
                now = time.perf_counter() - t0
                lines.extend((now, p.decode(errors="replace")) for p in re.split(rb"[\r\n]", chunk) if p.strip())

        reader = threading.Thread(target=read, args=(proc.stdout.fileno(),), daemon=True)
        reader.start()
        peak, ps, samples = 0, psutil.Process(proc.pid), []
        while True:
            # os.wait4 gives the kernel's exact max RSS; polling the tree catches any child processes.
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            try:
                peak = max(peak, sum(p.memory_info().rss for p in [ps, *ps.children(recursive=True)]))
                times = ps.cpu_times()
                samples.append((time.perf_counter() - t0, times.user + times.system))
            except psutil.Error:
                pass
            time.sleep(0.1)
        wall = time.perf_counter() - t0
        proc.returncode = os.waitstatus_to_exitcode(status)
        reader.join()
        cpu = usage.ru_utime + usage.ru_stime
        other = max(0.0, (busy_jiffies() - j0) / os.sysconf("SC_CLK_TCK") - cpu) / wall
        log = "\n".join(text for _, text in lines)
        if proc.returncode:
            print(f"{name} failed (exit {proc.returncode}):\n{log[-3000:]}", file=sys.stderr)
        phases, rate = timeline(lines, kind)
        per_step = cpu_per_step(phases, samples)
        return Result(name, repeat, proc.returncode, round(wall, 2), rate and round(rate, 3),
                      round(max(peak, usage.ru_maxrss * 1024) / 2**20, 1), round(cpu, 1), round(other, 2),
                      {k: round(x, 2) for k, x in phases.items()}, log[-20000:], per_step and round(per_step, 3),
                      *output_sizes(Path(tmp) / "out"))


def median(rs: list[Result], key: str) -> float | None:
    xs = [getattr(r, key) for r in rs if getattr(r, key) is not None]
    return statistics.median(xs) if xs else None


def fmt(x: float | None, places: int = 1) -> str:
    return "-" if x is None else f"{x:.{places}f}"


def table(results: list[Result]) -> str:
    names = list(dict.fromkeys(r.tool for r in results))
    ok = {n: [r for r in results if r.tool == n and r.returncode == 0] for n in names}
    base = median(ok.get("diffusers", []), "wall_s")
    rows = ["| tool | wall s | train steps/s | peak RSS MiB | speed-up vs diffusers | CPU s | other load (cores, max) "
            "| runs |", "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for n in names:
        rs, wall = ok[n], median(ok[n], "wall_s")
        speed = f"{base / wall:.2f}x" if base and wall else "-"
        cells = [n, fmt(wall), fmt(median(rs, "train_steps_per_s"), 2), fmt(median(rs, "peak_rss_mib"), 0), speed,
                 fmt(median(rs, "cpu_s")), fmt(max([r.other_load_cores for r in rs], default=None), 2), str(len(rs))]
        rows.append("| " + " | ".join(cells) + " |")
    rows += ["", "| run | start->class bar | class images | class end->train | training | train end->exit |",
             "|---|---:|---:|---:|---:|---:|"]
    for r in results:
        p = r.phases
        if {"class_start", "class_end", "train_start", "train_end"} <= p.keys():
            rows.append(f"| {r.tool} #{r.repeat} | {p['class_start']:.1f} | {p['class_end'] - p['class_start']:.1f} | "
                        f"{p['train_start'] - p['class_end']:.1f} | {p['train_end'] - p['train_start']:.1f} | "
                        f"{r.wall_s - p['train_end']:.1f} |")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--diffusers-script", help="path to diffusers' examples/dreambooth/train_dreambooth.py")
    ap.add_argument("--photos", default=str(REPO.parent / "shared" / "dreambench" / "dog"), help="instance photos")
    ap.add_argument("--model", help="SD pipeline folder (default: build the 'bench' tiny model in a temp folder)")
    ap.add_argument("--repeats", type=int, default=1, help="runs per tool, interleaved; the table shows medians")
    ap.add_argument("--only", choices=["ours", "diffusers"], help="run one tool only")
    ap.add_argument("--steps", type=int, default=40, help="training steps (40 in the published figures)")
    ap.add_argument("--threads", default="2", help="OMP_NUM_THREADS for both tools")
    ap.add_argument("--torchvision-dir", help="run diffusers' script with torchvision's Python transforms from this "
                    "folder (pip install --no-deps --target DIR torchvision), without its compiled ops")
    ap.add_argument("--wait-quiet", type=float, default=0, metavar="SECONDS",
                    help="before each run, wait up to this long for other processes to go idle; rerun disturbed runs")
    ap.add_argument("--json", help="write all runs (with phases and log tails) here")
    args = ap.parse_args(argv)
    variants: list[tuple[str, str, list[str]]] = []   # (name, kind, extra flags)
    if args.only != "diffusers":
        variants += [("ours", "ours", []), ("ours --class_inference_steps=50", "ours", ["--class_inference_steps=50"])]
    if args.only != "ours":
        if not args.diffusers_script:
            ap.error("--diffusers-script is required unless --only ours")
        variants.append(("diffusers", "diffusers", []))
    results = measure(variants, args, table)
    print(table(results))
    return 0 if all(r.returncode == 0 for r in results) else 1


def measure(variants: list[tuple[str, str, list[str]]], args: argparse.Namespace, render) -> list[Result]:
    """Run every variant `args.repeats` times, interleaved, on args.model or a fresh 'bench' tiny model;
    after each run the results so far go to args.json (with `render`'s table)."""
    # Same environment for every tool: fixed thread count, offline hub, unbuffered output for timestamps.
    # PYTHONPATH: `python -m dreambooth` runs this checkout, whatever copy pip installed.
    env = {**os.environ, "OMP_NUM_THREADS": args.threads, "MKL_NUM_THREADS": args.threads, "HF_HUB_OFFLINE": "1",
           "PYTHONUNBUFFERED": "1", "TOKENIZERS_PARALLELISM": "false",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    results: list[Result] = []
    with tempfile.TemporaryDirectory(prefix="bench-model-") as tmp:
        model = Path(args.model or Path(tmp) / "sd-bench").resolve()   # the tools run in their own folders
        if not args.model:
            from dreambooth.tiny import build_tiny_sd
            build_tiny_sd(model, size="bench")   # random weights; the published figures use this model
        for repeat in range(args.repeats):
            for name, kind, extra in variants:
                for _ in range(3 if args.wait_quiet else 1):   # with --wait-quiet, rerun a run others disturbed
                    if args.wait_quiet:
                        wait_quiet(args.wait_quiet)
                    r = run_once(name, kind, extra, repeat, args, model, env)
                    print(f"{r.tool} #{repeat}: exit {r.returncode}, {r.wall_s:.1f} s, {r.train_steps_per_s} steps/s, "
                          f"{r.peak_rss_mib:.0f} MiB, other load {r.other_load_cores:.2f} cores", flush=True)
                    if r.other_load_cores < QUIET:
                        break
                results.append(r)   # the last attempt, disturbed or not: the table's "other load" shows which
                if args.json:   # after every run, so an interrupted benchmark keeps what it measured
                    Path(args.json).write_text(json.dumps({"table": render(results),
                                                           "runs": [asdict(r) for r in results]}, indent=1))
    return results


if __name__ == "__main__":
    sys.exit(main())
