"""The Settings form, generated from the config tree: one widget per config field, with its help.

Nothing here is written per field by hand except the choice of which fields stand up front
(MAIN) and which ones the UI fills in itself (MANAGED). Every other field, including ones added to
config.py later (LoRA, ...), lands under "Advanced" in its section. Widget values go back through
config.set_field, so a bad value gets the same message as in a YAML file or on the command line.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

from ..config import TrainJob, base_type, leaf_fields, set_field

# Shown first on the Settings tab, in this order; a name this branch's config lacks is skipped.
MAIN = ("class_name", "identifier", "pretrained_model_name_or_path", "sr_model", "lora", "max_train_steps",
        "learning_rate", "with_prior_preservation", "num_class_images", "validation_prompt")
# Set by the UI from the run it trains, not typed: field -> what sets it.
MANAGED = {
    "instance_data_dir": "the Photos tab (the run's photos/ folder)",
    "output_dir": "the run's folder (RUN/model)",
    "resume_from_checkpoint": "the Resume button (latest checkpoint)",
}
NONE = "none"   # how a dropdown spells an unset value; config.coerce reads it back as None


@dataclass(frozen=True)
class FormField:
    name: str
    section: str
    help: str
    kind: str              # 'bool' (checkbox), 'choice' (dropdown) or 'text' (number or string typed in)
    choices: tuple[str, ...]
    nullable: bool

    @property
    def main(self) -> bool:
        return self.name in MAIN


def form_fields() -> list[FormField]:
    """Every config field the user sets: MAIN ones first (in MAIN's order), then the rest by section."""
    found = []
    for name, (section, f, tp) in leaf_fields().items():
        if name in MANAGED:
            continue
        scalar, nullable = base_type(tp)
        choices = f.metadata.get("choices")
        if scalar is bool and not nullable:
            kind, options = "bool", ()
        elif choices:
            kind, options = "choice", tuple(NONE if c is None else str(c) for c in choices)
        elif scalar is bool:   # true / false / unset
            kind, options = "choice", (NONE, "true", "false")
        else:
            kind, options = "text", ()
        found.append(FormField(name, section, f.metadata["help"], kind, options, nullable))
    order = {name: i for i, name in enumerate(MAIN)}
    return sorted(found, key=lambda ff: (not ff.main, order.get(ff.name, 0)))   # stable: sections keep order


def to_widget(ff: FormField, value: Any) -> Any:
    """A config value as its widget shows it."""
    if ff.kind == "bool":
        return bool(value)
    if value is None:
        return NONE if ff.kind == "choice" else ""
    if isinstance(value, bool):
        return str(value).lower()
    return str(value)


def from_widget(ff: FormField, value: Any) -> Any:
    """A widget's value as set_field takes it (which checks type and range)."""
    if ff.kind == "text" and isinstance(value, str):
        value = value.strip()
        if value == "" and ff.nullable:
            return None
    return value


def default_job() -> TrainJob:
    """What the form starts from: the micro world's model with the settings the CLI uses for it."""
    from ..world.defaults import apply_preset
    job = TrainJob()
    apply_preset(job)
    return job


def job_to_form(job: TrainJob) -> dict[str, Any]:
    fields = leaf_fields()
    return {ff.name: to_widget(ff, getattr(getattr(job, fields[ff.name][0]), ff.name)) for ff in form_fields()}


def form_to_job(values: dict[str, Any], managed: dict[str, Any] | None = None,
                where: str = "Settings") -> TrainJob:
    """The form's values (name -> widget value) plus the UI's own fields -> a checked TrainJob.
    A bad value raises DreamboothError naming the field, as the CLI does."""
    job = TrainJob()
    for ff in form_fields():
        if ff.name in values:
            set_field(job, ff.name, from_widget(ff, values[ff.name]), where)
    for name, value in (managed or {}).items():
        set_field(job, name, value, where)
    return job


def managed_values(job: TrainJob) -> dict[str, Any]:
    fields = leaf_fields()
    return {name: getattr(getattr(job, fields[name][0]), name) for name in MANAGED}


def without_managed(job: TrainJob) -> TrainJob:
    """A loaded config with the UI's own fields back at their defaults (the run decides them)."""
    job, fresh = copy.deepcopy(job), TrainJob()
    fields = leaf_fields()
    for name in MANAGED:
        section = fields[name][0]
        setattr(getattr(job, section), name, getattr(getattr(fresh, section), name))
    return job
