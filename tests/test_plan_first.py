"""The plan comes first: a run prints (and emits) what it will do before it generates class images,
and the class images it then draws are the untouched base model's, whatever is trained."""

from __future__ import annotations

import io
import sys

import torch
from peft import LoraConfig

from dreambooth.cli import main
from dreambooth.core import events, lora

FAST = ["--class_inference_steps=2", "--validation_inference_steps=2", "--report_to=none"]


def test_plan_is_printed_and_emitted_before_class_images_are_generated(tiny_sd, photos, tmp_path, monkeypatch):
    class_dir, out = tmp_path / "class", tmp_path / "out"
    argv = ["train", f"--model={tiny_sd}", f"--instance-data-dir={photos}", "--class-name=dog",
            "--with-prior-preservation", "--num-class-images=3", f"--class-data-dir={class_dir}",
            "--checkpointing-steps=1", f"--output-dir={out}"] + FAST
    seen = []   # (event kind, class images on disk when it came, its start step)

    def listener(kind, data):
        seen.append((kind, len(list(class_dir.glob("*.png"))), data.get("start_step")))
    stream = io.StringIO()      # stdout (the plan) and stderr (the progress bars) in the order written
    monkeypatch.setattr(sys, "stdout", stream)
    monkeypatch.setattr(sys, "stderr", stream)
    events.subscribe(listener)
    try:
        assert main(argv + ["--max-train-steps=1"]) == 0
        first = stream.getvalue()
        assert main(argv + ["--max-train-steps=2", "--resume-from-checkpoint=latest"]) == 0
    finally:
        events.unsubscribe(listener)
    plan_line = f"preservation ON: 3 class images in {class_dir} (0 found, 3 to generate)"
    assert plan_line in first and "class images:" in first        # the plan, then generation's progress bar
    assert first.index(plan_line) < first.index("class images:")
    assert first.index("train        unet:") < first.index("class images:")   # the whole plan, not a part
    plans = [(n, start) for kind, n, start in seen if kind == "plan"]
    assert plans == [(0, 0), (3, 1)]      # first run: before any class image; the resumed run: from step 1
    assert len(list(class_dir.glob("*.png"))) == 3


def test_a_lora_run_draws_the_same_class_images_as_a_full_run(tiny_sd, photos, tmp_path):
    """The adapters are inserted before the plan, but the class images are drawn before the frozen base goes
    to the training precision (bf16 here) and into accelerate's wrappers: the same images as a full run."""
    common = ["train", f"--model={tiny_sd}", f"--instance-data-dir={photos}", "--class-name=dog",
              "--with-prior-preservation", "--num-class-images=2", "--mixed-precision=bf16", "--max-train-steps=1"]
    drawn = {}
    for name, extra in {"full": [], "lora": ["--lora", "--train-text-encoder"]}.items():
        class_dir = tmp_path / f"class-{name}"
        assert main(common + extra + FAST + [f"--class-data-dir={class_dir}",
                                             f"--output-dir={tmp_path / name}"]) == 0
        drawn[name] = {p.name: p.read_bytes() for p in sorted(class_dir.glob("*.png"))}
    assert len(drawn["full"]) == 2 and drawn["lora"] == drawn["full"]


def test_bypassed_adapters_give_the_base_output_and_keep_their_grads():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.ReLU(), torch.nn.Linear(8, 4))
    x = torch.randn(3, 8)
    base = net(x)
    lora.insert(net, LoraConfig(r=2, use_dora=True, target_modules=["0", "2"]))
    adapter = [q for n, q in net.named_parameters() if "lora_" in n]
    with torch.no_grad():
        for q in adapter:
            q.add_(0.5)       # a trained adapter: no longer a no-op
    assert not torch.allclose(net(x), base)
    with lora.bypassed([net]):
        assert torch.equal(net(x), base)
    assert not torch.allclose(net(x), base) and all(q.requires_grad for q in adapter)
