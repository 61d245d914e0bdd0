"""The worker process of one UI training run: `python -m dreambooth.ui.worker RUN_DIR [--resume]`.

It is the CLI (`dreambooth train --config RUN/request.yaml`), the same code, messages and exit codes,
plus a listener that appends the loop's progress events to RUN/events.jsonl for the page. Being a
separate process, a crash here cannot take the server down, and SIGTERM is the CLI's clean stop
(a checkpoint at the end of the step, exit 143).
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from ..cli import main as cli_main
from ..core import events
from .runs import RunFolder


def train_command(run: RunFolder, resume: bool) -> list[str]:
    return ["train", "--config", str(run.request)] + (["--resume_from_checkpoint", "latest"] if resume else [])


def main(argv: list[str]) -> int:
    run = RunFolder(Path(argv[0]))
    with open(run.events, "a") as out:
        def write(kind: str, data: dict) -> None:
            out.write(json.dumps({"kind": kind, "time": time.time(), **data}) + "\n")
            out.flush()
        events.subscribe(write)
        return cli_main(train_command(run, "--resume" in argv[1:]))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
