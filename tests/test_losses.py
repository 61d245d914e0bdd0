"""The pure loss functions, checked against values worked out by hand."""

import math

import pytest
import torch
from diffusers import DDPMScheduler

from dreambooth.core.losses import (add_noise, dreambooth_loss, min_snr_weights, noise_target, per_sample_mse,
                                    sample_noise, snr)

# A 3-step schedule with round numbers: alpha_bar = 0.64, 0.36, 0.25 (sqrt 0.8, 0.6, 0.5).
ALPHAS = torch.tensor([0.64, 0.36, 0.25])


def test_add_noise_mixes_with_sqrt_alpha_bar():
    x0 = torch.full((2, 1, 1, 1), 2.0)
    noise = torch.full((2, 1, 1, 1), 1.0)
    xt = add_noise(x0, noise, torch.tensor([0, 2]), ALPHAS)
    assert xt.flatten().tolist() == pytest.approx([0.8 * 2 + 0.6 * 1, 0.5 * 2 + math.sqrt(0.75) * 1])


def test_epsilon_target_is_the_noise():
    noise = torch.randn(2, 3, 4, 4)
    assert torch.equal(noise_target("epsilon", torch.zeros_like(noise), noise, torch.tensor([0, 1]), ALPHAS), noise)


def test_v_target_by_hand():
    # v = sqrt(a) * eps - sqrt(1 - a) * x0 ; t=1: a=0.36 -> 0.6 * 1 - 0.8 * 2 = -1.0
    v = noise_target("v_prediction", torch.full((1, 1, 1, 1), 2.0), torch.ones(1, 1, 1, 1), torch.tensor([1]), ALPHAS)
    assert v.item() == pytest.approx(-1.0)


def test_v_target_agrees_with_diffusers_scheduler():
    sched = DDPMScheduler(num_train_timesteps=1000, beta_schedule="scaled_linear", prediction_type="v_prediction")
    x0, noise = torch.randn(4, 4, 8, 8), torch.randn(4, 4, 8, 8)
    t = torch.tensor([0, 10, 500, 999])
    ours = noise_target("v_prediction", x0, noise, t, sched.alphas_cumprod)
    assert torch.allclose(ours, sched.get_velocity(x0, noise, t), atol=1e-5)
    assert torch.allclose(add_noise(x0, noise, t, sched.alphas_cumprod), sched.add_noise(x0, noise, t), atol=1e-5)


def test_unknown_prediction_type_is_rejected():
    with pytest.raises(ValueError):
        noise_target("flow", torch.zeros(1), torch.zeros(1), torch.tensor([0]), ALPHAS)


def test_per_sample_mse_reduces_all_but_batch():
    pred = torch.zeros(2, 2, 2, 2)
    target = torch.stack([torch.ones(2, 2, 2), torch.full((2, 2, 2), 3.0)])
    assert per_sample_mse(pred, target).tolist() == [1.0, 9.0]


def test_prior_preservation_is_instance_mean_plus_weighted_prior_mean():
    per_sample = torch.tensor([1.0, 3.0, 10.0, 20.0])      # two instance, two class samples
    is_prior = torch.tensor([False, False, True, True])
    parts = dreambooth_loss(per_sample, is_prior, prior_loss_weight=0.5)
    assert parts.instance.item() == 2.0
    assert parts.prior.item() == 15.0
    assert parts.total.item() == 2.0 + 0.5 * 15.0


def test_without_class_samples_the_loss_is_the_instance_loss():
    parts = dreambooth_loss(torch.tensor([2.0, 4.0]), torch.tensor([False, False]), prior_loss_weight=1.0)
    assert parts.prior is None and parts.total.item() == 3.0


def test_prior_weight_zero_ignores_class_samples_but_reports_them():
    parts = dreambooth_loss(torch.tensor([2.0, 100.0]), torch.tensor([False, True]), prior_loss_weight=0.0)
    assert parts.total.item() == 2.0 and parts.prior.item() == 100.0


def test_min_snr_weights_by_hand():
    # snr = a / (1 - a): t0 -> 0.64/0.36 = 1.777.., t2 -> 0.25/0.75 = 1/3
    t = torch.tensor([0, 2])
    assert snr(t, ALPHAS).tolist() == pytest.approx([0.64 / 0.36, 1 / 3])
    eps = min_snr_weights(t, ALPHAS, gamma=1.0, prediction_type="epsilon")
    assert eps.tolist() == pytest.approx([1.0 / (0.64 / 0.36), 1.0])        # clipped / snr
    v = min_snr_weights(t, ALPHAS, gamma=1.0, prediction_type="v_prediction")
    assert v.tolist() == pytest.approx([1.0 / (0.64 / 0.36 + 1), (1 / 3) / (1 / 3 + 1)])


def test_min_snr_plus_one_keeps_the_high_noise_end():
    # x0-terms weight min(snr, g) + 1; for v it is divided by snr + 1
    t = torch.tensor([0, 2])
    v = min_snr_weights(t, ALPHAS, gamma=1.0, prediction_type="v_prediction", plus_one=True)
    assert v.tolist() == pytest.approx([2.0 / (0.64 / 0.36 + 1), (1 / 3 + 1) / (1 / 3 + 1)])
    # at pure noise (snr -> 0) the usual form gives v almost no weight, the +1 form full weight
    noisy = torch.tensor([1e-6, 1e-6 / (1 + 1e-6)])
    usual = min_snr_weights(torch.tensor([0]), noisy[:1], 5.0, "v_prediction")
    kept = min_snr_weights(torch.tensor([0]), noisy[:1], 5.0, "v_prediction", plus_one=True)
    assert usual.item() < 1e-5 and kept.item() == pytest.approx(1.0, rel=1e-4)


def test_weights_scale_each_sample():
    parts = dreambooth_loss(torch.tensor([2.0, 4.0, 6.0]), torch.tensor([False, False, True]), 1.0,
                            weights=torch.tensor([0.5, 1.0, 2.0]))
    assert parts.instance.item() == 2.5 and parts.prior.item() == 12.0   # (1 + 4) / 2, 6 * 2


def test_offset_noise_adds_a_per_channel_constant():
    g1, g2 = torch.Generator().manual_seed(0), torch.Generator().manual_seed(0)
    plain = sample_noise((2, 3, 8, 8), g1)
    offset = sample_noise((2, 3, 8, 8), g2, offset=0.1)
    shift = offset - plain
    assert shift.abs().max() > 0
    # the difference is constant over each (sample, channel) plane
    assert torch.allclose(shift, shift[:, :, :1, :1].expand_as(shift))


def test_noise_is_a_function_of_the_generator():
    a = sample_noise((1, 4, 2, 2), torch.Generator().manual_seed(3))
    b = sample_noise((1, 4, 2, 2), torch.Generator().manual_seed(3))
    assert torch.equal(a, b)
