"""`dreambooth eval --suite microworld` on a tiny untrained world: 1 subject, 2 prompts, 1 training step
per variant. It checks the plumbing (every comparison present, the world's encoders used as defaults,
the ideal renders as reference), not the figures, which random models cannot make meaningful."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from test_eval_cli import one_thread  # noqa: F401  (autouse: tiny models run on one thread)

from dreambooth.cli import main
from dreambooth.eval.encoders import resolve_encoders, world_dir_of
from dreambooth.eval.protocol import OBJECT_PROMPTS, Settings, world_prompts
from dreambooth.eval.run import protocol_templates
from dreambooth.world.defaults import PRESET


def test_world_models_default_to_the_world_encoders(world):
    assert world_dir_of(world / "base") == world
    assert protocol_templates(world / "base", "ball", Settings()) == world_prompts()      # 'auto' in the world
    assert protocol_templates(world / "base", "ball", Settings(prompt_list="object")) == OBJECT_PROMPTS
    enc = resolve_encoders(None, None, model=world / "base")
    assert enc.clip.source == str(world / "clip") and enc.clip.prep.world and enc.dino.prep.world


def test_suite_runs_every_comparison(world, tmp_path):
    out = tmp_path / "suite"
    assert main(["eval", "--suite", "microworld", "--world-dir", str(world), "--subjects", "striped_ball",
                 "--prompts", "2", "--images-per-prompt", "1", "--class-images", "2", "--steps", "1",
                 "--train-steps", "1", "--sr-train-steps", "1", "--num-class-images", "1", "--out", str(out)]) == 0
    record = json.loads((out / "metrics.json").read_text())
    figures = record["subjects"]["striped_ball"]["figures"]
    assert set(figures) == {"dreambooth", "no_prior", "common_word", "no_identifier", "sr_finetuned", "base", "ideal"}
    for name, f in figures.items():
        assert all(-1 - 1e-6 <= f[k] <= 1 + 1e-6 for k in ("dino", "clip_i", "clip_t", "dino_ideal")), name
        if name != "ideal":                                        # ideal renders have no class samples
            assert 0 <= f["div_dino"] <= 2 + 1e-6 and -1 - 1e-6 <= f["pres"] <= 1 + 1e-6, name
    per_prompt = record["subjects"]["striped_ball"]["per_prompt"]
    # the world's prompt list (DreamBench prompts it can draw); rare token, common word and no identifier
    assert [r["prompt"] for r in per_prompt["ideal"]] == ["a [V] ball in the jungle", "a [V] ball in the snow"]
    assert per_prompt["common_word"][0]["prompt"] == "a picture ball in the jungle"
    assert per_prompt["no_identifier"][0]["prompt"] == "a ball in the jungle"
    identifier = json.loads((out / "striped_ball" / "models" / "dreambooth" / "identifier.json").read_text())
    assert per_prompt["base"][0]["prompt"] == f"a {identifier['identifier']} ball in the jungle"
    # DINO, CLIP-T, context read, DIV, and step (b)'s detail on known inputs
    assert len(record["targets"]) == 5 and record["wall_seconds"] > 0
    detail = record["step_b_detail"]["subjects"]["striped_ball"]
    assert set(detail) == {"bicubic", "untouched", "finetuned"}
    assert all(5 < d["psnr"] < 100 and -1 <= d["dino"] <= 1 + 1e-6 for d in detail.values())
    assert "Detail on known inputs" in (out / "report.md").read_text()
    # the world's prompts name contexts, and micro-CLIP reads them: a share for every row
    assert all(0 <= f["context_read"] <= 1 for f in figures.values())
    # every row rendered base -> SR at 64 px: the untouched world SR, except step (b)'s own
    models = out / "striped_ball" / "models"
    assert (models / "sr_finetuned" / "model_index.json").is_file()
    sr_identifier = json.loads((models / "sr_finetuned" / "identifier.json").read_text())["identifier"]
    assert sr_identifier == identifier["identifier"]
    assert record["config"]["sr_folder"] == str(world / "sr")
    # every variant trained on the photos' captions, as the README's command trains, except the one with no
    # identifier for a caption to name
    trained = {n: yaml.safe_load((models / n / "dreambooth.yaml").read_text())["data"]["caption_extension"]
               for n in ("dreambooth", "no_prior", "common_word", "no_identifier")}
    assert trained == {"dreambooth": ".txt", "no_prior": ".txt", "common_word": ".txt", "no_identifier": None}
    from PIL import Image
    assert Image.open(out / "grid_striped_ball.png").height == 7 * 2 * 64     # 7 rows of 64-px images, shown 2x
    page = (out / "report.md").read_text()
    batch = yaml.safe_load((models / "dreambooth" / "dreambooth.yaml").read_text())["train"]["train_batch_size"]
    assert f"steps of {batch} photo(s)" in page and record["config"]["preset"]["train_batch_size"] == batch
    for heading in ("## 1. Base model", "## 2. Prior preservation", "## 3. Super-resolution", "## 4. Identifier",
                    "## Targets"):
        assert heading in page
    for name in ("chart_fidelity.png", "chart_prior.png", "chart_identifier.png", "grid_striped_ball.png",
                 "per_prompt.csv"):
        assert (out / name).is_file(), name


def test_suite_runs_subjects_side_by_side(world, tmp_path):
    out = tmp_path / "suite2"
    assert main(["eval", "--suite", "microworld", "--world-dir", str(world), "--subjects", "striped_ball", "bar_can",
                 "--variants", "dreambooth", "--prompts", "1", "--images-per-prompt", "1", "--class-images", "2",
                 "--steps", "1", "--train-steps", "1", "--num-class-images", "1", "--jobs", "2", "--sr-model", "none",
                 "--out", str(out)]) == 0
    record = json.loads((out / "metrics.json").read_text())
    assert set(record["subjects"]) == {"striped_ball", "bar_can"} and record["config"]["jobs"] == 2
    for name in ("striped_ball", "bar_can"):
        assert set(record["subjects"][name]["figures"]) == {"dreambooth", "base", "ideal"}


def test_suite_resumes_at_the_subjects_not_done(world, tmp_path, capsys):
    """A stopped suite loses no finished subject: a rerun with the same settings reuses each subject's
    kept result (however many jobs), reruns a subject whose result is gone, and reruns all when a
    setting changes."""
    out = tmp_path / "suite"
    args = ["eval", "--suite", "microworld", "--world-dir", str(world), "--subjects", "striped_ball", "bar_can",
            "--variants", "dreambooth", "--prompts", "1", "--images-per-prompt", "1", "--class-images", "2",
            "--steps", "1", "--num-class-images", "1", "--sr-model", "none", "--out", str(out)]
    assert main([*args, "--train-steps", "1", "--jobs", "2"]) == 0
    first = json.loads((out / "metrics.json").read_text())
    trained = {s: (out / s / "models" / "dreambooth" / "model_index.json").stat().st_mtime_ns
               for s in ("striped_ball", "bar_can")}

    def retrained():
        return {s for s, t in trained.items()
                if (out / s / "models" / "dreambooth" / "model_index.json").stat().st_mtime_ns != t}

    capsys.readouterr()
    assert main([*args, "--train-steps", "1", "--jobs", "1"]) == 0
    assert "reusing 2 subject(s)" in capsys.readouterr().out and retrained() == set()
    again = json.loads((out / "metrics.json").read_text())
    assert again["mean_over_subjects"] == first["mean_over_subjects"]
    assert again["config"]["reused"] == ["striped_ball", "bar_can"]
    assert "reused from an earlier run" in (out / "report.md").read_text()
    assert (out / "grid_bar_can.png").is_file()

    (out / "bar_can" / "result.json").unlink()                     # as if stopped before bar_can finished
    assert main([*args, "--train-steps", "1", "--jobs", "1"]) == 0
    assert retrained() == {"bar_can"}
    assert json.loads((out / "metrics.json").read_text())["config"]["reused"] == ["striped_ball"]

    assert main([*args, "--train-steps", "2", "--jobs", "1"]) == 0     # other settings: nothing reused
    assert retrained() == {"striped_ball", "bar_can"}
    assert json.loads((out / "metrics.json").read_text())["config"]["reused"] == []


def test_suite_lora_variant_against_full(world, tmp_path):
    """Issue 11 point 7's comparison, in miniature: LoRA vs full DreamBooth on the same subject and seeds,
    with their training time and the size of what each keeps."""
    out = tmp_path / "suite"
    assert main(["eval", "--suite", "microworld", "--world-dir", str(world), "--subjects", "striped_ball",
                 "--variants", "dreambooth", "lora", "--prompts", "1", "--images-per-prompt", "1",
                 "--class-images", "0", "--steps", "1", "--train-steps", "1", "--num-class-images", "1",
                 "--lora-learning-rate", "3e-3", "--text-encoder-lr", "2e-2", "--out", str(out)]) == 0
    subject = json.loads((out / "metrics.json").read_text())["subjects"]["striped_ball"]
    assert {"dreambooth", "lora"} <= set(subject["figures"]) and "train/lora" in subject["seconds"]
    optim = {v: yaml.safe_load((out / "striped_ball" / "models" / v / "dreambooth.yaml").read_text())["optim"]
             for v in ("dreambooth", "lora")}
    assert {v: o["learning_rate"] for v, o in optim.items()} == {"dreambooth": PRESET["learning_rate"], "lora": 3e-3}
    assert {o["text_encoder_lr"] for o in optim.values()} == {2e-2}            # the identifier's embedding's rate
    assert (out / "striped_ball" / "models" / "lora" / "pytorch_lora_weights.safetensors").is_file()
    assert 0 < subject["output_mib"]["lora"] < subject["output_mib"]["dreambooth"] / 10


def test_context_read_on_the_shipped_encoders():
    """The prompt-fidelity reading the suite reports beside CLIP-T: the shipped micro-CLIP reads the
    context of ideal renders of the world's prompts, and not when the renders show other contexts."""
    from dreambooth.eval.score import context_read, embed_samples
    from dreambooth.eval.suite import WORLD_MODELS, ideal_samples
    from dreambooth.world.subjects import get_subject

    encoders = resolve_encoders(str(WORLD_MODELS / "clip"), str(WORLD_MODELS / "instance"))
    subject, settings = get_subject("striped_star"), Settings(prompt_list="world", images_per_prompt=2)
    with_context = tuple(t for t in world_prompts() if " in the " in t or " on " in t)       # 8 contexts
    ideal = ideal_samples(subject, with_context, settings, 64)
    assert context_read(ideal, embed_samples(ideal, encoders), encoders) >= 0.9
    shifted = ideal_samples(subject, with_context[1:] + with_context[:1], settings, 64)
    shifted.texts = ideal.texts                      # each image now carries another prompt's context
    assert context_read(shifted, embed_samples(shifted, encoders), encoders) <= 0.2


