"""The instance encoder, the micro world's DINO: a small transformers ViTModel whose CLS token
embeds *which object* is in a render, whatever its context, pose or light.

Trained with SupCon over views: a batch holds a few (class, colour) groups with many random
instances each and two views of every instance (different context and pose). Because most
negatives share the anchor's class and colour, the only way to tell them apart is the pattern and
its fine mark: exactly what subject fidelity must measure. Instances come from `random_pattern`
with fresh seeds, never the named SUBJECTS, which the gate then uses as unseen test objects.
"""

from __future__ import annotations

import random
import shutil
import time
from pathlib import Path

import numpy as np
import torch
from transformers import ViTConfig, ViTModel

from ..encoders import instance_embeds, instance_features, load_instance_encoder, to_64, top1_retrieval
from ..render import Pattern, Scene, random_pattern, random_pose, render
from ..subjects import SUBJECTS, photo_scenes, subject_scene
from ..vocab import CLASSES, COLORS, CONTEXTS
from .common import Log, down_up, is_complete, multi_positive_nce, save_model_atomic, step_generator, train_loop

GROUPS = [(c, col) for c in CLASSES for col in COLORS]    # every (class, colour): 48 groups
BACKDROPS = list(CONTEXTS.values())
TEMPERATURE = 0.1


def build_instance_encoder() -> ViTModel:
    cfg = ViTConfig(image_size=64, patch_size=8, hidden_size=128, num_hidden_layers=4, num_attention_heads=4,
                    intermediate_size=512)
    return ViTModel(cfg, add_pooling_layer=False)


def instance_views(cls: str, color: str, pattern: Pattern, n: int, rng: random.Random) -> np.ndarray:
    """n renders (n, 64, 64, 3) uint8 of one instance, each in a different context and pose."""
    contexts = rng.sample(BACKDROPS, n)
    return np.stack([render(random_pose(Scene(cls, color, ctx, pattern), rng)) for ctx in contexts])


class InstancePool:
    """`per_group` random instances of each (class, colour) group x `views` renders, held as uint8.

    The pool is re-drawn every round (a pure function of seed and round), so training sees many more
    instances than one pool holds, and a resumed run rebuilds exactly the pool it was using."""

    def __init__(self, seed: int, round_: int, per_group: int, views: int):
        images = []
        for g, (cls, color) in enumerate(GROUPS):
            for k in range(per_group):
                rng = random.Random(f"instance/{seed}/{round_}/{g}/{k}")
                images.append(instance_views(cls, color, random_pattern(rng), views, rng))
        arr = torch.from_numpy(np.stack(images)).permute(0, 1, 4, 2, 3)       # (G*per_group, views, 3, 64, 64)
        self.images = arr.reshape(len(GROUPS), per_group, views, 3, 64, 64).contiguous()

    def batch(self, gen: torch.Generator, groups: int, per_group: int) -> tuple[torch.Tensor, torch.Tensor]:
        """`groups` random groups x `per_group` instances x 2 distinct views -> (images, instance ids)."""
        n_groups, pool_per_group, views = self.images.shape[:3]
        g = torch.randperm(n_groups, generator=gen)[:groups]
        k = torch.stack([torch.randperm(pool_per_group, generator=gen)[:per_group] for _ in range(groups)])
        v = torch.stack([torch.randperm(views, generator=gen)[:2] for _ in range(groups * per_group)])
        gi, ki = g[:, None].expand(-1, per_group).reshape(-1), k.reshape(-1)
        views_ = self.images[gi[:, None], ki[:, None], v]                          # (I, 2, 3, 64, 64)
        ids = torch.arange(len(gi))[:, None].expand(-1, 2)
        return views_.reshape(-1, 3, 64, 64).float() / 127.5 - 1, ids.reshape(-1)


def supcon_loss(emb: torch.Tensor, ids: torch.Tensor, temperature: float = TEMPERATURE) -> torch.Tensor:
    """SupCon: every other view of the same instance is a positive, all other views negatives."""
    same = ids[:, None] == ids[None, :]
    eye = torch.eye(len(ids), dtype=torch.bool)
    return multi_positive_nce(emb @ emb.T / temperature, same, exclude=eye)


