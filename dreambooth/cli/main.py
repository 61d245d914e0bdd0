"""`dreambooth` command line: fills a config and calls the library, nothing else."""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

from ..errors import DreamboothError
from .flags import add_config_flags, job_from_args


def _quiet() -> None:
    from ..quiet import quiet_libraries   # imports diffusers: only once a command is about to need it
    quiet_libraries()


def cmd_train(ns: argparse.Namespace, unknown: list[str]) -> None:
    job, notes = job_from_args(ns, unknown)
    from ..core.preflight import preflight
    preflight(job)               # ranges, paths, the model folder: answered before the heavy imports
    for note in notes:
        print(note)
    _quiet()
    from ..core import cascade   # heavy imports only once the flags are known to be fine
    (cascade.train_sr if ns.command == "train-sr" else cascade.train_all)(job)


def cmd_generate(ns: argparse.Namespace, unknown: list[str]) -> None:
    _no_unknown(unknown)
    from ..core.generate import generate_grid
    path = generate_grid(ns.model, ns.prompt, n=ns.n, out=Path(ns.out), seed=ns.seed, steps=ns.steps,
                         guidance_scale=ns.guidance_scale, resolution=ns.resolution, scheduler=ns.scheduler,
                         seeds=ns.seeds, sr_model=ns.sr_model, sr_steps=ns.sr_steps,
                         sr_guidance_scale=ns.sr_guidance_scale, sr_noise_level=ns.sr_noise_level, lora=ns.lora,
                         lora_scale=ns.lora_scale, original_config=ns.original_config)
    print(f"wrote {path} (each image in {path.parent / (path.stem + '-images')})")


def cmd_tiny_model(ns: argparse.Namespace, unknown: list[str]) -> None:
    _no_unknown(unknown)
    from .. import tiny
    build = {"sd": tiny.build_tiny_sd, "sdxl": tiny.build_tiny_sdxl, "if": tiny.build_tiny_if}[ns.kind]
    kwargs = {"size": ns.size} if ns.kind == "sd" else {}
    print(f"wrote a random-weight {ns.kind} pipeline to {build(Path(ns.out), **kwargs)}")


def cmd_world(ns: argparse.Namespace, unknown: list[str]) -> None:
    _no_unknown(unknown)
    from ..world import subjects as w
    if ns.world_command == "subjects":
        for s in w.SUBJECTS.values():
            print(f"{s.name:16s} class {s.cls:8s} colour {s.color:7s} photographed {' / '.join(s.home)}")
    elif ns.world_command == "photos":
        paths = w.write_photos(w.get_subject(ns.subject), ns.n, Path(ns.out), seed=ns.seed)
        print(f"wrote {len(paths)} photos of {ns.subject} to {ns.out}")
    elif ns.world_command == "pretrain":
        from ..world.pretrain.run import pretrain
        spent = pretrain(Path(ns.out), stages=tuple(ns.stages), scale=ns.scale, seed=ns.seed, parallel=not ns.serial)
        print("seconds per stage:", spent)
    elif ns.world_command == "gates":
        import json
        from ..world.defaults import MODELS
        from ..world.gates import run_gates
        figures = run_gates(Path(ns.models) if ns.models else MODELS, Path(ns.out), prompts=ns.prompts,
                            sr_images=ns.sr_images, steps=ns.steps, sr_steps=ns.sr_steps, sr_noise_level=ns.sr_noise_level)
        print(json.dumps(figures, indent=1))
    elif ns.world_command == "ideal":
        from PIL import Image
        from ..world.render import render
        from ..core.sample import make_grid
        subject = w.get_subject(ns.subject)
        images = [Image.fromarray(render(w.ideal_scene(subject, ns.prompt, seed=ns.seed + i))) for i in range(ns.n)]
        make_grid(images, cols=ns.n).save(ns.out)
        print(f"wrote the ideal render of {ns.prompt!r} for {ns.subject} to {ns.out}")


