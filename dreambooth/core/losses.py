"""Diffusion losses as pure functions: tensors in, tensors out.

Nothing here samples randomness or reads global state: noise, timesteps and the schedule's
alphas_cumprod are arguments, so every function is testable with hand-made tensors and the
training loop stays a plain sequence of calls.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


def sample_noise(shape: torch.Size | tuple[int, ...], generator: torch.Generator, *,
                 offset: float = 0.0) -> torch.Tensor:
    """Gaussian noise; `offset` adds a per-(sample, channel) constant so the model can learn
    overall brightness shifts (offset noise)."""
    noise = torch.randn(shape, generator=generator)  # (B, C, H, W)
    if offset:
        noise = noise + offset * torch.randn((shape[0], shape[1], 1, 1), generator=generator)
    return noise


def add_noise(x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor, alphas_cumprod: torch.Tensor) -> torch.Tensor:
    """Forward process q(x_t | x_0) = sqrt(a_t) x_0 + sqrt(1 - a_t) noise."""
    a = _per_sample(alphas_cumprod[t], x0)
    return a.sqrt() * x0 + (1 - a).sqrt() * noise


def noise_target(prediction_type: str, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor,
                 alphas_cumprod: torch.Tensor) -> torch.Tensor:
    """What the network should predict, read from the scheduler's `prediction_type`."""
    if prediction_type == "epsilon":
        return noise
    if prediction_type == "v_prediction":
        a = _per_sample(alphas_cumprod[t], x0)
        return a.sqrt() * noise - (1 - a).sqrt() * x0
    if prediction_type == "sample":
        return x0
    raise ValueError(f"unsupported prediction_type {prediction_type!r}")


def snr(t: torch.Tensor, alphas_cumprod: torch.Tensor) -> torch.Tensor:
    """Signal-to-noise ratio a_t / (1 - a_t) per timestep."""
    a = alphas_cumprod[t].float()
    return a / (1 - a)


def min_snr_weights(t: torch.Tensor, alphas_cumprod: torch.Tensor, gamma: float, prediction_type: str, *,
                    plus_one: bool = False) -> torch.Tensor:
    """Min-SNR-gamma weights (Hang et al. 2023) expressed for the model's own target.

    In clean-image (x0) terms the weight is w = min(snr, g); an epsilon loss already carries a
    factor snr and a v loss a factor snr + 1, so the weight on the target's loss is
    epsilon: w / snr; v-prediction: w / (snr + 1); x0: w.
    plus_one: w = min(snr, g) + 1 instead. Why: the usual form gives the high-noise end (snr -> 0)
    almost no weight, yet that end decides layout and colour when sampling starts from pure noise;
    with +1 a v-prediction loss keeps full weight there (w / (snr + 1) -> 1).
    """
    s = snr(t, alphas_cumprod)
    clipped = torch.clamp(s, max=gamma) + (1.0 if plus_one else 0.0)
    if prediction_type == "epsilon":
        return clipped / s
    if prediction_type == "v_prediction":
        return clipped / (s + 1)
    return clipped


def per_sample_mse(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """(B, ...) x (B, ...) -> (B,) mean squared error, computed in fp32."""
    return (pred.float() - target.float()).pow(2).flatten(1).mean(1)


@dataclass
class LossParts:
    total: torch.Tensor
    instance: torch.Tensor
    prior: torch.Tensor | None


def dreambooth_loss(per_sample: torch.Tensor, is_prior: torch.Tensor, prior_loss_weight: float,
                    weights: torch.Tensor | None = None) -> LossParts:
    """Paper Eq. 2 over one joined batch: mean loss on the instance samples plus
    `prior_loss_weight` x mean loss on the class (prior) samples.

    per_sample: (B,) losses; is_prior: (B,) bool; weights: optional (B,) per-sample weights (Min-SNR),
    applied to both halves so both losses are on the same scale.
    """
    if weights is not None:
        per_sample = per_sample * weights
    instance = per_sample[~is_prior].mean()
    if not bool(is_prior.any()):
        return LossParts(instance, instance, None)
    prior = per_sample[is_prior].mean()
    return LossParts(instance + prior_loss_weight * prior, instance, prior)


def _per_sample(values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """(B,) -> (B, 1, 1, ...) broadcastable against `like`, in its dtype and device."""
    return values.to(like.device, like.dtype).reshape(-1, *([1] * (like.ndim - 1)))
