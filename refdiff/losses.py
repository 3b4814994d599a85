"""The variational bound and the training losses, in nats inside and bits/dim at the edge.

L = L_T + Σ_{t>1} L_{t-1} + L_0  (Ho et al. eq. 5), with
  L_T     = KL(q(x_T | x_0) ‖ N(0, I))                       :func:`prior_kl`
  L_{t-1} = KL(q(x_{t-1} | x_t, x_0) ‖ p_θ(x_{t-1} | x_t))   :func:`vb_term` for index t > 0
  L_0     = -log p_θ(x_0 | x_1)                              :func:`vb_term` at index 0, through
            :func:`discretized_gaussian_log_likelihood` (8-bit data) or
            :func:`continuous_gaussian_log_likelihood` (real-valued data).
bits/dim = nats / (D · ln 2), D the number of dimensions of one example.
"""

from __future__ import annotations

import enum
import math
from typing import Any, NamedTuple

from ._array import (
    Array,
    as_batch_timesteps,
    device,
    gather,
    get_namespace,
    log_ndtr,
    stop_gradient,
)
from .forward import _posterior_mean
from .reverse import (
    Prediction,
    Variance,
    _enum,
    _v_from_x0_eps,
    p_mean_variance,
    split_model_output,
)

__all__ = [
    "Decoder",
    "LossTerms",
    "LossType",
    "VBTerm",
    "continuous_gaussian_log_likelihood",
    "discretized_gaussian_log_likelihood",
    "mean_flat",
    "normal_kl",
    "prior_kl",
    "sum_flat",
    "training_losses",
    "vb_term",
]

LN2 = math.log(2.0)


class Decoder(str, enum.Enum):
    """The decoder p_θ(x_0 | x_1) used for L_0."""

    DISCRETIZED = "discretized"  # 8-bit data in [-1, 1]: discretized Gaussian with open outer bins
    GAUSSIAN = "gaussian"  # real-valued data: a continuous Gaussian density


class LossType(str, enum.Enum):
    """The training objective."""

    SIMPLE = "simple"  # MSE on the prediction target (ε, x_0 or v): Ho et al.'s L_simple
    HYBRID = "hybrid"  # L_simple + λ L_vlb, λ = 0.001, the mean frozen in L_vlb (improved DDPM)
    VLB = "vlb"  # the variational bound alone (an unbiased one-timestep estimate)


def sum_flat(x: Array, xp: Any | None = None) -> Array:
    """Sum over every axis but the first (the batch)."""
    xp = get_namespace(x) if xp is None else xp
    return xp.sum(x, axis=tuple(range(1, x.ndim))) if x.ndim > 1 else x


def mean_flat(x: Array, xp: Any | None = None) -> Array:
    """Mean over every axis but the first (the batch)."""
    xp = get_namespace(x) if xp is None else xp
    return xp.mean(x, axis=tuple(range(1, x.ndim))) if x.ndim > 1 else x


def normal_kl(mean1: Array, logvar1: Array, mean2: Array, logvar2: Array) -> Array:
    """KL(N(mean1, e^{logvar1}) ‖ N(mean2, e^{logvar2})) elementwise, in nats.

    KL = ½ (-1 + logvar2 - logvar1 + e^{logvar1 - logvar2} + (mean1 - mean2)² e^{-logvar2}),
    evaluated as ½ (expm1(d) - d + (mean1 - mean2)² e^{-logvar2}) with d = logvar1 - logvar2, which is
    exactly 0 at equality and keeps full precision for nearly equal distributions.
    """
    xp = get_namespace(mean1, logvar1, mean2, logvar2)
    d = logvar1 - logvar2
    return 0.5 * (xp.expm1(d) - d + (mean1 - mean2) ** 2 * xp.exp(-logvar2))


def _log1mexp(d: Array, xp: Any) -> Array:
    """log(1 - e^d) for d < 0, accurate everywhere (Mächler 2012), with inputs kept finite in
    both branches so that autograd sees no inf·0."""
    tiny = xp.finfo(d.dtype).smallest_normal
    d = xp.minimum(d, -tiny)
    near = d > -LN2
    d_near = xp.where(near, d, -1.0)
    d_far = xp.where(near, -1.0, d)
    return xp.where(near, xp.log(-xp.expm1(d_near)), xp.log1p(-xp.exp(d_far)))