def train_instance_encoder(out_dir: Path, *, steps: int, seed: int = 0, log: Log = print, groups: int = 4,
                           per_group: int = 16, pool_per_group: int = 24, views: int = 3,
                           round_steps: int = 250, lr: float = 1e-3, ckpt_every: int = 200,
                           log_every: int = 50) -> Path:
    """Train the instance encoder into out_dir/instance (ViTModel; embedding = L2-normalised CLS).

    A batch is groups x per_group instances x 2 views (default 4 x 16 x 2 = 128 images). The pool
    (pool_per_group instances per group x views renders) is re-drawn every round_steps steps.
    Checkpoints into out_dir/.instance-ckpt every ckpt_every steps and resumes from there."""
    out_dir = Path(out_dir)
    final = out_dir / "instance"
    if is_complete(final):
        return final
    if not (per_group <= pool_per_group and 2 <= views <= len(BACKDROPS) and groups <= len(GROUPS)):
        raise ValueError("need per_group <= pool_per_group, 2 <= views <= 9 and groups <= 48")
    t0 = time.time()
    torch.manual_seed(seed)
    model = build_instance_encoder()
    pool: dict[int, InstancePool] = {}

    def refresh(step: int) -> None:
        round_ = step // round_steps
        if round_ not in pool:
            t = time.time()
            pool.clear()
            pool[round_] = InstancePool(seed, round_, pool_per_group, views)
            log(f"instance pool round {round_}: {len(GROUPS) * pool_per_group} instances x {views} views "
                f"rendered in {time.time() - t:.0f}s")

    def loss_fn(step: int) -> tuple[torch.Tensor, dict[str, float]]:
        gen = step_generator(seed, step)
        images, ids = pool[step // round_steps].batch(gen, groups, per_group)
        emb = instance_features(model, down_up(images, 0.3, gen))
        loss = supcon_loss(emb, ids)
        with torch.no_grad():                   # is an anchor's nearest other view its own twin view?
            sims = (emb @ emb.T).fill_diagonal_(-2)
            acc = (ids[sims.argmax(1)] == ids).float().mean()
        return loss, {"loss": loss.item(), "view_top1": acc.item()}

    info = train_loop(model, loss_fn, steps=steps, ckpt_dir=out_dir / ".instance-ckpt", lr=lr,
                      warmup=min(100, steps // 10 + 1), ckpt_every=ckpt_every, log_every=log_every, log=log,
                      on_step=refresh)
    info.update(seed=seed, groups=groups, per_group=per_group, pool_per_group=pool_per_group, views=views,
                round_steps=round_steps, seconds_total_this_run=round(time.time() - t0, 1))
    save_model_atomic(model, final, info)
    shutil.rmtree(out_dir / ".instance-ckpt", ignore_errors=True)
    log(f"instance encoder saved to {final} ({time.time() - t0:.0f}s)")
    return final


# -- gate -------------------------------------------------------------------------------------

def _render(scenes: list[Scene]) -> torch.Tensor:
    return torch.from_numpy(np.stack([render(s) for s in scenes])).permute(0, 3, 1, 2).float() / 127.5 - 1


def instance_gates(out_dir: Path, poses: int = 2, distractors: int = 50) -> dict[str, float]:
    """The instance encoder's gate figures (see `subject_retrieval`) for out_dir/instance."""
    return subject_retrieval(load_instance_encoder(Path(out_dir) / "instance"), poses, distractors)


def subject_retrieval(model: ViTModel, poses: int = 2, distractors: int = 50) -> dict[str, float]:
    """Top-1 retrieval of the 12 named subjects (never trained on) from renders in unseen contexts.

    Gallery: one photo of each subject in its first home context (`photo_scenes(s, 1)`). Queries:
    `poses` random poses of each subject in each of the 7 contexts outside its home. Reported:
    - same_class (gate >= 0.90): retrieve among the subjects of the query's class (2 per class);
    - all12: among all 12 subjects;
    - vs50: among the subject plus `distractors` random instances of the same class AND colour, each
      photographed in the subject's home context (so only the pattern can decide);
    and `@32` variants with the queries box-downsampled to 32 px (base-model resolution).
    """
    subjects = list(SUBJECTS.values())
    gallery = instance_embeds(model, _render([photo_scenes(s, 1)[0] for s in subjects]))
    q_scenes, q_ids = [], []
    for i, s in enumerate(subjects):
        rng = random.Random(f"gate/queries/{s.name}")
        for ctx in [c for c in BACKDROPS if c not in s.home]:
            q_scenes += [random_pose(subject_scene(s, ctx), rng) for _ in range(poses)]
            q_ids += [i] * poses
    q_images = _render(q_scenes)
    same_class = [[j for j, t in enumerate(subjects) if t.cls == subjects[i].cls] for i in q_ids]
    lookalikes = []                      # per subject: its gallery photo, then the distractors
    for i, s in enumerate(subjects):
        rng = random.Random(f"gate/distractors/{s.name}")
        scenes = [random_pose(Scene(s.cls, s.color, s.home[0], random_pattern(rng)), rng) for _ in range(distractors)]
        lookalikes.append(torch.cat([gallery[i:i + 1], instance_embeds(model, _render(scenes))]))
    out: dict[str, float] = {}
    for suffix, images in (("", q_images), ("@32", to_64(torch.nn.functional.avg_pool2d(q_images, 2)))):
        queries = instance_embeds(model, images)
        out[f"instance/same_class{suffix}"] = top1_retrieval(queries, gallery, q_ids, range(len(subjects)), same_class)
        out[f"instance/all12{suffix}"] = top1_retrieval(queries, gallery, q_ids, range(len(subjects)))
        hits = 0.0
        for i, gal in enumerate(lookalikes):
            mine = [q for q, qi in enumerate(q_ids) if qi == i]
            hits += top1_retrieval(queries[mine], gal, [0] * len(mine), range(distractors + 1)) * len(mine)
        out[f"instance/vs{distractors}{suffix}"] = hits / len(q_ids)
    return out
