"""What the page's buttons do, without a browser: messages shown for bad input (the CLI's own),
a second submit told its queue position, photos from a micro-world subject, config load/save, and
the Results tab of a LoRA run and of a full run with a single-file checkpoint."""

from __future__ import annotations

import json
import shutil
import sys
import zipfile
from pathlib import Path

from safetensors import safe_open

from dreambooth.cli import main
from dreambooth.ui import form, runs
from dreambooth.ui.handlers import Handlers
from dreambooth.ui.jobs import JobQueue


def sleeper(run, resume):
    code = "import signal, sys, time; signal.signal(signal.SIGTERM, lambda *a: sys.exit(143)); time.sleep(60)"
    return [sys.executable, "-c", code]


def settings(**changes):
    values = form.job_to_form(form.default_job())
    values.update(changes)
    return values


def test_buttons_report_problems_and_queue_positions(tmp_path):
    queue = JobQueue(tmp_path, command=sleeper)
    h = Handlers(tmp_path, queue)
    name, message = h.train("", settings(class_name="star"))
    assert message == "**Error:** Add photos first (Photos tab)."

    name, problem = h.use_subject("", "striped_star")
    assert problem == ""
    message, rows, crops = h.photo_view(name, settings())
    assert message.startswith("5 photos used, 0 skipped; the model sees 32 px crops")
    assert len(rows) == 5 and len(crops) == 5 * 4 and crops[0][0].size == (128, 128)   # 4 random crops each
    # the subject's photos carry .txt captions: unused (and said so) until the form turns them on
    assert "caption beside it, unused" in message and crops[0][1] == rows[0][0]
    message, _, crops = h.photo_view(name, settings(caption_extension=".txt"))
    assert "unused" not in message
    assert crops[0][1] == f"{rows[0][0]}: {(h.run(name).photos / rows[0][0]).with_suffix('.txt').read_text().strip()}"
    assert "[V] star" in crops[0][1]

    _, message = h.train(name, settings(class_name="star", learning_rate="-1"))
    assert message.startswith("**Error:** Settings: 'learning_rate' must be a finite number > 0")
    _, message = h.train(name, settings(class_name="star", pretrained_model_name_or_path=str(tmp_path / "nope")))
    assert "--model" in message and "neither a folder here" in message      # preflight's message, as in the CLI
    first, message = h.train(name, settings(class_name="star"))
    assert first == name and message == "Training started."

    other, _ = h.use_subject("", "disc_star")
    assert other != name
    _, message = h.train(other, settings(class_name="star"))
    assert message == "Queued: 1 job ahead of it. It starts by itself."
    assert h.train_view(other)["status"].startswith("**queued** Queued: 1 job ahead")
    assert h.initial_run() == name    # a reopened page shows the training run
    queue.close()


def test_config_load_and_save(tmp_path):
    h = Handlers(tmp_path, JobQueue(tmp_path, command=sleeper))
    path, message = h.save_config("", settings(class_name="star", max_train_steps="12"))
    values, note = h.load_config(path)
    assert values == settings(class_name="star", max_train_steps="12") and "not used" in note
    bad = tmp_path / "bad.yaml"
    bad.write_text("learning_rate: 1e-4\nlearning_rate: 2e-4\n")
    values, message = h.load_config(str(bad))
    assert values is None and "line 2: 'learning_rate' is set twice" in message


def test_lora_settings_are_checked_when_train_is_pressed(tmp_path):
    """LoRA's fields come from the config tree like any other; a combination that cannot work is
    refused by the Train button itself (preflight), not later by the worker."""
    queue = JobQueue(tmp_path, command=sleeper)
    h = Handlers(tmp_path, queue)
    name, _ = h.use_subject("", "striped_star")
    _, message = h.train(name, settings(class_name="star", rank="8"))
    assert message.startswith("**Error:** --rank only apply to LoRA training, but --lora is off. Add --lora")
    _, message = h.train(name, settings(class_name="star", lora=True, use_dora=True, output_kohya_format=True))
    assert "drops DoRA magnitudes" in message
    _, message = h.train(name, settings(class_name="star", optimizer="sgd"))
    assert "choose adamw or prodigy" in message
    assert queue.position(name) is None and queue.active() is None      # nothing was queued
    _, message = h.train(name, settings(class_name="star", lora=True, rank="8", use_dora=True))
    assert message == "Training started."
    job = form.form_to_job(h.form_values(name))
    assert job.adapter.lora and job.adapter.rank == 8 and job.adapter.use_dora    # request.yaml as trained
    queue.close()


