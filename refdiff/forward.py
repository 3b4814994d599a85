"""The forward (noising) process q and its posterior q(x_{t-1} | x_t, x_0).

Index ``t`` is the paper's step t+1 (see :mod:`refdiff.schedules`). Every function takes the
schedule first, then arrays of any array-API backend, and returns arrays of that backend, dtype and
device.
"""

from __future__ import annotations

from typing import Any, NamedTuple

from array_api_compat import device

from . import _formulas as f
from ._array import Array, as_batch_timesteps, gather, get_namespace

__all__ = [
    "GaussianMoments",
    "q_mean_variance",
    "q_posterior_mean_variance",
    "q_s_to_t_mean_variance",
    "q_sample",
    "q_step_mean_variance",
    "q_step_sample",
]


class GaussianMoments(NamedTuple):
    """Mean, variance and log-variance of a diagonal Gaussian (variance and log broadcast to mean).

    Attributes
    ----------
    mean : array [B, ...]
        The mean, of the data's shape, backend, dtype and device.
    variance : array [B, ...]
        The variance, broadcast to the mean's shape.
    log_variance : array [B, ...]
        Its log (computed from the float64 tables, not as ``log(variance)``).
    """

    mean: Array
    variance: Array
    log_variance: Array


def _prepare(schedule: Any, x: Array, t: Any, *others: Array) -> tuple[Any, Array]:
    xp = get_namespace(x, *others, *(t,) if not isinstance(t, int) else ())
    if not xp.isdtype(x.dtype, "real floating"):
        raise TypeError(f"data must be a real floating array, got dtype {x.dtype}")
    if x.ndim < 1:
        raise ValueError("data must have a batch dimension, got a 0-d array")
    for o in others:
        if o is not None and tuple(o.shape) != tuple(x.shape):
            raise ValueError(f"shape mismatch: {tuple(o.shape)} vs {tuple(x.shape)}")
        if o is not None and o.dtype != x.dtype:
            raise TypeError(f"dtype mismatch: {o.dtype} vs {x.dtype}")
    tt = as_batch_timesteps(t, schedule.num_timesteps, x.shape[0], xp, device(x))
    return xp, tt


def q_mean_variance(schedule: Any, x_start: Array, t: Any) -> GaussianMoments:
    """Moments of q(x_t | x_0) = N(√ᾱ_t x_0, (1 - ᾱ_t) I)  (Ho et al. eq. 4).

    Parameters
    ----------
    schedule : Schedule
        The diffusion schedule; its float64 tables are gathered at ``t`` and cast to the data's
        dtype.
    x_start : array [B, ...]
        Data x_0, real floating, of any array-API backend.
    t : int, Timesteps or integer array [B]
        Timestep indices in [0, T-1] (index t is the paper's step t+1), one per example; an int
        is used for every example.

    Returns
    -------
    GaussianMoments
        Mean √ᾱ_t x_0, variance 1 - ᾱ_t and its log, each [B, ...] like ``x_start``.
    """
    xp, t = _prepare(schedule, x_start, t)
    mean = gather(schedule.sqrt_alphas_cumprod, t, x_start, xp=xp) * x_start
    var = gather(schedule.sqrt_one_minus_alphas_cumprod, t, x_start, xp=xp) ** 2
    log_var = gather(schedule.log_one_minus_alphas_cumprod, t, x_start, xp=xp)
    return GaussianMoments(
        mean, xp.broadcast_to(var, mean.shape), xp.broadcast_to(log_var, mean.shape)
    )


def q_sample(schedule: Any, x_start: Array, t: Any, noise: Array) -> Array:
    """Sample q(x_t | x_0): x_t = √ᾱ_t x_0 + √(1 - ᾱ_t) ε with the given ``noise`` ε.

    Parameters
    ----------
    schedule : Schedule
        The diffusion schedule; its float64 tables are gathered at ``t`` and cast to the data's
        dtype.
    x_start : array [B, ...]
        Data x_0, real floating, of any array-API backend.
    t : int, Timesteps or integer array [B]
        Timestep indices in [0, T-1] (index t is the paper's step t+1), one per example; an int
        is used for every example.
    noise : array [B, ...]
        ε ~ N(0, I), of ``x_start``'s shape, dtype and backend.

    Returns
    -------
    array [B, ...]
        x_t, of ``x_start``'s backend, dtype and device.
    """
    xp, t = _prepare(schedule, x_start, t, noise)
    return f.q_sample(schedule, x_start, t, noise, xp)


def q_step_mean_variance(schedule: Any, x_prev: Array, t: Any) -> GaussianMoments:
    """Moments of one forward step q(x_t | x_{t-1}) = N(√(1 - β_t) x_{t-1}, β_t I)  (eq. 2).

    Parameters
    ----------
    schedule : Schedule
        The diffusion schedule; its float64 tables are gathered at ``t`` and cast to the data's
        dtype.
    x_prev : array [B, ...]
        x at index t-1 (the data x_0 when t = 0), real floating.
    t : int, Timesteps or integer array [B]
        Timestep indices in [0, T-1] (index t is the paper's step t+1), one per example; an int
        is used for every example.

    Returns
    -------
    GaussianMoments
        Mean √(1 - β_t) x_{t-1}, variance β_t and its log, each [B, ...] like ``x_prev``.
    """
    xp, t = _prepare(schedule, x_prev, t)
    mean = gather(schedule.sqrt_alphas, t, x_prev, xp=xp) * x_prev
    var = gather(schedule.betas, t, x_prev, xp=xp)
    log_var = gather(schedule.log_betas, t, x_prev, xp=xp)
    return GaussianMoments(
        mean, xp.broadcast_to(var, mean.shape), xp.broadcast_to(log_var, mean.shape)
    )


