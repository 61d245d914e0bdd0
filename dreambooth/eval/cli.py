"""`dreambooth eval` flags (registered by cli/main.py): the paper's protocol on one model, or the
micro-world suite with --suite microworld."""

from __future__ import annotations

import argparse
import shlex
from pathlib import Path

from ..config import SAMPLERS
from ..errors import DreamboothError
from .protocol import PROMPT_LISTS, Settings

_SKIP = {"command", "func"}


def add_eval_parser(sub) -> argparse.ArgumentParser:
    ev = sub.add_parser("eval", help="measure a fine-tuned model with the paper's protocol and metrics "
                                     "(DINO, CLIP-I, CLIP-T, PRES, DIV)",
                        description="Generates DreamBench's prompts (identifier filled in) with fixed seeds, scores "
                                    "them with CLIP and DINO encoders and writes a report (metrics.json, "
                                    "per_prompt.csv, grids, charts vs the paper's Table 1, report.md).")
    ev.add_argument("--model", help="fine-tuned pipeline folder (the output of `dreambooth train`)")
    ev.add_argument("--instance-data-dir", "--instance_data_dir", dest="instance_data_dir",
                    help="folder with the subject's real photos")
    ev.add_argument("--class-name", "--class_name", dest="class_name",
                    help="the subject's class noun ('dog'); picks the object or live-subject prompt list")
    ev.add_argument("--out", default="eval-report", help="report folder")
    ev.add_argument("--base-model", "--base_model", dest="base_model",
                    help="also evaluate the untouched base model (same prompts and seeds): PRES/DIV before and after")
    ev.add_argument("--clip-model", "--clip_model", dest="clip_model",
                    help="CLIPModel folder or cached hub id for CLIP-I/CLIP-T, e.g. clip-vit-base-patch32 "
                         "(default for micro-world models: the world's micro-CLIP)")
    ev.add_argument("--dino-model", "--dino_model", dest="dino_model",
                    help="ViTModel folder or cached hub id for DINO/PRES/DIV, e.g. dino-vits16 "
                         "(default for micro-world models: the world's instance encoder)")
    ev.add_argument("--identifier", help="the subject's identifier (default: the model's identifier.json)")
    ev.add_argument("--prompts", type=int, default=None, help="use the first N prompts of the list (default: all 25)")
    ev.add_argument("--prompt-list", "--prompt_list", dest="prompt_list", choices=PROMPT_LISTS, default="auto",
                    help="DreamBench list: 'auto' picks 'world' (the object prompts the micro world can draw) for "
                         "micro-world models, 'live' for animals, 'object' otherwise")
    ev.add_argument("--images-per-prompt", "--images_per_prompt", dest="images_per_prompt", type=int, default=4,
                    help="images per prompt (the paper's 4); image i of each prompt uses seed + i")
    ev.add_argument("--class-images", "--class_images", dest="class_images", type=int, default=16,
                    help="samples of the class prompt for PRES and DIV (0 skips them)")
    ev.add_argument("--steps", type=int, default=25, help="sampler steps")
    ev.add_argument("--guidance-scale", "--guidance_scale", dest="guidance_scale", type=float, default=7.5,
                    help="classifier-free guidance")
    ev.add_argument("--seed", type=int, default=0, help="first seed")
    ev.add_argument("--sr-model", "--sr_model", dest="sr_model", default=None,
                    help="super-resolution pipeline for base -> SR (default: MODEL/sr/ when it exists)")
    ev.add_argument("--no-sr", dest="sr_model", action="store_const", const="none", help="base model only")
    ev.add_argument("--sr-steps", "--sr_steps", dest="sr_steps", type=int, default=None,
                    help="SR sampler steps (default: the SR folder's dreambooth_sr.json, 4 for the micro world's "
                         "SR; else --steps). Noise level and guidance come from there too, else the pipeline's")
    ev.add_argument("--base-sr-model", "--base_sr_model", dest="base_sr_model", default=None,
                    help="SR pipeline for the --base-model row (default: BASE_MODEL/sr/ when it exists), e.g. the "
                         "untouched SR model beside a fine-tuned cascade")
    ev.add_argument("--scheduler", choices=SAMPLERS, default="auto",
                    help="sampler (as for `dreambooth generate`; 'auto' by default)")
    suite = ev.add_argument_group("micro-world suite (--suite microworld)")
    suite.add_argument("--suite", choices=["microworld"], help="train and evaluate every built-in world subject")
    suite.add_argument("--world-dir", "--world_dir", dest="world_dir", default=None,
                       help="folder with the world's base/, clip/, instance/ (default: dreambooth/world/models)")
    suite.add_argument("--subjects", nargs="+", default=None, help="world subjects (default: all 12)")
    suite.add_argument("--variants", nargs="+", default=None,
                       help="dreambooth no_prior common_word no_identifier sr_finetuned (default: all of these), "
                            "lora (LoRA DreamBooth, opt-in: compare with `--variants dreambooth lora`) and, with --no-captions, "
                            "captions (each photo trained on its caption naming its context, opt-in)")
    suite.add_argument("--captions", action=argparse.BooleanOptionalAction, default=None,
                       help="train every variant on the photos' captions naming their context, as the README's main "
                            "command does (default); --no-captions: one prompt for every photo, as the paper")
    suite.add_argument("--train-steps", "--train_steps", dest="train_steps", type=int, default=None,
                       help="DreamBooth steps per variant (default: the micro-world preset's)")
    suite.add_argument("--num-class-images", "--num_class_images", dest="num_class_images", type=int, default=None,
                       help="class images for prior preservation (default: the preset's)")
    suite.add_argument("--sr-train-steps", "--sr_train_steps", dest="sr_train_steps", type=int, default=None,
                       help="step (b) SR fine-tuning steps of the sr_finetuned variant (default: the preset's)")
    suite.add_argument("--learning-rate", "--learning_rate", dest="learning_rate", type=float, default=None,
                       help="DreamBooth learning rate (default: the preset's)")
    suite.add_argument("--lora-learning-rate", "--lora_learning_rate", dest="lora_learning_rate", type=float,
                       default=None, help="learning rate of the lora variant (default: --learning-rate)")
    suite.add_argument("--text-encoder-lr", "--text_encoder_lr", dest="text_encoder_lr", type=float, default=None,
                       help="learning rate of the identifier's embedding under pivotal tuning (default: the preset's)")
    suite.add_argument("--jobs", type=int, default=None,
                       help="subjects trained side by side, one thread each (default 2: one per core of a 2-core CPU)")
    ev.set_defaults(func=cmd_eval)
    return ev


