"""Settings are checked before any work: range, type, NaN/inf, config-file lines and keys; the
model folder (pickles, hub-style paths, resolution); and these refusals come before the heavy
imports, in about a second."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
import time
from pathlib import Path

import pytest
from diffusers import DiffusionPipeline

from dreambooth.cli import main
from dreambooth.config import TrainJob, base_type, leaf_fields, load_yaml, validate
from dreambooth.errors import DreamboothError

REPO = Path(__file__).resolve().parents[1]


def refused(capsys, argv) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return err.strip().splitlines()[-1]


def base(model, photos, out) -> list[str]:
    return ["train", f"--model={model}", f"--instance-data-dir={photos}", "--class-name=dog", f"--output-dir={out}",
            "--report_to=none"]


@pytest.mark.parametrize("flag, accepted", [
    ("--train_batch_size=0", ">= 1"), ("--gradient_accumulation_steps=0", ">= 1"),
    ("--checkpointing_steps=0", ">= 1"), ("--validation_steps=0", ">= 1"), ("--max_train_steps=0", ">= 1"),
    ("--max_train_steps=-5", ">= 1"), ("--resolution=0", ">= 8"), ("--learning_rate=nan", "> 0 and <= 10"),
    ("--learning_rate=inf", "> 0 and <= 10"), ("--adam_beta2=1", ">= 0 and < 1"), ("--snr_gamma=-1", "> 0"),
    ("--checkpointing_minutes=-1", ">= 0"), ("--num_class_images=-1", ">= 0"),
])
def test_out_of_range_flags_are_refused_naming_flag_and_range(flag, accepted, capsys, tiny_sd, photos, tmp_path):
    out = tmp_path / "out"
    err = refused(capsys, base(tiny_sd, photos, out) + [flag])
    assert flag.split("=")[0] in err and accepted in err
    assert not out.exists()                     # nothing was done


def test_prior_preservation_with_no_class_images_is_refused(capsys, tiny_sd, photos, tmp_path):
    err = refused(capsys, base(tiny_sd, photos, tmp_path / "out") + ["--with_prior_preservation",
                                                                      "--num_class_images=0"])
    assert "--num_class_images" in err and "--with_prior_preservation" in err


def test_every_numeric_setting_has_a_range_and_its_default_is_in_it():
    for name, (_, f, tp) in leaf_fields().items():
        if base_type(tp)[0] in (int, float):
            assert f.metadata["bounds"], f"{name} has no accepted range"
    validate(TrainJob())


def test_settings_given_in_code_are_checked_too():
    job = TrainJob()
    job.optim.learning_rate = float("nan")
    with pytest.raises(DreamboothError, match="'learning_rate' must be a finite number > 0"):
        validate(job)
    job = TrainJob()
    job.train.train_batch_size = True                     # a bool is not a number
    with pytest.raises(DreamboothError, match="'train_batch_size' must be a whole number"):
        validate(job)


@pytest.mark.parametrize("text, expected", [
    ("optim:\n  learning_rate: 1e-4\n  lr_warmup_steps: [1, 2]\n", r"line 3: 'lr_warmup_steps' must be a whole number"),
    ("max_train_steps: 10\nlearnin_rate: 1\n", r"line 2: unknown setting 'learnin_rate'. Did you mean 'learning_rate'"),
    ("train_batch_size: true\n", r"line 1: 'train_batch_size' must be a whole number, got True"),
    ("learning_rate: .nan\n", r"line 1: 'learning_rate' must be a finite number > 0"),
    ("resolution: 512\n  seed: 3\n", r"not valid YAML, line 2, column \d+: mapping values are not allowed here"),
    ("seed: 1\nseed: 2\n", r"line 2: 'seed' is set twice \(also on line 1\)"),
])
def test_config_file_problems_name_the_line_and_key(text, expected, tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text(text)
    with pytest.raises(DreamboothError, match=expected) as e:
        load_yaml(path)
    assert str(path) in str(e.value) and "\n" not in str(e.value)


def test_output_dir_that_is_a_file_is_refused(capsys, tiny_sd, photos, tmp_path):
    (tmp_path / "out").write_text("a file")
    err = refused(capsys, base(tiny_sd, photos, tmp_path / "out"))
    assert "is an existing file" in err and "--output_dir" in err


def test_resolution_the_model_cannot_take_is_refused_before_loading_it(capsys, tiny_sd, photos, tmp_path):
    err = refused(capsys, base(tiny_sd, photos, tmp_path / "out") + ["--resolution=36"])
    assert "--resolution 36" in err and "multiple of 8" in err and "32 or 40" in err


def test_fp16_on_a_cpu_is_refused_not_silently_run_as_fp32(capsys, tiny_sd, photos, tmp_path):
    import torch
    if torch.cuda.is_available():
        pytest.skip("fp16 is real on a GPU")
    err = refused(capsys, base(tiny_sd, photos, tmp_path / "out") + ["--mixed_precision=fp16"])
    assert "--mixed_precision fp16 needs a GPU" in err and "bf16" in err


@pytest.mark.parametrize("model", ["models/sd15", "./models/sd15", "a/b/c", "~/nothing-here", "bad name"])
def test_model_that_is_neither_a_folder_nor_a_cached_hub_id(model, capsys, photos, tmp_path):
    err = refused(capsys, base(model, photos, tmp_path / "out"))
    assert f"--model {model} is neither a folder here" in err and "hub cache" in err


def test_pickled_weights_are_refused_with_how_to_convert(capsys, tiny_sd, photos, tmp_path):
    pickled = tmp_path / "pickled"
    DiffusionPipeline.from_pretrained(tiny_sd).save_pretrained(pickled, safe_serialization=False)
    assert list(pickled.glob("unet/*.bin"))
    err = refused(capsys, base(pickled, photos, tmp_path / "out"))
    assert "pickled weights" in err and "safe_serialization=True" in err and f"{pickled}-safetensors" in err


def test_tutorial_identifiers_get_the_warning(capsys, tiny_sd, photos, tmp_path):
    assert main(base(tiny_sd, photos, tmp_path / "a") + ["--instance_prompt=a photo of ohwx dog",
                                                         "--max_train_steps=1"]) == 0
    out = capsys.readouterr().out
    assert "warning: The identifier 'ohwx' is the one tutorials spread" in out and "rifle" not in out
    assert main(base(tiny_sd, photos, tmp_path / "b") + ["--identifier=sks", "--max_train_steps=1"]) == 0
    assert "warning: The identifier 'sks' is the one tutorials spread ('sks' is also a rifle" in capsys.readouterr().out


@pytest.mark.parametrize("extra, expected", [
    ([], "does not exist"),
    (["--rank=8"], "--rank only apply to LoRA training, but --lora is off"),
    (["--lora", "--use-dora", "--output-kohya-format"], "drops DoRA magnitudes"),
])
def test_refusals_come_before_the_heavy_imports(tmp_path, extra, expected):
    """A path or flag refusal in a fresh process imports no torch, diffusers, accelerate or numpy, which
    is what makes it answer in about a second (13 s before this check came first, on this 2-core CPU; a
    speed figure, so it is not asserted here: the machine's load decides wall times)."""
    code = ("import sys, time; t = time.perf_counter(); from dreambooth.cli import main; "
            f"rc = main(['train', '--instance-data-dir={tmp_path / 'nope'}', '--class-name=dog', "
            f"'--output-dir={tmp_path / 'out'}', '--model={tmp_path / 'nope'}', *{extra!r}]); "
            "refusal = time.perf_counter() - t; "
            "heavy = [m for m in ('torch', 'diffusers', 'accelerate', 'numpy') if m in sys.modules]; "
            "t = time.perf_counter(); import torch; "
            "print('RESULT', rc, heavy, refusal, time.perf_counter() - t)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=300)
    line = next(x for x in proc.stdout.splitlines() if x.startswith("RESULT "))   # the CLI may print too
    rc, heavy, refusal, imports = line.replace("[]", "none").split()[1:]
    assert rc == "2" and heavy == "none" and expected in proc.stderr


@pytest.mark.parametrize("flag", [["-n", "0"], ["--steps", "0"], ["--guidance-scale", "nan"], ["--seed", "-1"]])
def test_generate_numbers_are_checked_too(flag, capsys):
    with pytest.raises(SystemExit) as e:
        main(["generate", "--model", "m", "--prompt", "p", *flag])
    assert e.value.code == 2 and "must be a" in capsys.readouterr().err