def test_shipped_micro_clip_reads_prompts_with_the_worlds_tokenizer(tmp_path):
    """CLIP-T on world models embeds each prompt with the tokenizer micro-CLIP was trained with (the
    base pipeline's, saved as tokenizer.json alone). Before this was checked, the eval loaded an empty
    tokenizer for it and every prompt got the same embedding."""
    from transformers import CLIPTokenizer

    from dreambooth.eval.encoders import EncoderUnavailable, load_clip
    from dreambooth.eval.suite import WORLD_MODELS
    from dreambooth.world.encoders import clip_text_embeds, load_world_clip

    prompts = ["a red ball on the beach", "a blue star in the snow"]
    ours = load_clip(str(WORLD_MODELS / "clip")).embed_text(prompts)
    direct = clip_text_embeds(load_world_clip(WORLD_MODELS / "clip"),
                              CLIPTokenizer.from_pretrained(WORLD_MODELS / "base" / "tokenizer"), prompts)
    assert torch.allclose(ours, torch.nn.functional.normalize(direct, dim=-1), atol=1e-5)
    assert float(ours[0] @ ours[1]) < 0.9                                  # two prompts, two embeddings
    lone = tmp_path / "clip"                                               # a world CLIP with no tokenizer near it
    lone.mkdir()
    for f in (WORLD_MODELS / "clip").iterdir():
        (lone / f.name).symlink_to(f)
    with pytest.raises(EncoderUnavailable, match="no tokenizer"):
        load_clip(str(lone))