def cmd_ui(ns: argparse.Namespace, unknown: list[str]) -> None:
    _no_unknown(unknown)
    try:
        from ..ui.app import serve
    except ImportError as e:
        raise DreamboothError(f"`dreambooth ui` needs gradio ({e}). Install it with `pip install -e .` from the "
                              "project folder (gradio is one of its dependencies).") from None
    if ns.host not in ("127.0.0.1", "localhost", "::1"):
        print(f"warning: --host {ns.host} lets other machines open the UI; it has no login.", file=sys.stderr)
    serve(Path(ns.work_dir), host=ns.host, port=ns.port)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dreambooth", description="Personalize text-to-image diffusion models "
                                     "from a few photos (DreamBooth, Ruiz et al. 2023).")
    sub = parser.add_subparsers(dest="command", required=True)

    train = sub.add_parser("train", help="fine-tune a base model on photos of one subject",
                           description="Accepts diffusers' train_dreambooth.py flags verbatim (underscores or "
                                       "hyphens).")
    add_config_flags(train)
    train.set_defaults(func=cmd_train)
    train_sr = sub.add_parser("train-sr", help="fine-tune a super-resolution model on the same photos (step (b))",
                              description="Same flags as `train`; --model must be a super-resolution pipeline "
                                          "(IF stage II, SD x4 upscaler, micro-world SR; default: the world's).")
    add_config_flags(train_sr)
    train_sr.set_defaults(func=cmd_train)

    gen = sub.add_parser("generate", help="sample images from a (fine-tuned) pipeline folder")
    gen.add_argument("--model", required=True, help="pipeline folder, e.g. the output of `dreambooth train` (a LoRA "
                     "output folder stands for its base model with the LoRA), or a single-file SD/SDXL checkpoint")
    gen.add_argument("--prompt", required=True, action="append",
                     help="prompt; '<id>' or '[V]' becomes the trained identifier. Repeat for several prompts.")
    gen.add_argument("-n", "--num-images", dest="n", type=at_least(1), default=4, help="images per prompt")
    gen.add_argument("--out", default="grid.png", help="grid image to write (one row per prompt); each image "
                                                      "also goes to OUT_STEM-images/")
    gen.add_argument("--seed", type=at_least(0), default=0, help="image i of a prompt uses seed + i")
    gen.add_argument("--seeds", type=at_least(0), nargs="+", default=None, help="explicit seed of each image (sets -n)")
    gen.add_argument("--sr-model", "--sr_model", default=None,
                     help="super-resolution pipeline for base -> SR (default: MODEL/sr/ when it exists)")
    gen.add_argument("--no-sr", dest="sr_model", action="store_const", const="none", help="base model only")
    gen.add_argument("--sr-steps", "--sr_steps", type=at_least(1), default=None,
                     help="SR sampler steps (default: the SR folder's dreambooth_sr.json, 4 for the micro "
                          "world's SR; else --steps)")
    gen.add_argument("--sr-guidance-scale", "--sr_guidance_scale", type=at_least(0, float), default=None,
                     help="SR classifier-free guidance (default: the SR folder's dreambooth_sr.json, 1.0 for the "
                          "micro world's SR; else the SR pipeline's own, 4.0 for IF stage II)")
    gen.add_argument("--sr-noise-level", "--sr_noise_level", type=int, default=None,
                     help="noise augmentation of the SR's low-res input (default: the SR folder's dreambooth_sr.json, "
                          "0 for the micro world's SR; else the SR pipeline's own, 250 for IF stage II, 20 for the "
                          "x4 upscaler)")
    gen.add_argument("--lora", default=None, help="a LoRA to load into the base model: the output folder of "
                     "`dreambooth train --lora`, or one .safetensors file in diffusers' or kohya's layout")
    gen.add_argument("--lora-scale", "--lora_scale", type=at_least(0, float), default=1.0,
                     help="strength of the LoRA (0: the base model, 1: as trained)")
    gen.add_argument("--original-config", "--original_config", default=None,
                     help="for a single-file --model: a diffusers folder of the same architecture (configs only) "
                          "or the original YAML")
    gen.add_argument("--steps", type=at_least(1), default=25, help="sampler steps")
    gen.add_argument("--guidance-scale", "--guidance_scale", type=at_least(0, float), default=7.5,
                     help="classifier-free guidance")
    gen.add_argument("--resolution", type=at_least(8), default=None, help="image size (default: the model's)")
    from ..config import SAMPLERS
    gen.add_argument("--scheduler", choices=SAMPLERS, default="auto",
                     help="sampler built from the model's scheduler config ('model': the model's own; 'auto': the model's own for pixel-space models that clip x0, else DPM-Solver++)")
    gen.set_defaults(func=cmd_generate)

    tiny = sub.add_parser("tiny-model", help="write a small random-weight model of a real architecture "
                                             "(for trying the tool offline; it generates noise-like images)")
    tiny.add_argument("--out", required=True)
    tiny.add_argument("--kind", choices=["sd", "sdxl", "if"], default="sd",
                      help="Stable Diffusion, SDXL or DeepFloyd IF layout")
    tiny.add_argument("--size", choices=["tiny", "bench"], default="tiny")
    tiny.set_defaults(func=cmd_tiny_model)

    world = sub.add_parser("world", help="the micro world: subjects, their photos, ideal renders")
    wsub = world.add_subparsers(dest="world_command", required=True)
    wsub.add_parser("subjects", help="list the built-in subjects")
    photos = wsub.add_parser("photos", help="render N photos of a subject into a folder, as a user's photos")
    photos.add_argument("--subject", required=True)
    photos.add_argument("-n", type=int, default=5)
    photos.add_argument("--out", required=True)
    photos.add_argument("--seed", type=int, default=0)
    ideal = wsub.add_parser("ideal", help="render what a perfect model would draw for a prompt about a subject")
    ideal.add_argument("--subject", required=True)
    ideal.add_argument("--prompt", required=True, help="e.g. 'a red [V] ball on the beach'")
    ideal.add_argument("-n", type=int, default=4)
    ideal.add_argument("--out", default="ideal.png")
    ideal.add_argument("--seed", type=int, default=0)
    pre = wsub.add_parser("pretrain", help="rebuild the world's models from seeds (resumable: rerun to continue)")
    pre.add_argument("--out", required=True)
    pre.add_argument("--scale", choices=["full", "toy"], default="full",
                     help="full: the shipped models (under 2 hours on a 2-core CPU); toy: a smoke test")
    pre.add_argument("--serial", action="store_true",
                     help="run the stages one after another in this process (default: two side-by-side lanes)")
    from ..world.pretrain.run import STAGES
    pre.add_argument("--stages", nargs="+", default=list(STAGES), choices=STAGES)
    pre.add_argument("--seed", type=int, default=0)
    gates = wsub.add_parser("gates", help="measure the world models' quality gates (docs/microworld.md)")
    gates.add_argument("--models", default=None, help="folder with base/ sr/ clip/ instance/ (default: the shipped)")
    gates.add_argument("--out", default="world-gates", help="folder for gates.json and the pictures")
    gates.add_argument("--prompts", type=int, default=72, help="held-out prompts for the base-model gate")
    gates.add_argument("--sr-images", "--sr_images", dest="sr_images", type=int, default=48)
    gates.add_argument("--steps", type=int, default=25, help="base-model sampler steps")
    gates.add_argument("--sr-steps", "--sr_steps", dest="sr_steps", type=int, default=4, help="SR sampler steps")
    gates.add_argument("--sr-noise-level", "--sr_noise_level", dest="sr_noise_level", type=int, default=0,
                       help="noise-augmentation level of the SR model's low-res input")
    world.set_defaults(func=cmd_world)
    ui = sub.add_parser("ui", help="the web UI: photos, settings, training with live progress, results")
    ui.add_argument("--work-dir", "--work_dir", dest="work_dir", default="dreambooth-ui",
                    help="folder that keeps every run (photos, settings, model, log); default ./dreambooth-ui")
    ui.add_argument("--host", default="127.0.0.1", help="address to listen on (default: this machine only)")
    ui.add_argument("--port", type=int, default=7860)
    ui.set_defaults(func=cmd_ui)
    from ..eval.cli import add_eval_parser   # light: heavy imports wait for cmd_eval
    add_eval_parser(sub)
    return parser