def q_step_sample(schedule: Any, x_prev: Array, t: Any, noise: Array) -> Array:
    """Sample one forward step: x_t = √(1 - β_t) x_{t-1} + √β_t ε.

    Parameters
    ----------
    schedule : Schedule
        The diffusion schedule; its float64 tables are gathered at ``t`` and cast to the data's
        dtype.
    x_prev : array [B, ...]
        x at index t-1 (the data x_0 when t = 0), real floating.
    t : int, Timesteps or integer array [B]
        Timestep indices in [0, T-1] (index t is the paper's step t+1), one per example; an int
        is used for every example.
    noise : array [B, ...]
        ε ~ N(0, I), of ``x_prev``'s shape, dtype and backend.

    Returns
    -------
    array [B, ...]
        x_t, of ``x_prev``'s backend, dtype and device.
    """
    xp, t = _prepare(schedule, x_prev, t, noise)
    return (
        gather(schedule.sqrt_alphas, t, x_prev, xp=xp) * x_prev
        + xp.sqrt(gather(schedule.betas, t, x_prev, xp=xp)) * noise
    )


def q_s_to_t_mean_variance(schedule: Any, x_s: Array, s: Any, t: Any) -> GaussianMoments:
    """Moments of q(x_t | x_s) for indices s < t: N(√(ᾱ_t/ᾱ_s) x_s, (1 - ᾱ_t/ᾱ_s) I).

    The ratio is formed in float64 from the log tables (1 - ᾱ_t/ᾱ_s through ``expm1``, exact for
    nearby steps) before the cast to the data's dtype.

    Parameters
    ----------
    schedule : Schedule
        The diffusion schedule; its float64 tables are gathered at ``t`` and cast to the data's
        dtype.
    x_s : array [B, ...]
        x at index s, real floating.
    s : int, Timesteps or integer array [B]
        The earlier indices, in [0, T-1].
    t : int, Timesteps or integer array [B]
        The later indices; ``s < t`` for every example, or ``ValueError``.

    Returns
    -------
    GaussianMoments
        Mean √(ᾱ_t/ᾱ_s) x_s, variance 1 - ᾱ_t/ᾱ_s and its log, each [B, ...] like ``x_s``.
    """
    xp, s = _prepare(schedule, x_s, s)
    t = as_batch_timesteps(t, schedule.num_timesteps, x_s.shape[0], xp, device(x_s))
    if x_s.shape[0] and not bool(xp.all(s < t)):
        raise ValueError("q(x_t | x_s) needs s < t for every example")
    f64 = _float64_like(xp, x_s)
    log_ratio = gather(schedule.log_alphas_cumprod, t, f64, xp=xp) - gather(
        schedule.log_alphas_cumprod, s, f64, xp=xp
    )
    one_minus = -xp.expm1(log_ratio)
    mean = xp.astype(xp.exp(0.5 * log_ratio), x_s.dtype) * x_s
    var = xp.astype(one_minus, x_s.dtype)
    log_var = xp.astype(xp.log(one_minus), x_s.dtype)
    return GaussianMoments(
        mean, xp.broadcast_to(var, mean.shape), xp.broadcast_to(log_var, mean.shape)
    )


def _float64_like(xp: Any, x: Array) -> Array:
    """A float64 zero array with x's batch size and rank, on x's device (a gather template)."""
    return xp.zeros((x.shape[0],) + (1,) * (x.ndim - 1), dtype=xp.float64, device=device(x))


def q_posterior_mean_variance(schedule: Any, x_start: Array, x_t: Array, t: Any) -> GaussianMoments:
    """Moments of the posterior q(x_{t-1} | x_t, x_0)  (Ho et al. eqs. 6-7).

    mean = β_t √ᾱ_{t-1} / (1 - ᾱ_t) · x_0 + (1 - ᾱ_{t-1}) √α_t / (1 - ᾱ_t) · x_t,
    variance β̃_t = β_t (1 - ᾱ_{t-1}) / (1 - ᾱ_t) (zero at index 0), and the log-variance clipped at
    index 0 to log β̃ of index 1, as in Ho et al.'s code.

    Parameters
    ----------
    schedule : Schedule
        The diffusion schedule; its float64 tables are gathered at ``t`` and cast to the data's
        dtype.
    x_start : array [B, ...]
        Data x_0, real floating.
    x_t : array [B, ...]
        The noised data at index t, of ``x_start``'s shape, dtype and backend.
    t : int, Timesteps or integer array [B]
        Timestep indices in [0, T-1] (index t is the paper's step t+1), one per example; an int
        is used for every example.

    Returns
    -------
    GaussianMoments
        Posterior mean μ̃_t, variance β̃_t and clipped log β̃_t, each [B, ...] like ``x_t``.
    """
    xp, t = _prepare(schedule, x_start, t, x_t)
    mean = f.posterior_mean(schedule, x_start, x_t, t, xp)
    var = gather(schedule.posterior_variance, t, x_t, xp=xp)
    log_var = gather(schedule.posterior_log_variance_clipped, t, x_t, xp=xp)
    return GaussianMoments(
        mean, xp.broadcast_to(var, mean.shape), xp.broadcast_to(log_var, mean.shape)
    )
