"""The core's formulas on inputs that a public function has already checked.

Every public function of the core (:mod:`refdiff.forward`, :mod:`refdiff.reverse`,
:mod:`refdiff.losses`, :mod:`refdiff.bound`, :mod:`refdiff.samplers`) looks up the array namespace,
checks its inputs once and then calls these: they take the namespace ``xp`` and timesteps ``t``
that are already an int64 array ``[B]`` on the data's device, and check nothing, so a nested call
(the bound's KL inside a training loss, the reverse mean inside a sampler step) costs no second
validation and no host round trip.

The equations and their sources are in the docstrings of the public functions and in
docs/math.md.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

from ._array import Array, gather, log_ndtr
from ._enums import Decoder, Prediction, Variance

__all__ = [
    "LN2",
    "PMeanVariance",
    "VBTerm",
    "continuous_gaussian_log_likelihood",
    "discretized_gaussian_log_likelihood",
    "eps_from_v",
    "eps_from_x0",
    "mean_flat",
    "normal_kl",
    "p_mean_variance",
    "posterior_mean",
    "q_sample",
    "split_channels",
    "sum_flat",
    "v_from_x0_eps",
    "vb_term",
    "x0_from_eps",
    "x0_from_v",
]

LN2 = math.log(2.0)


class PMeanVariance(NamedTuple):
    """p_θ(x_{t-1} | x_t) and the predictions it came from.

    ``variance`` and ``log_variance`` broadcast against ``mean``: shape [B, 1, …, 1] for the fixed
    variance types (no per-element work), the full shape for learned ones. ``pred_eps`` is None
    only when the caller asked not to compute it (inside the DDPM sampler).

    Attributes
    ----------
    mean : array [B, C, ...]
        The mean of p_θ(x_{t-1} | x_t), of x_t's shape, backend and dtype.
    variance : array [B, 1, ..., 1] or [B, C, ...]
        Its variance.
    log_variance : array [B, 1, ..., 1] or [B, C, ...]
        Its log-variance.
    pred_x0 : array [B, C, ...]
        The model's prediction of x_0 (clipped when clipping was asked for).
    pred_eps : array [B, C, ...] or None
        The model's prediction of ε.
    """

    mean: Array
    variance: Array
    log_variance: Array
    pred_x0: Array
    pred_eps: Array | None


class VBTerm(NamedTuple):
    """One timestep's term of the bound, per example (nats, summed over dimensions).

    Attributes
    ----------
    nats : array [B]
        The term in nats, summed over the non-batch dimensions.
    pred_x0 : array [B, C, ...]
        The model's prediction of x_0.
    """

    nats: Array
    pred_x0: Array


def sum_flat(x: Array, xp: Any) -> Array:
    """Sum over every axis but the first (the batch)."""
    return xp.sum(x, axis=tuple(range(1, x.ndim))) if x.ndim > 1 else x


def mean_flat(x: Array, xp: Any) -> Array:
    """Mean over every axis but the first (the batch)."""
    return xp.mean(x, axis=tuple(range(1, x.ndim))) if x.ndim > 1 else x


# -- forward process -------------------------------------------------------------------------


def q_sample(schedule: Any, x_start: Array, t: Array, noise: Array, xp: Any) -> Array:
    """x_t = √ᾱ_t x_0 + √(1 - ᾱ_t) ε."""
    return (
        gather(schedule.sqrt_alphas_cumprod, t, x_start, xp=xp) * x_start
        + gather(schedule.sqrt_one_minus_alphas_cumprod, t, x_start, xp=xp) * noise
    )


def posterior_mean(schedule: Any, x_start: Array, x_t: Array, t: Array, xp: Any) -> Array:
    """μ̃_t(x_t, x_0) = coef1_t x_0 + coef2_t x_t."""
    return (
        gather(schedule.posterior_mean_coef1, t, x_t, xp=xp) * x_start
        + gather(schedule.posterior_mean_coef2, t, x_t, xp=xp) * x_t
    )


# -- parameterisations -----------------------------------------------------------------------


def x0_from_eps(schedule: Any, x_t: Array, t: Array, eps: Array, xp: Any) -> Array:
    return (
        gather(schedule.sqrt_recip_alphas_cumprod, t, x_t, xp=xp) * x_t
        - gather(schedule.sqrt_recipm1_alphas_cumprod, t, x_t, xp=xp) * eps
    )


def eps_from_x0(schedule: Any, x_t: Array, t: Array, x0: Array, xp: Any) -> Array:
    return (x_t - gather(schedule.sqrt_alphas_cumprod, t, x_t, xp=xp) * x0) / gather(
        schedule.sqrt_one_minus_alphas_cumprod, t, x_t, xp=xp
    )


def v_from_x0_eps(schedule: Any, x0: Array, t: Array, eps: Array, xp: Any) -> Array:
    return (
        gather(schedule.sqrt_alphas_cumprod, t, x0, xp=xp) * eps
        - gather(schedule.sqrt_one_minus_alphas_cumprod, t, x0, xp=xp) * x0
    )


def x0_from_v(schedule: Any, x_t: Array, t: Array, v: Array, xp: Any) -> Array:
    return (
        gather(schedule.sqrt_alphas_cumprod, t, x_t, xp=xp) * x_t
        - gather(schedule.sqrt_one_minus_alphas_cumprod, t, x_t, xp=xp) * v
    )


def eps_from_v(schedule: Any, x_t: Array, t: Array, v: Array, xp: Any) -> Array:
    return (
        gather(schedule.sqrt_one_minus_alphas_cumprod, t, x_t, xp=xp) * x_t
        + gather(schedule.sqrt_alphas_cumprod, t, x_t, xp=xp) * v
    )


# -- the reverse process ---------------------------------------------------------------------


def split_channels(
    model_output: Array, channels: int, variance: Variance
) -> tuple[Array, Array | None]:
    """(mean channels, variance channels or None) of an output whose shape was checked."""
    if not variance.learned:
        return model_output, None
    return model_output[:, :channels, ...], model_output[:, channels:, ...]


def p_mean_variance(
    schedule: Any,
    out: Array,
    var_out: Array | None,
    x_t: Array,
    t: Array,
    prediction: Prediction,
    variance: Variance,
    clip_denoised: bool,
    data_range: tuple[float, float],
    xp: Any,
    want_eps: bool = True,
) -> PMeanVariance:
    """The body of :func:`refdiff.p_mean_variance`; ``want_eps=False`` skips ε̂ where not free."""
    if variance is Variance.FIXED_SMALL:
        # at index 0 the variance of p(x_0 | x_1) is the clipped one (β̃_1), consistent with its log
        log_var = gather(schedule.posterior_log_variance_clipped, t, x_t, xp=xp)
        var = gather(schedule.posterior_variance_clipped, t, x_t, xp=xp)
    elif variance is Variance.FIXED_LARGE:
        log_var = gather(schedule.fixed_large_log_variance, t, x_t, xp=xp)
        var = gather(schedule.fixed_large_variance, t, x_t, xp=xp)
    elif variance is Variance.LEARNED:
        log_var = var_out
        var = xp.exp(log_var)
    else:
        assert var_out is not None  # a learned variance's channels (split_channels)
        min_log = gather(schedule.posterior_log_variance_clipped, t, x_t, xp=xp)
        max_log = gather(schedule.log_betas, t, x_t, xp=xp)
        frac = (var_out + 1.0) / 2.0
        log_var = frac * max_log + (1.0 - frac) * min_log
        var = xp.exp(log_var)

    pred_eps = None
    if prediction is Prediction.EPSILON:
        pred_eps = out
        pred_x0 = x0_from_eps(schedule, x_t, t, out, xp)
    elif prediction is Prediction.X0:
        pred_x0 = out
    else:
        pred_x0 = x0_from_v(schedule, x_t, t, out, xp)
        pred_eps = eps_from_v(schedule, x_t, t, out, xp) if want_eps else None
    if clip_denoised:
        lo, hi = data_range
        pred_x0 = xp.clip(pred_x0, lo, hi)
        pred_eps = None  # recomputed from the clipped x_0 below, so that the pair is consistent
    if pred_eps is None and want_eps:
        pred_eps = eps_from_x0(schedule, x_t, t, pred_x0, xp)
    mean = posterior_mean(schedule, pred_x0, x_t, t, xp)
    return PMeanVariance(mean, var, log_var, pred_x0, pred_eps)


# -- KL divergences and decoders -------------------------------------------------------------


def normal_kl(mean1: Array, logvar1: Array, mean2: Array, logvar2: Array, xp: Any) -> Array:
    """KL(N(mean1, e^{logvar1}) ‖ N(mean2, e^{logvar2})), as ½ (expm1(d) - d + Δ² e^{-logvar2})."""
    d = logvar1 - logvar2
    return 0.5 * (xp.expm1(d) - d + (mean1 - mean2) ** 2 * xp.exp(-logvar2))


def _log1mexp(d: Array, xp: Any) -> Array:
    """log(1 - e^d) for d < 0, accurate everywhere (Mächler 2012), with inputs kept finite in
    both branches so that autograd sees no inf·0."""
    tiny = xp.finfo(d.dtype).smallest_normal
    # clip, not minimum(d, scalar), which array-api-compat < 1.16 refuses on torch
    d = xp.clip(d, None, -tiny)
    near = d > -LN2
    d_near = xp.where(near, d, -1.0)
    d_far = xp.where(near, -1.0, d)
    return xp.where(near, xp.log(-xp.expm1(d_near)), xp.log1p(-xp.exp(d_far)))


def discretized_gaussian_log_likelihood(
    x: Array,
    means: Array,
    log_scales: Array,
    num_bins: int,
    data_range: tuple[float, float],
    xp: Any,
) -> Array:
    """The body of :func:`refdiff.discretized_gaussian_log_likelihood`."""
    lo_edge, hi_edge = data_range
    half = 0.5 * (hi_edge - lo_edge) / (num_bins - 1)  # half the distance between two levels
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
    bottom = x < lo_edge + half / 2
    top = x > hi_edge - half / 2
    edge = log_ndtr(xp.where(bottom, hi, -lo), xp)
    return xp.where(bottom | top, edge, interior)


def continuous_gaussian_log_likelihood(x: Array, means: Array, log_scales: Array, xp: Any) -> Array:
    """log N(x; mean, e^{2 log_scale}) elementwise, in nats."""
    z = (x - means) * xp.exp(-log_scales)
    return -0.5 * z * z - log_scales - 0.5 * math.log(2.0 * math.pi)


def vb_term(
    schedule: Any,
    model_output: Array,
    x_start: Array,
    x_t: Array,
    t: Array,
    prediction: Prediction,
    variance: Variance,
    decoder: Decoder,
    clip_denoised: bool,
    data_range: tuple[float, float],
    num_bins: int,
    xp: Any,
) -> VBTerm:
    """The body of :func:`refdiff.vb_term`: the KL at t > 0, the decoder NLL at t = 0."""
    out, var_out = split_channels(model_output, x_t.shape[1] if x_t.ndim > 1 else 0, variance)
    p = p_mean_variance(
        schedule, out, var_out, x_t, t, prediction, variance, clip_denoised, data_range, xp
    )
    true_mean = posterior_mean(schedule, x_start, x_t, t, xp)
    true_log_var = xp.broadcast_to(
        gather(schedule.posterior_log_variance_clipped, t, x_t, xp=xp), x_t.shape
    )
    # Each example needs one branch (the decoder at t = 0, the KL elsewhere), but both are
    # computed; the unused one gets harmless inputs (the true posterior for the KL, a unit
    # Gaussian at the data for the decoder), so its non-finite values and gradients cannot leak
    # into the result through `where` (0 · inf = NaN in backpropagation).
    first = xp.reshape(t == 0, (t.shape[0],) + (1,) * (x_t.ndim - 1))
    log_var = xp.broadcast_to(p.log_variance, x_t.shape)
    kl_mean = xp.where(first, true_mean, p.mean)
    kl_log_var = xp.where(first, true_log_var, log_var)
    kl = sum_flat(normal_kl(true_mean, true_log_var, kl_mean, kl_log_var, xp), xp)
    dec_mean = xp.where(first, p.mean, x_start)
    dec_log_scale = xp.where(first, 0.5 * log_var, xp.zeros_like(log_var))
    if decoder is Decoder.DISCRETIZED:
        ll = discretized_gaussian_log_likelihood(
            x_start, dec_mean, dec_log_scale, num_bins, data_range, xp
        )
    else:
        ll = continuous_gaussian_log_likelihood(x_start, dec_mean, dec_log_scale, xp)
    nll = -sum_flat(ll, xp)
    return VBTerm(xp.where(t == 0, nll, kl), p.pred_x0)
