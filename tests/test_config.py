"""Config tree: YAML round trip, precedence, both flag spellings, diffusers compatibility notes."""

from __future__ import annotations

import dataclasses

import pytest

from dreambooth.cli.main import build_parser
from dreambooth.cli.flags import job_from_args
from dreambooth.config import TrainJob, leaf_fields, load_yaml, save_yaml
from dreambooth.errors import DreamboothError


def parse(argv):
    ns, unknown = build_parser().parse_known_args(["train", *argv])
    return job_from_args(ns, unknown)


def test_yaml_round_trip_preserves_every_field(tmp_path):
    job = TrainJob()
    job.data.class_name, job.optim.learning_rate, job.train.snr_gamma = "dog", 2e-6, 5.0
    job.checkpoint.checkpoints_total_limit, job.train.mixed_precision = 3, "bf16"
    save_yaml(job, tmp_path / "run.yaml")
    assert load_yaml(tmp_path / "run.yaml") == job


def test_flat_yaml_and_hyphens_are_accepted(tmp_path):
    (tmp_path / "flat.yaml").write_text("learning-rate: 1.0e-4\nwith_prior_preservation: true\nresolution: 256\n")
    job = load_yaml(tmp_path / "flat.yaml")
    assert job.optim.learning_rate == 1e-4 and job.prior.with_prior_preservation and job.data.resolution == 256


def test_cli_overrides_config_file(tmp_path):
    (tmp_path / "run.yaml").write_text("optim:\n  learning_rate: 1.0e-4\ntrain:\n  max_train_steps: 10\n")
    job, _ = parse([f"--config={tmp_path / 'run.yaml'}", "--learning_rate=3e-6"])
    assert job.optim.learning_rate == 3e-6 and job.train.max_train_steps == 10


@pytest.mark.parametrize("flag", ["--instance_data_dir", "--instance-data-dir"])
def test_both_spellings_fill_the_same_field(flag):
    job, _ = parse([f"{flag}=photos"])
    assert job.data.instance_data_dir == "photos"


def test_model_alias_and_bool_flags():
    job, _ = parse(["--model", "m", "--center_crop", "--no-random-flip", "--train-text-encoder"])
    assert job.model.pretrained_model_name_or_path == "m"
    assert job.data.center_crop and not job.data.random_flip and job.train.train_text_encoder


def test_bare_offset_noise_means_diffusers_default():
    assert parse(["--offset_noise"])[0].train.offset_noise == 0.1
    assert parse(["--offset_noise=0.05"])[0].train.offset_noise == 0.05


def test_every_field_has_help_and_a_flag():
    parser_help = build_parser()._subparsers._group_actions[0].choices["train"].format_help()
    for name, (_, f, _) in leaf_fields().items():
        assert f.metadata["help"]
        assert f"--{name}" in parser_help


def test_bad_values_name_the_setting(tmp_path):
    with pytest.raises(DreamboothError, match="--max_train_steps must be a whole number, got 'many'"):
        parse(["--max_train_steps=many"])
    (tmp_path / "bad.yaml").write_text("learnin_rate: 1\n")
    with pytest.raises(DreamboothError, match=r"bad.yaml.*unknown setting 'learnin_rate'.*'learning_rate'"):
        load_yaml(tmp_path / "bad.yaml")


def test_unknown_flag_gets_a_suggestion():
    with pytest.raises(DreamboothError, match="did you mean '--learning_rate'"):
        parse(["--learnng_rate=1"])


def test_push_to_hub_is_refused_before_any_work(tmp_path):
    with pytest.raises(DreamboothError, match="--push_to_hub is not supported: no model hub"):
        parse(["--push_to_hub", f"--output_dir={tmp_path / 'out'}"])
    assert not (tmp_path / "out").exists()


def test_harmless_diffusers_flags_are_noted_not_fatal():
    job, notes = parse(["--model", "m", "--allow_tf32", "--dataloader_num_workers=4", "--set_grads_to_none"])
    assert len(notes) == 3 and all("ignored" in n for n in notes)