def discretized_gaussian_log_likelihood(
    x: Array, *, means: Array, log_scales: Array, num_bins: int = 256
) -> Array:
    """log p(x) for data on ``num_bins`` evenly spaced levels in [-1, 1] under a discretized Gaussian.

    Each level x owns the bin [x - δ, x + δ] with δ = 1/(num_bins - 1); the outer bins are open
    (-∞, -1 + δ] and [1 - δ, ∞), so the probabilities of all levels sum to 1. The log of each bin's
    mass log(Φ(b) - Φ(a)) is computed in log space from ``log_ndtr`` of whichever tail is smaller
    (mirroring a bin above the mean), never through a tanh approximation or a clamp.

    Parameters
    ----------
    x : array [B, ...]
        Data on the grid of levels, in [-1, 1].
    means, log_scales : array [B, ...]
        The Gaussian's mean and log standard deviation.

    Returns
    -------
    array [B, ...]
        log-likelihood in nats, elementwise.
    """
    xp = get_namespace(x, means, log_scales)
    if not (tuple(x.shape) == tuple(means.shape) == tuple(log_scales.shape)):
        raise ValueError(
            f"shapes differ: x {tuple(x.shape)}, means {tuple(means.shape)}, log_scales {tuple(log_scales.shape)}"
        )
    if num_bins < 2:
        raise ValueError(f"num_bins must be >= 2, got {num_bins}")
    half = 1.0 / (num_bins - 1)
    inv_std = xp.exp(-log_scales)
    centred = x - means
    lo = (centred - half) * inv_std
    hi = (centred + half) * inv_std
    # A bin whose centre is above the mean is mirrored: Φ(b) - Φ(a) = Φ(-a) - Φ(-b).
    upper = (lo + hi) > 0
    a = xp.where(upper, -hi, lo)
    b = xp.where(upper, -lo, hi)
    log_b = log_ndtr(b, xp)
    interior = log_b + _log1mexp(log_ndtr(a, xp) - log_b, xp)
    bottom = x < -1.0 + half / 2
    top = x > 1.0 - half / 2
    edge = log_ndtr(xp.where(bottom, hi, -lo), xp)
    return xp.where(bottom | top, edge, interior)


def continuous_gaussian_log_likelihood(x: Array, *, means: Array, log_scales: Array) -> Array:
    """log N(x; mean, e^{2 log_scale}) elementwise, in nats (for real-valued data)."""
    xp = get_namespace(x, means, log_scales)
    z = (x - means) * xp.exp(-log_scales)
    return -0.5 * z * z - log_scales - 0.5 * math.log(2.0 * math.pi)


def prior_kl(schedule: Any, x_start: Array) -> Array:
    """L_T = KL(q(x_T | x_0) ‖ N(0, I)) per example, summed over dimensions, in nats.

    Zero under zero terminal SNR; not a function of any model parameter.
    """
    xp = get_namespace(x_start)
    t = xp.full(
        (x_start.shape[0],), schedule.num_timesteps - 1, dtype=xp.int64, device=device(x_start)
    )
    mean = gather(schedule.sqrt_alphas_cumprod, t, x_start, xp=xp) * x_start
    log_var = xp.broadcast_to(
        gather(schedule.log_one_minus_alphas_cumprod, t, x_start, xp=xp), x_start.shape
    )
    zero = xp.zeros_like(x_start)
    return sum_flat(normal_kl(mean, log_var, zero, zero), xp)


class VBTerm(NamedTuple):
    """One timestep's term of the bound, per example (nats, summed over dimensions)."""

    nats: Array
    pred_x0: Array


