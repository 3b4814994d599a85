"""The variational bound of a denoiser on data: the full pass over all T steps, and an unbiased
Monte-Carlo estimate over uniform or importance-sampled timesteps.

A *denoiser* is any callable ``denoiser(x_t, t) -> model_output`` on arrays of one backend, with
``t`` the integer timestep indices [B] of the schedule the model was trained with (for a respaced
schedule, the core passes ``schedule.timestep_map[t]``).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, NamedTuple

import numpy as np

from . import _formulas as f
from ._array import Array, device, get_namespace, table_on
from ._enums import DEFAULT_CLIP_DENOISED, Decoder, Prediction, Variance
from ._formulas import LN2
from .losses import check_data_range, check_num_bins, prior_kl
from .noise import check_seed, standard_normal, uniform_open
from .reverse import check_denoiser_output, check_zero_terminal_snr

__all__ = [
    "BoundResult",
    "Denoiser",
    "MonteCarloBound",
    "variational_bound",
    "variational_bound_mc",
]

Denoiser = Callable[[Array, Array], Array]


def _term_function(schedule, denoiser, x_start, idx, seed, xp, settings):
    """``term(t, step)``: one term of the bound at timesteps t (checked), with x_t drawn from the
    counter-based noise at ``step``; shared by the full pass and the Monte-Carlo estimate.
    ``settings`` are the checked (prediction, variance, decoder, clip_denoised, data_range,
    num_bins)."""
    dev = device(x_start)
    tmap = table_on(schedule.timestep_map, xp, dev)
    variance = settings[1]

    def term(t: Array, step: int) -> f.VBTerm:
        noise = standard_normal(
            seed, idx, step, x_start.shape[1:], xp=xp, dtype=x_start.dtype, device=dev
        )
        x_t = f.q_sample(schedule, x_start, t, noise, xp)
        out = check_denoiser_output(denoiser(x_t, xp.take(tmap, t, axis=0)), x_t, variance)
        return f.vb_term(schedule, out, x_start, x_t, t, *settings, xp)

    return term


class BoundResult(NamedTuple):
    """The full bound per example, in bits/dim.

    ``total_bpd`` [B] = ``prior_bpd`` [B] + Σ_t ``terms_bpd`` [B, T]; ``x0_mse`` [B, T] is the
    model's x_0 error at each step (a diagnostic, as in improved DDPM's ``calc_bpd_loop``).
    """

    total_bpd: Array
    prior_bpd: Array
    terms_bpd: Array
    x0_mse: Array


def _sample_indices(x: Array, sample_indices: Array | None, xp: Any) -> Array:
    if sample_indices is None:
        return xp.arange(x.shape[0], dtype=xp.int64, device=device(x))
    if tuple(sample_indices.shape) != (x.shape[0],):
        raise ValueError(
            f"sample_indices must have shape [{x.shape[0]}], got {tuple(sample_indices.shape)}"
        )
    return sample_indices


def _prepare(schedule, denoiser, x, settings, seed, sample_indices):
    """Check the bound's inputs once; return xp, the sample indices and the term function."""
    prediction, variance, decoder, clip_denoised, data_range, num_bins = settings
    prediction = Prediction.parse(prediction)
    variance = Variance.parse(variance)
    decoder = Decoder.parse(decoder)
    if not callable(denoiser):
        raise TypeError(f"denoiser must be callable (x_t, t) -> output, got {denoiser!r}")
    check_zero_terminal_snr(schedule.zero_terminal_snr, prediction)
    data_range = check_data_range(data_range)
    num_bins = check_num_bins(num_bins)
    check_seed(seed)
    xp = get_namespace(x)
    _check_data(x, xp, decoder, data_range)
    idx = _sample_indices(x, sample_indices, xp)
    checked = (prediction, variance, decoder, bool(clip_denoised), data_range, num_bins)
    return xp, idx, _term_function(schedule, denoiser, x, idx, seed, xp, checked)


def _check_data(x: Array, xp: Any, decoder: Decoder, data_range: tuple[float, float]) -> None:
    if not xp.isdtype(x.dtype, "real floating"):
        raise TypeError(f"data must be a real floating array, got dtype {x.dtype}")
    if x.ndim < 2:
        raise ValueError(
            f"data must be [B, ...] with at least one data axis, got shape {tuple(x.shape)}"
        )
    if x.shape[0] and decoder is Decoder.DISCRETIZED:
        lo, hi = float(xp.min(x)), float(xp.max(x))
        if lo < data_range[0] or hi > data_range[1]:
            raise ValueError(
                f"discretized data must lie in the data range {list(data_range)}, got [{lo}, {hi}]"
            )