def test_side_by_side_subjects_of_one_class_run_apart_so_the_second_finds_the_class_images():
    from dreambooth.eval.suite import classes_apart
    from dreambooth.world.subjects import SUBJECTS, get_subject

    order = classes_apart(list(SUBJECTS))
    assert sorted(order) == sorted(SUBJECTS)
    classes = [get_subject(n).cls for n in order]
    assert all(a != b for a, b in zip(classes, classes[1:]))      # two workers never start one class together
    assert classes[:6] == ["ball", "box", "star", "pyramid", "ring", "can"]
    assert classes_apart(["striped_ball", "dotted_ball"]) == ["striped_ball", "dotted_ball"]


def test_detail_scores_reward_the_true_image_and_count_subjects_where_step_b_helped():
    from PIL import Image, ImageFilter

    from dreambooth.eval.detail import detail_scores
    from dreambooth.eval.encoders import resolve_encoders
    from dreambooth.eval.suite_report import detail_summary, detail_target
    from dreambooth.world.defaults import MODELS
    from dreambooth.world.render import render
    from dreambooth.world.subjects import get_subject, ideal_scene

    dino = resolve_encoders(str(MODELS / "clip"), str(MODELS / "instance")).dino
    s = get_subject("striped_ball")
    truth = [Image.fromarray(render(ideal_scene(s, "a [V] ball in the snow", seed=i))) for i in range(2)]
    blurred = [im.filter(ImageFilter.GaussianBlur(1.5)) for im in truth]
    same, blur = detail_scores(truth, truth, dino), detail_scores(blurred, truth, dino)
    assert same["dino"] > 0.9999 and same["psnr"] > 90                      # exact copies: a clamped MSE of 0
    assert blur["psnr"] < 35 and blur["dino"] < same["dino"]

    def scores(untouched, finetuned):
        return {"detail": {"bicubic": {"psnr": 20.0, "dino": 0.5}, "untouched": untouched, "finetuned": finetuned}}
    summary = detail_summary({"a": scores({"psnr": 30.0, "dino": 0.9}, {"psnr": 29.0, "dino": 0.95}),
                              "b": scores({"psnr": 30.0, "dino": 0.9}, {"psnr": 31.0, "dino": 0.85}),
                              "c": scores({"psnr": 30.0, "dino": 0.9}, {"psnr": 31.0, "dino": 0.91}),
                              "d": {"detail": {}}})                     # no SR: not counted
    assert summary["finetuned_better"] == {"psnr": ["b", "c"], "dino": ["a", "c"]}
    assert abs(summary["mean"]["finetuned"]["dino"] - (0.95 + 0.85 + 0.91) / 3) < 1e-9
    assert detail_target(summary)[0][1:4] == [2, 3, 2 / 3] and detail_target(summary)[0][-1] == "yes"
    assert detail_summary({"d": {"detail": {}}}) is None and detail_target(None) == []