def test_every_diffusers_flag_is_recognised():
    """All flags of diffusers' examples/dreambooth/train_dreambooth.py parse (as settings or notes/errors)."""
    diffusers_flags = """pretrained_model_name_or_path revision variant tokenizer_name instance_data_dir class_data_dir
    instance_prompt class_prompt with_prior_preservation prior_loss_weight num_class_images output_dir seed resolution
    center_crop train_text_encoder train_batch_size sample_batch_size num_train_epochs max_train_steps
    checkpointing_steps checkpoints_total_limit resume_from_checkpoint gradient_accumulation_steps
    gradient_checkpointing learning_rate scale_lr lr_scheduler lr_warmup_steps lr_num_cycles lr_power use_8bit_adam
    dataloader_num_workers adam_beta1 adam_beta2 adam_weight_decay adam_epsilon max_grad_norm push_to_hub hub_token
    hub_model_id logging_dir allow_tf32 report_to validation_prompt num_validation_images validation_steps
    mixed_precision prior_generation_precision local_rank enable_xformers_memory_efficient_attention
    set_grads_to_none offset_noise snr_gamma pre_compute_text_embeddings tokenizer_max_length
    text_encoder_use_attention_mask skip_save_text_encoder validation_images class_labels_conditioning
    validation_scheduler""".split()
    help_text = build_parser()._subparsers._group_actions[0].choices["train"].format_help()
    missing = [f for f in diffusers_flags if f"--{f}" not in help_text]
    assert not missing


def test_validation_scheduler_is_a_real_setting():
    job, notes = parse(["--model", "m", "--validation_scheduler=DDPMScheduler"])
    assert job.validation.validation_scheduler == "DDPMScheduler" and not notes


def test_micro_world_preset_applies_only_without_a_model_and_under_every_user_setting(tmp_path):
    from dreambooth.world.defaults import PRESET
    job, notes = parse(["--instance_data_dir", "x", "--class-name", "ball"])
    assert job.optim.learning_rate == PRESET["learning_rate"] != TrainJob().optim.learning_rate
    assert job.prior.with_prior_preservation and any("micro world" in n for n in notes)
    job, notes = parse(["--instance_data_dir", "x", "--learning-rate", "3e-5"])             # a flag wins
    assert job.optim.learning_rate == 3e-5 and job.train.max_train_steps == PRESET["max_train_steps"]
    note = next(n for n in notes if "micro world" in n)     # the note says what is in effect, not the preset
    kept, _, changed = note.partition("; yours instead of the preset's: ")
    assert "'learning_rate'" not in kept and f"'max_train_steps': {PRESET['max_train_steps']}" in kept and changed == "{'learning_rate': 3e-05}."
    cfg = tmp_path / "run.yaml"
    cfg.write_text("max_train_steps: 7\n")
    job, _ = parse(["--config", str(cfg)])                                                   # a config value wins
    assert job.train.max_train_steps == 7 and job.optim.learning_rate == PRESET["learning_rate"]
    job, notes = parse(["--model", "some/model", "--instance_data_dir", "x"])             # a model: no preset
    assert job.optim.learning_rate == TrainJob().optim.learning_rate and not any("micro world" in n for n in notes)
    cfg.write_text("pretrained_model_name_or_path: some/model\n")
    job, _ = parse(["--config", str(cfg)])
    assert job.optim.learning_rate == TrainJob().optim.learning_rate


def test_train_help_shows_what_applies_without_a_model(capsys):
    import pytest

    from dreambooth.cli.main import main
    from dreambooth.world.defaults import PRESET
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    text = " ".join(capsys.readouterr().out.split())      # argparse wraps lines
    assert "(default: 5e-06" in text and f"[without --model: {PRESET['learning_rate']}, the micro world's preset]" in text
    assert f"[without --model: {PRESET['max_train_steps']}," in text