def variational_bound(
    schedule: Any,
    denoiser: Denoiser,
    x_start: Array,
    *,
    prediction: Prediction | str = Prediction.EPSILON,
    variance: Variance | str = Variance.FIXED_SMALL,
    decoder: Decoder | str = Decoder.DISCRETIZED,
    clip_denoised: bool = DEFAULT_CLIP_DENOISED,
    data_range: tuple[float, float] = (-1.0, 1.0),
    num_bins: int = 256,
    seed: int = 0,
    sample_indices: Array | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> BoundResult:
    """The full variational bound, every term exact given one x_t ~ q(x_t | x_0) per step.

    Evaluates all T terms (Ho et al. eq. 5; improved DDPM's ``calc_bpd_loop``): the prior L_T in
    closed form, and for each index t the KL (t > 0) or decoder NLL (t = 0) at
    x_t = q_sample(x_0, t, ε) with ε drawn from the counter-based generator at (seed, sample, t).
    """
    settings = (prediction, variance, decoder, clip_denoised, data_range, num_bins)
    xp, _, term = _prepare(schedule, denoiser, x_start, settings, seed, sample_indices)
    dims = math.prod(x_start.shape[1:])
    T, B, dev = schedule.num_timesteps, x_start.shape[0], device(x_start)
    terms, mses = [], []
    for i, t_int in enumerate(range(T - 1, -1, -1)):
        res = term(xp.full((B,), t_int, dtype=xp.int64, device=dev), t_int)
        terms.append(res.nats / (dims * LN2))
        mses.append(f.mean_flat((res.pred_x0 - x_start) ** 2, xp))
        if progress is not None:
            progress(i + 1, T)
    terms_bpd = xp.stack(terms[::-1], axis=1)
    prior_bpd = prior_kl(schedule, x_start) / (dims * LN2)
    total = prior_bpd + xp.sum(terms_bpd, axis=1)
    return BoundResult(total, prior_bpd, terms_bpd, xp.stack(mses[::-1], axis=1))


class MonteCarloBound(NamedTuple):
    """An unbiased estimate of the bound per example (bits/dim) and its standard error."""

    estimate_bpd: Array
    stderr_bpd: Array
    num_draws: int


def variational_bound_mc(
    schedule: Any,
    denoiser: Denoiser,
    x_start: Array,
    *,
    num_draws: int = 16,
    timestep_probs: np.ndarray | None = None,
    prediction: Prediction | str = Prediction.EPSILON,
    variance: Variance | str = Variance.FIXED_SMALL,
    decoder: Decoder | str = Decoder.DISCRETIZED,
    clip_denoised: bool = DEFAULT_CLIP_DENOISED,
    data_range: tuple[float, float] = (-1.0, 1.0),
    num_bins: int = 256,
    seed: int = 0,
    sample_indices: Array | None = None,
) -> MonteCarloBound:
    """Unbiased Monte-Carlo estimate of the bound: L_T + E_{t~p}[L_{t-1} / p(t)].

    ``timestep_probs`` (length T, positive, summing to 1) gives importance sampling; None is the
    uniform p(t) = 1/T. Each draw picks t by inverse CDF from a counter-based uniform and x_t from
    counter-based noise, so the estimate depends only on (seed, sample index).
    """
    if isinstance(num_draws, bool) or not isinstance(num_draws, int) or num_draws < 2:
        raise ValueError(f"num_draws must be an int >= 2 (for a standard error), got {num_draws!r}")
    T = schedule.num_timesteps
    if timestep_probs is None:
        probs = np.full(T, 1.0 / T)
    else:
        probs = np.asarray(timestep_probs, dtype=np.float64)
        if probs.shape != (T,) or not np.all(np.isfinite(probs)) or np.any(probs <= 0):
            raise ValueError(f"timestep_probs must be {T} positive finite numbers")
        if abs(probs.sum() - 1.0) > 1e-9:
            raise ValueError(f"timestep_probs must sum to 1, got {probs.sum()}")
    settings = (prediction, variance, decoder, clip_denoised, data_range, num_bins)
    xp, idx, term = _prepare(schedule, denoiser, x_start, settings, seed, sample_indices)
    dims = math.prod(x_start.shape[1:])
    dev = device(x_start)
    cdf = np.cumsum(probs)
    cdf[-1] = 1.0
    cdf_x = table_on(cdf, xp, dev)
    probs_x = table_on(probs, xp, dev)
    draws = []
    for k in range(num_draws):
        # Steps 2k and 2k+1 of the counter stream: the timestep draw, then the noise.
        # a contiguous copy of the column: torch's searchsorted warns on strided input
        u = xp.astype(uniform_open(seed, idx, 2 * k, 1, xp, dev)[:, 0], xp.float64, copy=True)
        t = xp.minimum(xp.searchsorted(cdf_x, u), T - 1)
        t = xp.astype(t, xp.int64)
        nats = term(t, 2 * k + 1).nats
        w = xp.astype(xp.take(probs_x, t, axis=0), nats.dtype)
        draws.append(nats / w / (dims * LN2))
    stacked = xp.stack(draws, axis=1)
    prior_bpd = prior_kl(schedule, x_start) / (dims * LN2)
    mean = xp.mean(stacked, axis=1)
    std = xp.std(stacked, axis=1, correction=1)
    return MonteCarloBound(prior_bpd + mean, std / math.sqrt(num_draws), num_draws)
