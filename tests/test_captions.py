"""Per-photo captions (dog1.jpg + dog1.txt): each view trains on its own photo's prompt."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml

from dreambooth.cli import main
from dreambooth.config import TrainJob
from dreambooth.core.models import ModelConfig, load_model
from dreambooth.core.text import conditioning
from dreambooth.data.captions import photo_prompts, unused_captions_note
from dreambooth.data.intake import read_image_folder
from dreambooth.errors import DreamboothError
from dreambooth.world.subjects import get_subject, write_photos


def intake(folder: Path, ext: str | None = ".txt"):
    return read_image_folder(folder, caption_extension=ext).photos


def test_each_photo_trains_on_its_caption_with_the_identifier_filled_in(photos):
    (photos / "00.txt").write_text("a photo of [V] dog\non a lawn\n")
    (photos / "02.txt").write_text("a <id> dog in the snow")
    found = read_image_folder(photos, caption_extension=".txt")
    assert len(found.photos) == 4 and not found.skipped          # captions are not "not an image"
    prompts, notes = photo_prompts(found.photos, "txt", "nnx", "a photo of nnx dog")
    assert prompts == ["a photo of nnx dog on a lawn", "a photo of nnx dog", "a nnx dog in the snow",
                       "a photo of nnx dog"]
    assert "2 of 4 photos are trained on their .txt captions; 01.jpg, 03.jpg use the instance prompt" in notes[0]
    # without the flag nothing is read, and the plan says the captions sit unused
    assert photo_prompts(found.photos, None, "nnx", "a photo of nnx dog") == (["a photo of nnx dog"] * 4, [])
    assert "Pass --caption_extension .txt" in unused_captions_note(found.photos, None)[0]
    assert unused_captions_note(found.photos, ".txt") == []


@pytest.mark.parametrize("files, says", [
    ({}, "no photo in"),
    ({"01.txt": "  \n"}, "01.txt is empty"),
    ({"01.txt": "a photo of a dog on a lawn"}, "does not name the subject's identifier 'nnx'"),
    ({"01.txt": "a photo of nnxy dog"}, "does not name the subject's identifier 'nnx'"),   # a longer word is not it
    ({"01.txt": b"a photo of \xff\xfe dog"}, "is not UTF-8 text"),
])
def test_bad_captions_name_the_file_and_the_fix(photos, files, says):
    for name, text in files.items():
        (photos / name).write_bytes(text if isinstance(text, bytes) else text.encode())
    with pytest.raises(DreamboothError, match=says) as err:
        photo_prompts(intake(photos), ".txt", "nnx", "a photo of nnx dog")
    assert str(photos) in str(err.value)


def test_each_view_is_conditioned_on_its_own_photos_prompt(tiny_sd):
    model = load_model(ModelConfig(pretrained_model_name_or_path=str(tiny_sd)))
    views = ["a photo of sks dog on a lawn", "a photo of sks dog", "a photo of sks dog on a lawn"]
    cond = conditioning(model, {}, views, "a photo of dog", TrainJob().train)
    ref = model.pipe.encode_prompt(["a photo of sks dog", "a photo of sks dog on a lawn", "a photo of dog"],
                                   device="cpu", num_images_per_prompt=1, do_classifier_free_guidance=False)[0]
    torch.testing.assert_close(cond([1, 2, 0], [0, 1]), ref[[0, 1, 1, 2, 2]])
    # a trained text tower encodes the same rows each step
    trained = conditioning(model, {"text_encoder": model.pipe.text_encoder}, views, "a photo of dog", TrainJob().train)
    torch.testing.assert_close(trained([1, 2, 0], [0, 1]), ref[[0, 1, 1, 2, 2]])


def test_pivotal_tuning_encodes_only_the_prompts_that_hold_the_identifier(tiny_sd):
    """With only the identifier's rows training, the class prompt's encoding never changes: it comes from
    the table made once, and each step runs the tower on the identifier's prompts alone, with gradient."""
    from dreambooth.core.embedding import identifier_token_ids, open_identifier_rows
    model = load_model(ModelConfig(pretrained_model_name_or_path=str(tiny_sd)))
    te = model.pipe.text_encoder
    open_identifier_rows(te, identifier_token_ids(model.pipe.tokenizer, "sks"))
    views = ["a photo of sks dog on a lawn", "a photo of sks dog"]
    cond = conditioning(model, {"text_encoder": te}, views, "a photo of dog", TrainJob().train)
    ref = model.pipe.encode_prompt(views + ["a photo of dog"], device="cpu", num_images_per_prompt=1,
                                   do_classifier_free_guidance=False)[0]
    batches = []
    hook = te.register_forward_pre_hook(lambda m, args, kwargs: batches.append(len(args[0] if args else
                                                                                   kwargs["input_ids"])),
                                        with_kwargs=True)
    out = cond([1, 0, 1], [0, 1])
    hook.remove()
    assert batches == [2]                                   # the two captions once each; the class prompt: cached
    torch.testing.assert_close(out, ref[[1, 0, 1, 2, 2]])
    out[3:].sum().backward(retain_graph=True)
    assert not te.get_input_embeddings().rows.grad.any()    # nothing flows from the class rows
    out[:3].sum().backward()
    assert te.get_input_embeddings().rows.grad.abs().sum() > 0
    batches.clear()
    te.register_forward_pre_hook(lambda m, args, kwargs: batches.append(1), with_kwargs=True)
    torch.testing.assert_close(cond([], [0, 1]), ref[[2, 2]])
    assert batches == []                                    # a batch of class images alone runs no tower