def vb_term(
    schedule: Any,
    model_output: Array,
    x_start: Array,
    x_t: Array,
    t: Any,
    *,
    prediction: Prediction | str = Prediction.EPSILON,
    variance: Variance | str = Variance.FIXED_SMALL,
    decoder: Decoder | str = Decoder.DISCRETIZED,
    clip_denoised: bool = False,
) -> VBTerm:
    """L_{t-1} for each example: the Gaussian KL for index t > 0, the decoder NLL at index 0.

    Returns nats summed over the non-batch dimensions (per example) and the model's x̂_0.
    """
    decoder = _enum(Decoder, decoder)
    xp = get_namespace(model_output, x_start, x_t)
    if tuple(x_start.shape) != tuple(x_t.shape):
        raise ValueError(
            f"x_start {tuple(x_start.shape)} and x_t {tuple(x_t.shape)} differ in shape"
        )
    t = as_batch_timesteps(t, schedule.num_timesteps, x_t.shape[0], xp, device(x_t))
    p = p_mean_variance(
        schedule,
        model_output,
        x_t,
        t,
        prediction=prediction,
        variance=variance,
        clip_denoised=clip_denoised,
    )
    true_mean = _posterior_mean(schedule, x_start, x_t, t, xp)
    true_log_var = gather(schedule.posterior_log_variance_clipped, t, x_t, xp=xp)
    kl = sum_flat(
        normal_kl(true_mean, xp.broadcast_to(true_log_var, x_t.shape), p.mean, p.log_variance), xp
    )
    log_scales = xp.broadcast_to(0.5 * p.log_variance, x_t.shape)
    if decoder is Decoder.DISCRETIZED:
        ll = discretized_gaussian_log_likelihood(x_start, means=p.mean, log_scales=log_scales)
    else:
        ll = continuous_gaussian_log_likelihood(x_start, means=p.mean, log_scales=log_scales)
    nll = -sum_flat(ll, xp)
    return VBTerm(xp.where(t == 0, nll, kl), p.pred_x0)


class LossTerms(NamedTuple):
    """Per-example training loss and its parts (``vb`` is None for the simple loss)."""

    loss: Array
    mse: Array
    vb: Array | None


def training_losses(
    schedule: Any,
    model_output: Array,
    x_start: Array,
    x_t: Array,
    t: Any,
    noise: Array,
    *,
    loss_type: LossType | str = LossType.SIMPLE,
    prediction: Prediction | str = Prediction.EPSILON,
    variance: Variance | str = Variance.FIXED_SMALL,
    decoder: Decoder | str = Decoder.DISCRETIZED,
    lambda_vlb: float = 0.001,
) -> LossTerms:
    """Per-example training loss for a denoiser output at (x_t, t) with x_t = q_sample(x_0, t, noise).

    - ``simple``: mean over dimensions of (target - prediction)², target ε, x_0 or v;
    - ``vlb``: T · L_{t-1} in bits/dim, an unbiased estimate of Σ_t L_{t-1} for uniform t;
    - ``hybrid``: simple + λ · T · L_{t-1} with λ = ``lambda_vlb`` and the mean channels frozen
      (stop-gradient) inside the bound term, so it trains only the variance (Nichol & Dhariwal §3.1).

    Works on any backend; on PyTorch the result carries autograd through ``model_output``.
    """
    loss_type = _enum(LossType, loss_type)
    prediction = _enum(Prediction, prediction)
    variance = _enum(Variance, variance)
    xp = get_namespace(model_output, x_start, x_t, noise)
    t = as_batch_timesteps(t, schedule.num_timesteps, x_t.shape[0], xp, device(x_t))
    out, var_out = split_model_output(model_output, x_t, variance)
    if variance.learned and loss_type is LossType.SIMPLE:
        raise ValueError(
            f"a {variance.value!r} variance is only trained by the 'hybrid' or 'vlb' loss, not 'simple'"
        )
    if prediction is Prediction.EPSILON:
        target = noise
    elif prediction is Prediction.X0:
        target = x_start
    else:
        target = _v_from_x0_eps(schedule, x_start, t, noise, xp)
    mse = mean_flat((target - out) ** 2, xp)
    if loss_type is LossType.SIMPLE:
        return LossTerms(mse, mse, None)
    frozen = model_output
    if loss_type is LossType.HYBRID:
        frozen = (
            stop_gradient(out)
            if var_out is None
            else xp.concat([stop_gradient(out), var_out], axis=1)
        )
    dims = math.prod(x_start.shape[1:])
    vb = (
        vb_term(
            schedule,
            frozen,
            x_start,
            x_t,
            t,
            prediction=prediction,
            variance=variance,
            decoder=decoder,
        ).nats
        / (dims * LN2)
        * float(schedule.num_timesteps)
    )
    if loss_type is LossType.VLB:
        return LossTerms(vb, mse, vb)
    return LossTerms(mse + lambda_vlb * vb, mse, vb)
