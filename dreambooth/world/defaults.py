"""Where the micro world's pretrained pipelines live: the default models of `dreambooth train`.

`dreambooth world pretrain --out dreambooth/world/models` writes them there (base/ is an IF stage I
layout at 32 px, sr/ an IF stage II layout 32 -> 64 px). A run without --model uses them.
(Named defaults.py, not models.py, so the module does not shadow that models/ folder.)
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..errors import DreamboothError

MODELS = Path(__file__).resolve().parent / "models"
WORLD_BASE = MODELS / "base"
WORLD_SR = MODELS / "sr"


# Settings for the micro world's models, applied when no --model is given, beneath any config file or
# flag. Why not the diffusers defaults: those suit Stable Diffusion's 860M-parameter UNet (lr 5e-6);
# the world's 3.9M-parameter UNets were pretrained at 1e-3 and barely move at 5e-6.
# lr 2e-4 (session 10, four subjects, photos captioned, 600 steps): at 4e-4 the fine-tuned model's
# class samples collapsed onto a few contexts and colours (class diversity 0.52 of the base's, subject
# fidelity 0.87 of the ideal renders'); at 2e-4 0.87 and 0.82; at 1e-4 0.84 and 0.73.
# 300 steps of 2 photos (+ 2 class images), not 600 of 1 (session 11, the four subjects with the
# least class diversity): the same views seen, half the updates. Class diversity 0.91 of the base's
# (0.72 at 600 x 1), subject fidelity 0.75 of the ideal renders' (0.85), 105 s instead of 142.
# (Earlier, 300 steps of 1 photo left the subject half learned: fewer views, not fewer updates.)
# Step (b) on 32 px windows (SR3 / Imagen practice; the world's SR was pretrained on them), 200
# steps: on two subjects +0.65 and +0.72 dB over the untouched SR on known inputs, close to 100
# whole-view steps (+0.87, +1.04) at under half the time (about 20 s instead of 53).
# lr 1e-4 at 300 x 2 (session 12, all 12 subjects, the gate's settings): class diversity 0.91 of the
# base's (0.83 at 2e-4), subject fidelity 0.69 of the ideal renders' (0.75). Also measured there, none
# reaching 0.9: 40 samples of the empty prompt (0.82 / 0.76), training the text encoder at 2e-5 with
# lr 2e-4 (0.87 / 0.78) or 1.5e-4 (0.85 / 0.75).
# Pivotal tuning (session 14): the identifier's embedding learns at 5e-3 while the UNet trains. A
# frozen encoder hears "nnx" at 0.17 of a prompt's norm (a colour word: 0.37-0.41). All 12 subjects,
# the gate's settings: subject fidelity 0.82 of the ideal renders' (0.69 without), class diversity 0.93
# of the base's (0.91), prompt fidelity 0.97 (0.98). On the README's subject the snow row turned from
# orange fragments to yellow striped stars (1e-3 did half of that).
# 400 steps, not 300 (session 15, all 12 subjects, the gate's settings at two seeds): subject fidelity
# 0.87 / 0.85 of the ideal renders' (300: 0.82 / 0.76), class diversity 0.92 / 0.89 of the base's (0.93 /
# 0.79). 500 collapsed the ball and box classes (diversity 0.69); UNet lr 1.5e-4 at 300 cost diversity
# (0.86); the embedding at 1e-2 instead of 5e-3 changed nothing beyond noise.
PRESET: dict[str, Any] = {
    "learning_rate": 1e-4,
    "train_text_encoder_ti": True,
    "text_encoder_lr": 5e-3,
    "max_train_steps": 400,
    "train_batch_size": 2,
    "sr_learning_rate": 1e-4,
    "sr_max_train_steps": 200,
    "sr_crop": 32,
    "with_prior_preservation": True,
    "num_class_images": 40,   # 50 put the README's command at 184 s cold; 40 keeps it under 3 minutes
    # Class images drawn without guidance (1.0), not at diffusers' 7.5: prior preservation should keep the
    # model's own conditional distribution, which is what unguided samples are; guided class images
    # teach an already-guided one, and guidance at sampling then sharpens it twice. At 7.5 the world's
    # base draws nearly one "can" and the class's diversity collapses (session 7, four subjects, class
    # diversity 0.18 at 7.5, 0.38 at 4, 0.63 at 2). Session 10 (the current models, lr 2e-4, four
    # subjects): at 1.0 class diversity 0.95 of the base's and subject fidelity 0.84 of the ideal renders',
    # at 2.0 0.87 and 0.82 (docs/microworld.md, "Class images").
    "class_guidance_scale": 1.0,
    "validation_steps": 200,
    "checkpointing_steps": 1000,
}


def apply_preset(job: Any) -> dict[str, Any]:
    """Set PRESET's values on `job` (a TrainJob); returns them, for the note the CLI prints."""
    from ..config import set_field
    for name, value in PRESET.items():
        set_field(job, name, value, "micro-world preset")
    return PRESET


def default_models(*, base: bool = True, sr: bool = True) -> tuple[Path | None, Path | None]:
    """-> (base folder or None, SR folder or None), each one asked for; a missing folder is an error.
    The module's WORLD_BASE / WORLD_SR are read at call time (tests point them elsewhere)."""
    wanted = [(kind, path) for kind, path, want in (("base", WORLD_BASE, base), ("super-resolution", WORLD_SR, sr))
              if want]
    for kind, path in wanted:
        if not (path / "model_index.json").exists():
            raise DreamboothError(
                f"No --model was given, so dreambooth uses the micro world's {kind} model, but {path} holds no "
                f"pipeline (the folder is part of the package: was it deleted, or is this a partial copy?). Pass --model PATH with a diffusers pipeline "
                f"folder (for example one made by `dreambooth tiny-model --out tiny-sd`)"
                + (", add --no-sr to train the base model only" if kind == "super-resolution" else "")
                + f", or rebuild the world's models with `dreambooth world pretrain --out {path.parent}`.")
    return (WORLD_BASE if base else None), (WORLD_SR if sr else None)