def test_a_cascade_row_can_reuse_another_rows_base_images(world):
    """Step (b)'s row shares step (a)'s model and seeds: only its SR stage is drawn, to the same pixels."""
    from dreambooth.eval.protocol import sample_model
    kw = dict(identifier="sks", class_name="ball", class_prompt="a photo of ball", label="x",
              settings=Settings(prompt_list="world", steps=1, images_per_prompt=1, class_images=2),
              sr_model=str(world / "sr"))
    first = sample_model(world / "base", world_prompts()[:2], **kw)
    assert [im.size for im in first.low_res] == [(32, 32)] * 4 and first.images[0].size == (64, 64)
    again = sample_model(world / "no-such-base", world_prompts()[:2], low_res=first.low_res, **kw)   # base not opened
    assert [im.tobytes() for im in again.images + again.class_images] == \
        [im.tobytes() for im in first.images + first.class_images]


def test_suite_captions_variant_needs_no_captions(world, tmp_path, capsys):
    argv = ["eval", "--suite", "microworld", "--world-dir", str(world), "--subjects", "striped_ball",
            "--variants", "dreambooth", "captions", "--out", str(tmp_path / "s")]
    assert main(argv) == 2
    assert "--no-captions" in capsys.readouterr().err and not (tmp_path / "s").exists()
    from dreambooth.eval.cli import command_line
    from dreambooth.cli.main import build_parser
    ns, _ = build_parser().parse_known_args(argv + ["--no-captions"])
    assert "--no-captions" in command_line(ns)


def test_base_row_is_drawn_once_per_class(world, tmp_path):
    """Two subjects of one class share the untouched base model's row ('[V] ball' prompts, class samples)."""
    out = tmp_path / "suite"
    assert main(["eval", "--suite", "microworld", "--world-dir", str(world), "--subjects", "striped_ball",
                 "dotted_ball", "--variants", "dreambooth", "--prompts", "1", "--images-per-prompt", "1",
                 "--class-images", "2", "--steps", "1", "--train-steps", "1", "--num-class-images", "1",
                 "--jobs", "1", "--out", str(out)]) == 0
    assert len(list((out / ".base").glob("ball-*/samples.json"))) == 1
    subjects = json.loads((out / "metrics.json").read_text())["subjects"]
    assert subjects["striped_ball"]["seconds"]["sample/base"] > 0 == subjects["dotted_ball"]["seconds"]["sample/base"]
    assert subjects["striped_ball"]["figures"]["base"]["div_dino"] == subjects["dotted_ball"]["figures"]["base"]["div_dino"]