def test_results_of_a_lora_run_and_of_a_full_run_with_a_single_file(tmp_path, tiny_sd, photos):
    """Downloads: a LoRA run offers its LoRA in both layouts (and its identifier rows) beside the folder zip; a full run with
    --output_single_file offers the checkpoint, which the zip leaves out (the pipeline's weights stay in
    it). A LoRA run, which has no model_index.json, renders a gallery too."""
    work = tmp_path / "work"
    h = Handlers(work, JobQueue(work, command=sleeper))
    lora_run, full_run = runs.new_run(work), runs.new_run(work)
    common = ["train", f"--model={tiny_sd}", f"--instance-data-dir={photos}", "--class-name=dog",
              "--max-train-steps=1", "--validation_inference_steps=2", "--report_to=none"]
    assert main(common + ["--lora", "--output-kohya-format", "--train-text-encoder-ti",
                          f"--output-dir={lora_run.model}"]) == 0
    assert main(common + ["--output-single-file", f"--output-dir={full_run.model}"]) == 0

    files, message = h.downloads(lora_run.name)
    names = [Path(f).name for f in files]
    identifier = json.loads((lora_run.model / "identifier.json").read_text())["identifier"]
    assert names == [f"{lora_run.name}-model.zip", f"{lora_run.name}-pytorch_lora_weights.safetensors",
                     f"{lora_run.name}-identifier_embeddings.safetensors",
                     f"{lora_run.name}-pytorch_lora_weights_kohya.safetensors",
                     f"{identifier}.safetensors"], message      # webui's trigger word is the embedding's name
    assert Path(files[1]).read_bytes() == (lora_run.model / "pytorch_lora_weights.safetensors").read_bytes()
    with zipfile.ZipFile(files[0]) as z:
        inside = set(z.namelist())
    assert "model/pytorch_lora_weights.safetensors" in inside and not any("checkpoint-" in n for n in inside)

    files, message = h.downloads(full_run.name)
    assert [Path(f).name for f in files] == [f"{full_run.name}-model.zip", f"{full_run.name}-model.safetensors"]
    with safe_open(files[1], "pt") as f:      # the original SD layout, as A1111 and ComfyUI load it
        assert "model.diffusion_model.input_blocks.0.0.weight" in set(f.keys())
    with zipfile.ZipFile(files[0]) as z:
        inside = set(z.namelist())
    assert {"model/model_index.json", "model/unet/diffusion_pytorch_model.safetensors",
            "model/text_encoder/model.safetensors"} <= inside and "model/model.safetensors" not in inside

    shown, message = h.render(lora_run.name, "a photo of <id> dog", 1, 2)
    assert message == "" and len(shown) == 1 and Path(shown[0][0]).is_file()
    (lora_run.model / "sr").mkdir()           # a cascade's step (b) LoRA has the same file name: kept apart
    shutil.copy(lora_run.model / "pytorch_lora_weights.safetensors", lora_run.model / "sr")
    files, _ = h.downloads(lora_run.name)
    assert Path(files[-1]).name == f"{lora_run.name}-sr-pytorch_lora_weights.safetensors" and len(files) == 6
    _, message = h.downloads(runs.new_run(work).name)
    assert message.startswith("**Error:** Run ") and "has no finished model yet" in message


def test_gallery_of_a_cascade_shows_each_base_image_then_its_sr_image(tmp_path):
    """A run whose model has step (b)'s sr/ (the micro world's base -> SR cascade) renders through both
    stages: each prompt and seed shows the 32 px base image, then the 64 px SR image made from it."""
    from PIL import Image

    from dreambooth.files import write_json
    from dreambooth.world.defaults import WORLD_BASE, WORLD_SR

    work = tmp_path / "work"
    h = Handlers(work, JobQueue(work, command=sleeper))
    run = runs.new_run(work)
    shutil.copytree(WORLD_BASE, run.model)
    shutil.copytree(WORLD_SR, run.model / "sr")
    write_json(run.model / "identifier.json", {"identifier": "nnx"})
    shown, message = h.render(run.name, "a photo of <id> star\na red <id> star in the snow", 2, 2)
    assert message == ""
    captions = [c for _, c in shown]
    assert captions == [f"{p} · seed {s} · {stage}" for p in ("a photo of <id> star", "a red <id> star in the snow")
                        for s in (0, 1) for stage in ("base", "SR")]
    sizes = [Image.open(path).size for path, _ in shown]
    assert sizes == [(32, 32), (64, 64)] * 4


def test_progress_shows_class_image_generation_before_step_one(tmp_path, tiny_sd, photos):
    """Prior preservation can sample for minutes before step 1: the training process reports each class
    image it writes, and the page's bar counts them instead of saying 'no training step yet'."""
    import json

    from dreambooth.core import events
    from dreambooth.ui.progress import bar_html, progress

    seen = []

    def listen(kind, data):
        seen.append((kind, data))

    events.subscribe(listen)
    try:
        assert main(["train", f"--model={tiny_sd}", f"--instance-data-dir={photos}", "--class-name=dog",
                     "--with-prior-preservation", "--num-class-images=2", "--class-inference-steps=2",
                     f"--class-data-dir={tmp_path / 'class'}", "--max-train-steps=1", "--validation_inference_steps=2",
                     "--report_to=none", f"--output-dir={tmp_path / 'out'}"]) == 0
    finally:
        events.unsubscribe(listen)
    counts = [(d["done"], d["total"]) for kind, d in seen if kind == "class_images"]
    assert counts == [(1, 2), (2, 2)]
    assert [kind for kind, _ in seen].index("step") > [kind for kind, _ in seen].index("class_images")

    run = runs.new_run(tmp_path / "work")
    run.events.write_text(json.dumps({"kind": "class_images", "time": 1.0, "done": 1, "total": 2}) + "\n")
    assert "generating class images for prior preservation: <b>1</b> / 2" in bar_html(progress(run), "running")
    with run.events.open("a") as f:
        f.write(json.dumps({"kind": "step", "time": 2.0, "step": 1, "max_steps": 4, "loss": 0.5}) + "\n")
    shown = bar_html(progress(run), "running")
    assert "class images" not in shown and "step <b id='db-step'>1</b> / 4" in shown
