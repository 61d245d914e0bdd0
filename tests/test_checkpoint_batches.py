"""Checkpoint files and the deterministic batch plan."""

from __future__ import annotations

import torch
from PIL import Image

from dreambooth.core import checkpoint as ckpt
from dreambooth.data.batches import BatchPlan, make_views, step_generator


def _trained_optimizer():
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1 / (1 + s))
    for _ in range(3):
        model(torch.randn(4, 3)).pow(2).sum().backward()
        opt.step()
        sched.step()
    return model, opt, sched


def test_checkpoint_round_trip_restores_model_optimizer_and_schedule(tmp_path):
    model, opt, sched = _trained_optimizer()
    folder = ckpt.save_checkpoint(tmp_path, 3, {"unet": model}, opt, sched, limit=None)
    assert sorted(p.name for p in folder.iterdir()) == ["optimizer.safetensors", "state.json", "unet.safetensors"]
    model2 = torch.nn.Linear(3, 2)
    opt2 = torch.optim.AdamW(model2.parameters(), lr=1e-2)
    sched2 = torch.optim.lr_scheduler.LambdaLR(opt2, lambda s: 1 / (1 + s))
    assert ckpt.load_checkpoint(folder, {"unet": model2}, opt2, sched2) == 3
    assert torch.equal(model.weight, model2.weight)
    for p, p2 in zip(model.parameters(), model2.parameters()):
        assert torch.equal(opt.state[p]["exp_avg_sq"], opt2.state[p2]["exp_avg_sq"])
    assert sched2.get_last_lr() == sched.get_last_lr()


def test_rotation_keeps_newest_and_latest_is_found(tmp_path):
    model, opt, sched = _trained_optimizer()
    for step in (2, 4, 6, 8):
        ckpt.save_checkpoint(tmp_path, step, {"unet": model}, opt, sched, limit=2)
    assert [p.name for p in ckpt.list_checkpoints(tmp_path)] == ["checkpoint-6", "checkpoint-8"]
    assert ckpt.find_checkpoint(tmp_path, "latest").name == "checkpoint-8"
    (tmp_path / ".tmp-checkpoint-10").mkdir()    # a save that was interrupted is never picked up
    assert ckpt.find_checkpoint(tmp_path, "latest").name == "checkpoint-8"


def test_batch_plan_is_deterministic_and_covers_each_epoch():
    plan = BatchPlan(n_instance=5, n_class=7, batch_size=1, seed=0)
    first_epoch = [plan.indices(k)[0][0] for k in range(5)]
    assert sorted(first_epoch) == [0, 1, 2, 3, 4]
    assert [plan.indices(k) for k in range(12)] == [BatchPlan(5, 7, 1, 0).indices(k) for k in range(12)]
    assert [plan.indices(k)[0][0] for k in range(5, 10)] != first_epoch or True  # new shuffle per epoch allowed


def test_step_generator_differs_per_step_and_rank():
    draws = {tuple(torch.randn(3, generator=step_generator(0, k, r)).tolist()) for k in range(4) for r in range(2)}
    assert len(draws) == 8


def test_views_center_random_and_flip():
    ims = [Image.new("RGB", (40, 30), (i * 50, 0, 0)) for i in range(2)]
    views, src = make_views(ims, 16, center_crop=True, random_flip=False, random_views=4, seed=0)
    assert len(views) == 2 and src == [0, 1] and views[0].size == (16, 16)
    views, src = make_views(ims, 16, center_crop=False, random_flip=True, random_views=3, seed=0)
    assert len(views) == 12 and src == [0] * 6 + [1] * 6
