"""Command-line flags generated from the config tree.

Every config field becomes `--field_name` and `--field-name` (diffusers' spelling and ours) with
its help text; a few short aliases (`--model`, `--class-name` is already a field). diffusers'
`train_dreambooth.py` flags that we do not implement are still recognized, so a pasted tutorial
command gets a precise note or error instead of "unrecognized arguments".
"""

from __future__ import annotations

import argparse
import difflib

from ..config import TrainJob, accepted_range, base_type, leaf_fields, load_yaml, set_field
from ..errors import DreamboothError
from ..world.defaults import PRESET

# diffusers flags that change nothing here, with the reason (printed as a note).
IGNORED = {
    "allow_tf32": "TF32 matmuls are enabled automatically on Ampere+ GPUs",
    "enable_xformers_memory_efficient_attention": "PyTorch's scaled-dot-product attention is already used",
    "set_grads_to_none": "gradients are always reset to None",
    "dataloader_num_workers": "images are encoded once before training; no data loader runs during training",
    "local_rank": "the process rank comes from `accelerate launch`",
    "validation_epochs": "validation runs every --validation_steps steps (default 100)",
    "image_interpolation_mode": "photos are resized with Lanczos, diffusers' default",
    "cache_dir": "no model hub is reachable; models are read from local folders",
    "repeats": "each photo is cut into --random_crop_views cached views; set the length with --max_train_steps",
}
# diffusers flags we refuse, with what to do instead (raised before any work starts).
UNSUPPORTED = {
    "push_to_hub": "no model hub is reachable from this machine; copy the output folder instead "
                   "(it is a standard diffusers pipeline folder)",
    "hub_token": "no model hub is reachable from this machine",
    "hub_model_id": "no model hub is reachable from this machine",
    "skip_save_text_encoder": "the exported pipeline always includes its text encoder so diffusers can load it",
    "class_labels_conditioning": "a super-resolution model's noise-level class labels are set up from the model "
                                 "itself; see `dreambooth train-sr`",
    "validation_images": "super-resolution validation upsamples a low-res view of the first photo by itself "
                         "(`dreambooth train-sr`)",
    "dataset_name": "no model hub is reachable; put the photos in a folder and pass --instance_data_dir (per-photo "
                    "captions: a .txt file beside each photo and --caption_extension .txt)",
    "dataset_config_name": "no model hub is reachable; pass --instance_data_dir",
    "image_column": "photos come from --instance_data_dir, not a dataset",
    "caption_column": "captions come from a text file beside each photo: dog1.jpg + dog1.txt and "
                      "--caption_extension .txt (photos without one use --instance_prompt)",
    "do_edm_style_training": "EDM-style training (Playground v2.5, EDM SDXL) is not implemented",
}
FLAG_ONLY = {"push_to_hub", "allow_tf32", "enable_xformers_memory_efficient_attention", "set_grads_to_none",
             "do_edm_style_training"}


def spellings(name: str) -> list[str]:
    return sorted({f"--{name}", f"--{name.replace('_', '-')}"})


def add_config_flags(parser: argparse.ArgumentParser) -> None:
    """One flag per config field; only flags actually given end up in the namespace."""
    parser.add_argument("--config", help="YAML config file (nested by section or flat); flags override it.")
    groups: dict[str, argparse._ArgumentGroup] = {}
    for name, (section, f, tp) in leaf_fields().items():
        group = groups.setdefault(section, parser.add_argument_group(section))
        meta = f.metadata
        accepted = accepted_range(f, base_type(tp)[0] is int)
        help_ = f"{meta['help']} (default: {f.default}{'; ' + accepted if accepted else ''})"
        if name in PRESET:     # what actually applies in the main command, which names no --model
            help_ += f" [without --model: {PRESET[name]}, the micro world's preset]"
        flags = spellings(name) + list(meta["aliases"])
        if tp is bool and meta["const"] is None:
            group.add_argument(*flags, dest=name, action=argparse.BooleanOptionalAction,
                               default=argparse.SUPPRESS, help=help_)
        elif meta["const"] is not None:
            group.add_argument(*flags, dest=name, nargs="?", const=meta["const"], default=argparse.SUPPRESS,
                               help=help_, metavar="VALUE")
        else:
            choices = [c for c in (meta["choices"] or ()) if c is not None] or None
            group.add_argument(*flags, dest=name, default=argparse.SUPPRESS, help=help_, choices=choices,
                               metavar="{" + ",".join(choices) + "}" if choices else "VALUE")
        if meta.get("none_flag"):
            group.add_argument(meta["none_flag"], dest=name, action="store_const", const="none",
                               default=argparse.SUPPRESS, help=f"same as --{name.replace('_', '-')} none")
    compat = parser.add_argument_group("diffusers flags handled specially")
    for name, why in {**IGNORED, **UNSUPPORTED}.items():
        kind = "ignored" if name in IGNORED else "not supported"
        kwargs = {"action": "store_true"} if name in FLAG_ONLY else {"metavar": "VALUE"}
        compat.add_argument(*spellings(name), dest=f"compat__{name}", default=argparse.SUPPRESS,
                            help=f"{kind}: {why}", **kwargs)


def job_from_args(ns: argparse.Namespace, unknown: list[str]) -> tuple[TrainJob, list[str]]:
    """Defaults < --config file < flags. Returns the job and notes to print."""
    if unknown:
        known = [s for n in leaf_fields() for s in spellings(n)]
        bad = unknown[0].split("=")[0]
        close = difflib.get_close_matches(bad, known, n=1)
        raise DreamboothError(f"Unknown option {bad!r}" + (f"; did you mean {close[0]!r}?" if close else ".")
                              + " Run `dreambooth train --help` for every option.")
    values = vars(ns)
    notes = []
    for key in [k for k in values if k.startswith("compat__")]:
        name = key.removeprefix("compat__")
        if name in UNSUPPORTED:
            raise DreamboothError(f"--{name} is not supported: {UNSUPPORTED[name]}. Remove it and run again.")
        notes.append(f"note: --{name} is ignored: {IGNORED[name]}.")
    job = TrainJob()
    preset = None
    if not values.get("pretrained_model_name_or_path") and not _config_names_model(values.get("config")):
        from ..world.defaults import apply_preset   # no --model: the micro world's models and their settings
        preset = apply_preset(job)
    if values.get("config"):
        job = load_yaml(values["config"], job)
    fields = leaf_fields()
    for name, value in values.items():
        if name in fields:
            set_field(job, name, value, "command line")
    if preset is not None:
        notes.append(preset_note(job, preset))
    return job, notes


def preset_note(job: TrainJob, preset: dict) -> str:
    """Which of the micro world's preset values are in effect, and which a config file or flag replaced."""
    fields = leaf_fields()
    final = {name: getattr(getattr(job, fields[name][0]), name) for name in preset}
    kept = {k: v for k, v in preset.items() if final[k] == v}
    changed = {k: final[k] for k in preset if final[k] != preset[k]}
    return (f"note: no --model: personalizing the micro world's model with its settings {kept}"
            + (f"; yours instead of the preset's: {changed}" if changed else "") + ".")


def _config_names_model(path: str | None) -> bool:
    return bool(path) and bool(load_yaml(path).model.pretrained_model_name_or_path)