def command_line(ns: argparse.Namespace) -> str:
    """The command as it can be rerun (every flag that was set), for the report."""
    parts = ["dreambooth", "eval"]
    for key, value in vars(ns).items():
        if key in _SKIP or value is None or (key == "prompt_list" and ns.suite):   # the suite's list is fixed
            continue
        flag = "--" + key.replace("_", "-")
        if isinstance(value, bool):                   # --captions / --no-captions
            parts.append(flag if value else "--no-" + flag[2:])
            continue
        parts += [flag, *map(str, value)] if isinstance(value, list) else [flag, str(value)]
    return shlex.join(parts)


def cmd_eval(ns: argparse.Namespace, unknown: list[str]) -> None:
    if unknown:
        raise DreamboothError(f"Unknown option {unknown[0]!r}; see `dreambooth eval --help`.")
    settings = Settings(prompts=ns.prompts, images_per_prompt=ns.images_per_prompt, class_images=ns.class_images,
                        steps=ns.steps, guidance_scale=ns.guidance_scale, seed=ns.seed, scheduler=ns.scheduler,
                        prompt_list=ns.prompt_list, sr_model=ns.sr_model, sr_steps=ns.sr_steps)
    if ns.suite:
        from .suite import SuiteConfig, run_suite
        settings.prompt_list = "world"
        cfg = SuiteConfig(out=Path(ns.out), settings=settings)
        overrides = {"world_dir": Path(ns.world_dir) if ns.world_dir else None,
                     "subjects": tuple(ns.subjects) if ns.subjects else None,
                     "variants": tuple(ns.variants) if ns.variants else None, "train_steps": ns.train_steps,
                     "num_class_images": ns.num_class_images, "learning_rate": ns.learning_rate,
                     "lora_learning_rate": ns.lora_learning_rate, "text_encoder_lr": ns.text_encoder_lr,
                     "sr_train_steps": ns.sr_train_steps, "use_sr": False if ns.sr_model == "none" else None,
                     "jobs": ns.jobs, "captions": ns.captions}
        for key, value in overrides.items():
            if value is not None:
                setattr(cfg, key, value)
        run_suite(cfg, command=command_line(ns))
        return
    suite_only = [k for k in ("world_dir", "subjects", "variants", "train_steps", "num_class_images", "learning_rate",
                              "lora_learning_rate", "text_encoder_lr", "sr_train_steps", "jobs", "captions")
                  if getattr(ns, k) is not None]
    if suite_only:
        raise DreamboothError(f"--{suite_only[0].replace('_', '-')} belongs to the micro-world suite; add "
                              "--suite microworld or drop it.")
    missing = [f for f, v in (("--model", ns.model), ("--instance-data-dir", ns.instance_data_dir),
                              ("--class-name", ns.class_name)) if not v]
    if missing:
        raise DreamboothError(f"`dreambooth eval` needs {', '.join(missing)} (or --suite microworld). Example: "
                              "dreambooth eval --model dog-model --instance-data-dir photos/ --class-name dog "
                              "--out report/")
    from .run import run_eval
    report = run_eval(ns.model, ns.instance_data_dir, ns.class_name, Path(ns.out), settings=settings,
                      base_model=ns.base_model, clip_model=ns.clip_model, dino_model=ns.dino_model,
                      base_sr_model=ns.base_sr_model, identifier=ns.identifier, command=command_line(ns))
    print(f"wrote {report}")