def test_dropped_captions_get_the_unconditional_embedding_guidance_uses(tiny_sd):
    model = load_model(ModelConfig(pretrained_model_name_or_path=str(tiny_sd)))
    views = ["a photo of sks dog on a lawn", "a photo of sks dog"]
    cond_ref, uncond = model.pipe.encode_prompt(["a photo of sks dog on a lawn", "a photo of sks dog", "a photo of dog"],
                                                device="cpu", num_images_per_prompt=1, do_classifier_free_guidance=True)
    dropped = torch.tensor([False, True, True, False])                    # [photo 0, photo 1 ; class, class]
    for towers in ({}, {"text_encoder": model.pipe.text_encoder}):        # cached, and encoded every step
        cond = conditioning(model, towers, views, "a photo of dog", TrainJob().train)([0, 1], [0, 1], dropped)
        torch.testing.assert_close(cond[[0, 3]], cond_ref[[0, 2]])
        torch.testing.assert_close(cond[[1, 2]], uncond[[0, 0]])           # the empty prompt, as CFG encodes it


def test_samples_of_the_empty_prompt_are_trained_unconditionally(tiny_sd):
    """Class views from n_prompted on (--num_unconditional_images) get the unconditional embedding."""
    model = load_model(ModelConfig(pretrained_model_name_or_path=str(tiny_sd)))
    cond_ref, uncond = model.pipe.encode_prompt(["a photo of sks dog", "a photo of dog"], device="cpu",
                                                num_images_per_prompt=1, do_classifier_free_guidance=True)
    for towers in ({}, {"text_encoder": model.pipe.text_encoder}):
        cond = conditioning(model, towers, ["a photo of sks dog"], "a photo of dog", TrainJob().train, n_prompted=3)
        c = cond([0], [2, 3, 4])                                          # one class image, two unconditional
        torch.testing.assert_close(c[[0, 1]], cond_ref[[0, 1]])
        torch.testing.assert_close(c[[2, 3]], uncond[[0, 0]])
        c = cond([0], [4, 1], torch.tensor([True, False, False]))         # and dropout still applies
        torch.testing.assert_close(c, torch.cat([uncond[:1], uncond[:1], cond_ref[1:]]))


def test_caption_dropout_flag_in_both_spellings(tiny_sd, photos, tmp_path):
    for i, flag in enumerate(("--caption-dropout-rate=0.5", "--caption_dropout_probability=0.5")):
        out = tmp_path / f"out{i}"
        assert main(["train", f"--model={tiny_sd}", f"--instance-data-dir={photos}", "--class-name=dog", flag,
                     "--max-train-steps=1", "--report_to=none", f"--output-dir={out}"]) == 0
        assert yaml.safe_load((out / "dreambooth.yaml").read_text())["data"]["caption_dropout_rate"] == 0.5


def test_world_photos_come_with_captions_naming_their_context(tmp_path):
    paths = write_photos(get_subject("striped_star"), 2, tmp_path)
    assert [p.with_suffix(".txt").read_text() for p in paths] == [
        "a photo of [V] star on the beach\n", "a photo of [V] star on top of a wooden floor\n"]


def test_training_on_captions_through_the_cli(tiny_sd, photos, tmp_path, capsys):
    for i in range(4):
        (photos / f"{i:02d}.txt").write_text(f"a photo of [V] dog {['on a lawn', 'indoors'][i % 2]}")
    out = tmp_path / "out"
    assert main(["train", f"--model={tiny_sd}", f"--instance-data-dir={photos}", "--class-name=dog",
                 "--caption-extension=.txt", "--train_text_encoder", "--max-train-steps=2", "--report_to=none",
                 f"--output-dir={out}"]) == 0
    printed = capsys.readouterr().out
    assert "4 of 4 photos are trained on their .txt captions" in printed and "skipped" not in printed
    assert "caption_extension: .txt" in (out / "dreambooth.yaml").read_text()


def test_a_folder_of_captions_alone_says_so(tmp_path):
    (tmp_path / "dog1.txt").write_text("a photo of [V] dog")
    with pytest.raises(DreamboothError, match=r"It holds only caption files \(dog1.txt\)"):
        read_image_folder(tmp_path)
