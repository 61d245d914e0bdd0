"""Bad input ends in one clear paragraph (exit 2), never a traceback, and before expensive work."""

from __future__ import annotations

import pytest

from dreambooth.cli import main


def run_error(capsys, argv) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    message = err.strip().splitlines()[-1]    # earlier lines may be progress bars
    assert message.startswith("error: ")
    return message


def test_missing_photo_folder(capsys, tiny_sd, tmp_path):
    err = run_error(capsys, ["train", f"--model={tiny_sd}", f"--instance-data-dir={tmp_path / 'nope'}",
                             "--class-name=dog", f"--output-dir={tmp_path / 'out'}"])
    assert str(tmp_path / "nope") in err


def test_folder_without_usable_images(capsys, tiny_sd, tmp_path):
    bad = tmp_path / "photos"
    bad.mkdir()
    (bad / "notes.txt").write_text("hello")
    err = run_error(capsys, ["train", f"--model={tiny_sd}", f"--instance-data-dir={bad}", "--class-name=dog",
                             f"--output-dir={tmp_path / 'out'}"])
    assert str(bad) in err and "notes.txt" in err


def test_output_inside_input_is_refused(capsys, tiny_sd, photos):
    err = run_error(capsys, ["train", f"--model={tiny_sd}", f"--instance-data-dir={photos}", "--class-name=dog",
                             f"--output-dir={photos / 'out'}"])
    assert "inside" in err or "same" in err
    assert not (photos / "out").exists()


def test_subject_must_be_named(capsys, tiny_sd, photos, tmp_path):
    err = run_error(capsys, ["train", f"--model={tiny_sd}", f"--instance-data-dir={photos}",
                             f"--output-dir={tmp_path / 'out'}"])
    assert "--class-name" in err


def test_zero_learning_rate_is_refused(capsys, tiny_sd, photos, tmp_path):
    err = run_error(capsys, ["train", f"--model={tiny_sd}", f"--instance-data-dir={photos}", "--class-name=dog",
                             "--train-text-encoder", "--text-encoder-lr=0", f"--output-dir={tmp_path / 'out'}"])
    assert "--text_encoder_lr" in err and "> 0" in err and "got 0.0" in err


def test_offline_hub_id_says_how_to_use_a_folder(capsys, photos, tmp_path):
    err = run_error(capsys, ["train", "--model=someone/not-a-cached-model", f"--instance-data-dir={photos}",
                             "--class-name=dog", f"--output-dir={tmp_path / 'out'}"])
    assert "someone/not-a-cached-model" in err and "--model FOLDER" in err


def test_folder_that_is_not_a_pipeline(capsys, photos, tmp_path):
    err = run_error(capsys, ["train", f"--model={tmp_path}", f"--instance-data-dir={photos}", "--class-name=dog",
                             f"--output-dir={tmp_path / 'out'}"])
    assert "model_index.json" in err


def test_8bit_adam_without_gpu(capsys, tiny_sd, photos, tmp_path):
    err = run_error(capsys, ["train", f"--model={tiny_sd}", f"--instance-data-dir={photos}", "--class-name=dog",
                             "--use_8bit_adam", f"--output-dir={tmp_path / 'out'}"])
    assert "--use_8bit_adam" in err


def test_bad_resume_path_lists_checkpoints(capsys, tiny_sd, photos, tmp_path):
    err = run_error(capsys, ["train", f"--model={tiny_sd}", f"--instance-data-dir={photos}", "--class-name=dog",
                             "--resume_from_checkpoint=checkpoint-99", f"--output-dir={tmp_path / 'out'}",
                             "--report_to=none"])
    assert "checkpoint-99" in err
