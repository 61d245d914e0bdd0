"""Results: render prompts with a run's model, by running `dreambooth generate` in its own process
(the CLI's code and messages; a crash there leaves the server up), and read back its images."""

from __future__ import annotations

import subprocess
import sys
import time

from ..errors import DreamboothError
from .jobs import child_env, last_words
from .runs import RunFolder, finished

MAX_PROMPTS, MAX_IMAGES = 8, 8


def generate_command(run: RunFolder, prompts: list[str], n: int, steps: int, seed: int) -> tuple[list[str], str]:
    stem = time.strftime("%H%M%S")
    args = ["generate", "--model", str(run.model), "-n", str(n), "--steps", str(steps), "--seed", str(seed),
            "--out", str(run.gallery / f"{stem}.png")]
    for prompt in prompts:
        args += ["--prompt", prompt]
    return [sys.executable, "-m", "dreambooth", *args], stem


def render_gallery(run: RunFolder, text: str, n: int, steps: int, seed: int = 0) -> list[tuple[str, str]]:
    """One prompt a line ('<id>' is the identifier) -> [(image path, caption)]; for a cascade each SR
    image follows its base image. Raises DreamboothError with the CLI's message."""
    prompts = [line.strip() for line in (text or "").splitlines() if line.strip()]
    if not prompts:
        raise DreamboothError("Write at least one prompt, one a line, e.g. 'a photo of <id> star on the beach'.")
    if len(prompts) > MAX_PROMPTS or not 1 <= n <= MAX_IMAGES:
        raise DreamboothError(f"Render at most {MAX_PROMPTS} prompts and 1-{MAX_IMAGES} images each at a time.")
    if not finished(run):
        raise DreamboothError(f"Run {run.name} has no finished model yet: train it to the end (or resume it) first.")
    run.gallery.mkdir(exist_ok=True)
    command, stem = generate_command(run, prompts, int(n), int(steps), int(seed))
    log = run.gallery / f"{stem}.log"
    with open(log, "w") as out:
        code = subprocess.run(command, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                              cwd=run.root, env=child_env()).returncode
    if code != 0:
        raise DreamboothError(last_words(log, code))
    folder = run.gallery / f"{stem}-images"
    shown = []
    for j, prompt in enumerate(prompts):
        for s in range(seed, seed + int(n)):
            base, final = folder / f"p{j}-seed{s}-base.png", folder / f"p{j}-seed{s}.png"
            if base.exists():
                shown.append((str(base), f"{prompt} · seed {s} · base"))
            shown.append((str(final), f"{prompt} · seed {s}" + (" · SR" if base.exists() else "")))
    return shown
