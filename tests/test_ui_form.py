"""The Settings form <-> config mapping: every field reachable, values round-trip, bad values get the
config's own messages."""

from __future__ import annotations

import pytest

from dreambooth.config import TrainJob, base_type, check_range, leaf_fields, load_yaml, save_yaml
from dreambooth.errors import DreamboothError
from dreambooth.ui.form import (MAIN, MANAGED, default_job, form_fields, form_to_job, job_to_form, managed_values,
                                without_managed)


def other_value(f, tp):
    """A valid value different from the field's default, whatever its type."""
    scalar, nullable = base_type(tp)
    choices = f.metadata.get("choices")
    if choices:
        return next(c for c in choices if c is not None and c != f.default)
    if scalar is bool:
        return not f.default
    if scalar is str:
        return f"custom/{f.name}"
    for candidate in ((7, 2, 3, 1000) if scalar is int else (0.25, 0.5, 0.003, 2.0)):
        try:
            check_range(f.name, candidate, f, tp, "test")
        except DreamboothError:
            continue
        if candidate != f.default:
            return candidate
    raise AssertionError(f"no test value for {f.name}")


def everything_changed() -> TrainJob:
    job = TrainJob()
    for name, (section, f, tp) in leaf_fields().items():
        setattr(getattr(job, section), name, other_value(f, tp))
    return job


def test_every_config_field_is_in_the_form_or_set_by_the_ui():
    in_form = [ff.name for ff in form_fields()]
    assert len(in_form) == len(set(in_form))
    assert set(in_form) | set(MANAGED) == set(leaf_fields())
    assert not set(in_form) & set(MANAGED)


def test_main_fields_come_first_and_exist():
    names = [ff.name for ff in form_fields()]
    shown = [n for n in MAIN if n in leaf_fields()]
    assert names[:len(shown)] == shown
    assert set(MAIN) <= set(leaf_fields())     # a name missing here means MAIN went stale


def test_lora_fields_are_in_the_form_and_round_trip():
    """The LoRA / SDXL / Prodigy / export fields reach the form with the widget their type calls for."""
    fields = {ff.name: ff for ff in form_fields()}
    kinds = {"lora": "bool", "use_dora": "bool", "output_kohya_format": "bool", "output_single_file": "bool",
             "prodigy_decouple": "bool", "rank": "text", "lora_alpha": "text", "lora_dropout": "text",
             "lora_layers": "text", "optimizer": "text", "prodigy_beta3": "text",
             "adam_weight_decay_text_encoder": "text", "crops_coords_top_left_h": "text",
             "pretrained_vae_model_name_or_path": "text", "original_config": "text"}
    assert {name: fields[name].kind for name in kinds} == kinds
    assert fields["lora"].main and fields["lora"].section == "adapter"
    values = job_to_form(default_job())
    values.update(lora=True, rank="16", lora_alpha="8", use_dora=True, lora_layers="to_q,to_v",
                  optimizer="prodigy", prodigy_beta3="0.5", learning_rate="1.0")
    job = form_to_job(values)
    a = job.adapter
    assert (a.lora, a.rank, a.lora_alpha, a.use_dora, a.lora_layers) == (True, 16, 8, True, "to_q,to_v")
    assert (job.optim.optimizer, job.optim.prodigy_beta3) == ("prodigy", 0.5)
    assert job_to_form(job) == values
    values["lora_alpha"] = ""                  # unset: alpha = rank
    assert form_to_job(values).adapter.lora_alpha is None
    values["rank"] = "0"
    with pytest.raises(DreamboothError, match="'rank' must be a whole number >= 1"):
        form_to_job(values)


def test_round_trip_of_every_field_through_the_form():
    job = everything_changed()
    values = job_to_form(job)
    assert form_to_job(values, managed_values(job)) == job
    assert form_to_job(job_to_form(TrainJob()), managed_values(TrainJob())) == TrainJob()


def test_yaml_round_trip_through_the_form(tmp_path):
    job = everything_changed()
    save_yaml(form_to_job(job_to_form(job), managed_values(job)), tmp_path / "saved.yaml")
    loaded = load_yaml(tmp_path / "saved.yaml")
    assert loaded == job
    assert job_to_form(without_managed(loaded)) == job_to_form(job)
    assert managed_values(without_managed(loaded)) == managed_values(TrainJob())


def test_unset_values_are_empty_text_and_come_back_unset():
    job = TrainJob()
    job.train.max_train_steps = None
    values = job_to_form(job)
    assert values["max_train_steps"] == "" and values["class_name"] == ""
    assert values["prior_generation_precision"] == "none" and values["text_encoder_use_attention_mask"] == "none"
    back = form_to_job(values)
    assert back.train.max_train_steps is None and back.data.class_name is None
    assert back.prior.prior_generation_precision is None and back.train.text_encoder_use_attention_mask is None


def test_the_form_starts_from_the_micro_world_preset():
    from dreambooth.world.defaults import PRESET
    values = job_to_form(default_job())
    for name, value in PRESET.items():
        assert values[name] == (value if isinstance(value, bool) else str(value))


@pytest.mark.parametrize("name,value,expected", [
    ("learning_rate", "fast", "'learning_rate' must be a number, got 'fast'"),
    ("max_train_steps", "0", "'max_train_steps' must be a whole number >= 1"),
    ("learning_rate", "nan", "'learning_rate' must be a finite number > 0 and <= 10"),
    ("num_class_images", "2.5", "'num_class_images' must be a whole number, got '2.5'"),
])
def test_bad_values_get_the_configs_message(name, value, expected):
    values = job_to_form(default_job())
    values[name] = value
    with pytest.raises(DreamboothError) as e:
        form_to_job(values)
    assert str(e.value).startswith("Settings: ") and expected in str(e.value)
