"""The world models' gates: PSNR arithmetic, and `dreambooth world gates` end to end on a toy world
(the figures of random models mean nothing; the files, keys and the comparison's inputs do)."""

from __future__ import annotations

import json
import math

import torch
from PIL import Image

from dreambooth.cli.main import main
from dreambooth.world.gates import heldout, psnr, sharpness


def test_psnr_on_hand_made_images():
    a = torch.zeros(2, 3, 4, 4)
    b = a.clone()
    b[1] += 0.2                                           # mse 0.04 on a peak-to-peak range of 2
    out = psnr(b, a)
    assert out[0] > 90                                    # identical images: (clamped) very high
    assert math.isclose(out[1].item(), 10 * math.log10(4 / 0.04), rel_tol=1e-5)   # = 20 dB


def test_sharpness_is_zero_on_flat_images_and_grows_with_edges():
    flat = torch.full((1, 3, 8, 8), 0.3)
    edge = flat.clone()
    edge[..., 4:] = -0.5
    assert sharpness(flat).item() == 0 and sharpness(edge).item() > 0
    blurred = torch.nn.functional.interpolate(torch.nn.functional.avg_pool2d(edge, 2), size=8, mode="bilinear")
    assert sharpness(blurred).item() < sharpness(edge).item()


def test_heldout_prompts_name_every_attribute_and_match_their_renders():
    captions, real, attrs = heldout(6)
    assert real.shape == (6, 3, 64, 64) and real.min() >= -1 and real.max() <= 1
    assert all(c.count(" ") >= 3 for c in captions) and attrs.shape == (6, 3)
    assert heldout(6)[0] == captions                       # a fixed stream: the same prompts every run


def test_world_gates_command_writes_figures_and_pictures(world, tmp_path):
    torch.set_num_threads(1)
    out = tmp_path / "gates"
    assert main(["world", "gates", "--models", str(world), "--out", str(out), "--prompts", "2",
                 "--sr-images", "2", "--steps", "2"]) == 0
    figures = json.loads((out / "gates.json").read_text())
    assert {"encoders", "base", "sr", "cascade", "speed"} <= figures.keys()
    for key in ("real/class", "samples/color", "ratio/context"):
        assert key in figures["base"]
    sr = figures["sr"]
    assert all(math.isfinite(sr[k]) for k in ("sr/psnr", "bicubic/psnr", "sr/instance_similarity"))
    assert Image.open(out / "sr_vs_bicubic.png").size == (2 * 64, 4 * 64)     # 4 rows of 2 images
    assert Image.open(out / "base_samples.png").size[1] == 64
    assert Image.open(out / "cascade_vs_bicubic.png").size == (2 * 64, 2 * 64)  # base upsampled, cascade
    assert figures["cascade"]["sharpness/cascade"] >= 0
    assert figures["speed"]["images"] == 4 and figures["speed"]["load_seconds"] > 0