def at_least(low: float, kind: type = int):
    """An argparse type: a finite `kind` >= low (argparse turns the ValueError into a one-line error)."""
    def parse(text: str):
        value = kind(text)
        if not math.isfinite(value) or value < low:
            raise argparse.ArgumentTypeError(f"must be a {'whole ' if kind is int else 'finite '}number >= {low}, "
                                             f"got {text}")
        return value
    parse.__name__ = kind.__name__
    return parse


def _no_unknown(unknown: list[str]) -> None:
    if unknown:
        raise DreamboothError(f"Unknown option {unknown[0]!r}; see --help.")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    from ..core.interrupt import record_command
    record_command(argv)         # for the exact resume command printed if a run is stopped
    ns, unknown = build_parser().parse_known_args(argv)
    try:
        if ns.func is not cmd_train and (ns.func is not cmd_world or ns.world_command not in ("subjects", "photos",
                                                                                          "ideal")):
            _quiet()                 # train quiets itself after its cheap checks
        ns.func(ns, unknown)
    except DreamboothError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as e:   # a training run says what it kept (core/interrupt.py)
        print(f"\ninterrupted: {getattr(e, 'message', '') or 'stopped; every file already written is complete.'}",
              file=sys.stderr)
        return getattr(e, "exit_code", 130)
    return 0
