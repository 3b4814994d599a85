"""The variational bound of a denoiser on data: the full pass over all T steps, and an unbiased
Monte-Carlo estimate that computes the dominant terms exactly and stratifies the rest.

A *denoiser* is any callable ``denoiser(x_t, t) -> model_output`` on arrays of one backend, with
``t`` the integer timestep indices [B] of the schedule the model was trained with (for a respaced
schedule, the core passes ``schedule.timestep_map[t]``).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, NamedTuple

import numpy as np
from array_api_compat import device

from . import _formulas as f
from ._array import Array, get_namespace, table_on
from ._enums import DEFAULT_CLIP_DENOISED, Decoder, Prediction, Variance
from ._formulas import LN2
from .losses import check_data_range, check_num_bins, prior_kl
from .noise import check_seed, standard_normal, uniform_open
from .reverse import check_denoiser_output, check_zero_terminal_snr

__all__ = [
    "BoundResult",
    "Denoiser",
    "MonteCarloBound",
    "MonteCarloPlan",
    "mc_estimate_from_terms",
    "mc_plan",
    "variational_bound",
    "variational_bound_mc",
]

Denoiser = Callable[[Array, Array], Array]
#: The bound's settings: (prediction, variance, decoder, clip_denoised, data_range, num_bins)
_Settings = tuple[Any, Any, Any, Any, Any, Any]
_Checked = tuple[Prediction, Variance, Decoder, bool, tuple[float, float], int]
_TermFunction = Callable[[Array, int], f.VBTerm]


def _term_function(
    schedule: Any,
    denoiser: Denoiser,
    x_start: Array,
    idx: Array,
    seed: int,
    xp: Any,
    settings: _Checked,
) -> _TermFunction:
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

    Attributes
    ----------
    total_bpd : array [B]
        The bound, per example, in bits/dim.
    prior_bpd : array [B]
        The prior term L_T.
    terms_bpd : array [B, T]
        L_{t-1} for index t = 0 … T-1 (column 0 is the decoder term L_0).
    x0_mse : array [B, T]
        Mean squared error of the model's x̂_0 at each index.
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


def _prepare(
    schedule: Any,
    denoiser: Denoiser,
    x: Array,
    settings: _Settings,
    seed: int,
    sample_indices: Array | None,
) -> tuple[Any, Array, _TermFunction]:
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

    Parameters
    ----------
    schedule : Schedule
        The diffusion schedule (respaced or not).
    denoiser : callable
        ``denoiser(x_t, t) -> model_output`` on arrays of ``x_start``'s backend: x_t [B, C, ...],
        t int64 [B] in the model's own schedule, output [B, C, ...] (or [B, 2C, ...] for a
        learned variance) of x_t's dtype.
    x_start : array [B, C, ...]
        Data x_0, real floating; within ``data_range`` for the discretized decoder.
    prediction : Prediction or str
        What the denoiser's mean channels predict: ``"epsilon"``, ``"x0"`` or ``"v"``.
    variance : Variance or str
        ``"fixed_small"``, ``"fixed_large"``, ``"learned"`` or ``"learned_range"``.
    decoder : Decoder or str
        ``"discretized"`` (data on ``num_bins`` levels) or ``"continuous"``.
    clip_denoised : bool
        Clip x̂_0 to ``data_range`` before forming the reverse mean.
    data_range : (float, float)
        The data's (low, high): its first and last level.
    num_bins : int
        Number of levels of the discretized decoder (256 for 8-bit data).
    seed : int
        Seed of the counter-based noise (a non-negative 64-bit integer).
    sample_indices : integer array [B], optional
        Each example's global index in the noise stream (default 0 … B-1), so that an example's
        result does not depend on the batch it is in.
    progress : callable, optional
        Called as ``progress(done, T)`` after each of the T denoiser calls.

    Returns
    -------
    BoundResult
        The bound and its terms per example in bits/dim (``total_bpd`` [B], ``prior_bpd`` [B],
        ``terms_bpd`` [B, T], ``x0_mse`` [B, T]), of ``x_start``'s backend and dtype.
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
    """An unbiased estimate of the bound per example (bits/dim) and its standard error.

    Attributes
    ----------
    estimate_bpd : array [B]
        The estimate per example, in bits/dim.
    stderr_bpd : array [B]
        Its standard error over the timestep draws, from ``groups`` pairs of neighbouring strata
        per example (its degrees of freedom).
    num_draws : int
        The number of timesteps drawn per example.
    exact_timesteps : tuple of int
        The indices computed exactly for every example (the decoder L_0 first): an example
        costs ``len(exact_timesteps) + num_draws`` network calls (just the first when every term
        is exact).
    groups : int
        The pairs of strata the standard error comes from (0 when every term is exact).
    """

    estimate_bpd: Array
    stderr_bpd: Array
    num_draws: int
    exact_timesteps: tuple[int, ...] = ()
    groups: int = 0


class MonteCarloPlan(NamedTuple):
    """How :func:`variational_bound_mc` spends its network calls.

    Attributes
    ----------
    exact : int64 array
        The timestep indices computed for every example, ascending (L_0 first).
    tail : int64 array
        The other indices, ascending: drawn, one per stratum.
    tail_probs : float64 array [len(tail)]
        The proposal over ``tail``, summing to 1.
    num_draws : int
        The strata of equal probability under ``tail_probs``: draws per example.
    """

    exact: np.ndarray
    tail: np.ndarray
    tail_probs: np.ndarray
    num_draws: int


def _check_draws(num_draws: int) -> int:
    if isinstance(num_draws, bool) or not isinstance(num_draws, int) or num_draws < 2:
        raise ValueError(f"num_draws must be an int >= 2 (for a standard error), got {num_draws!r}")
    return num_draws


def mc_plan(
    schedule: Any,
    num_draws: int = 16,
    timestep_probs: np.ndarray | None = None,
    data_range: tuple[float, float] = (-1.0, 1.0),
) -> MonteCarloPlan:
    """Which terms the Monte-Carlo bound computes exactly, and how it draws the others.

    The proposal p(t) over the KL terms t ≥ 1 is ``timestep_probs`` or, by default, the most a
    step can cost on data of the range's largest variance v = ((hi − lo) / 2)²: with the log-SNR
    λ = log(ᾱ / (1 − ᾱ)), p(t) ∝ (λ_{t-1} − λ_t) σ(λ_t + log v) (σ the logistic function). By the
    I-MMSE relation (Guo, Shamai & Verdú 2005; Kingma et al. 2021), a denoiser as good as the
    noise allows spends ½ SNR · mmse(λ) nats per unit of log-SNR and dimension, and
    mmse ≤ v / (1 + SNR v), the Gaussian's, so the terms follow this envelope: about flat in λ
    where the signal dominates, vanishing where the noise does. Computed exactly for every
    example: the decoder L_0 and the first KL term L_1 (which carry most of the bits of 8-bit
    images), and every t with ``num_draws · p(t) ≥ 1`` (p renormalised over what is left, until
    none is): a term a draw would over-represent is cheaper to compute than to sample (survey
    sampling's certainty units). A share that is not finite (the last step of a zero-terminal-SNR
    schedule) is exact too, and when the exact terms and the draws would cost T calls or more,
    every term is.

    Parameters
    ----------
    schedule : Schedule
        The diffusion schedule (respaced or not).
    num_draws : int
        Draws per example besides the exact terms (at least 2).
    timestep_probs : float array [T], optional
        The proposal p(t), positive and summing to 1; None: the schedule's envelope above.
    data_range : (float, float)
        The data's (low, high): v = ((high - low) / 2)² in the envelope.

    Returns
    -------
    MonteCarloPlan
        The exact indices, the drawn ones and their proposal.
    """
    num_draws = _check_draws(num_draws)
    T = schedule.num_timesteps
    if timestep_probs is None:
        lam = np.asarray(schedule.log_snr, dtype=np.float64)
        log_v = 2.0 * math.log((float(data_range[1]) - float(data_range[0])) / 2.0)
        with np.errstate(invalid="ignore"):  # -inf λ (zero terminal SNR): nan, made exact below
            envelope = 0.5 * (1.0 + np.tanh(0.5 * (lam + log_v)))  # σ(λ + log v), stably
            weights = np.concatenate([[np.inf], (lam[:-1] - lam[1:]) * envelope[1:]])
    else:
        weights = np.asarray(timestep_probs, dtype=np.float64)
        if weights.shape != (T,) or not np.all(np.isfinite(weights)) or np.any(weights <= 0):
            raise ValueError(f"timestep_probs must be {T} positive finite numbers")
        if abs(weights.sum() - 1.0) > 1e-9:
            raise ValueError(f"timestep_probs must sum to 1, got {weights.sum()}")
    exact = np.zeros(T, dtype=bool)
    exact[: min(T, 2)] = True
    exact |= ~np.isfinite(weights) | ~(weights > 0)
    while not exact.all():
        share = np.where(exact, 0.0, weights)
        share = share / share.sum()
        certain = ~exact & (num_draws * share >= 1.0)
        if not certain.any():
            break
        exact |= certain
    if exact.sum() + num_draws >= T:  # the full pass is no dearer
        exact[:] = True
    tail = np.flatnonzero(~exact)
    probs = weights[tail] / weights[tail].sum() if tail.size else np.zeros(0)
    return MonteCarloPlan(np.flatnonzero(exact), tail, probs, num_draws)


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
    progress: Callable[[int, int], None] | None = None,
) -> MonteCarloBound:
    """Unbiased Monte-Carlo estimate of the bound, with an honest standard error.

    L_T (closed form) and the terms of :func:`mc_plan`'s ``exact`` indices (the decoder L_0, L_1
    and every term a draw would over-represent) are computed for every example; the other terms
    are estimated by stratified sampling: ``num_draws`` strata of equal probability under the
    plan's proposal p, one t per stratum and example, each term weighted by 1 / (num_draws p(t)).
    Every term is evaluated at the x_t of :func:`variational_bound` with the same seed (noise
    step = t), so the estimate is unbiased for the full bound of that seed, and its standard
    error is the spread of that estimate over the timestep draws. The error comes from pairs of
    neighbouring strata (collapsed strata: unbiased for the variance plus the squared difference
    of the pair's means, hence never too small on average); its degrees of freedom are
    ``num_draws // 2`` per example.

    ``timestep_probs`` (length T, positive, summing to 1; its entries at the exact indices are
    unused) replaces the schedule's proposal, e.g. one fitted on a pilot run. The draws
    are counter-based (seed, sample index, step T + k), so an example's estimate depends only on
    (seed, sample index).

    Parameters
    ----------
    schedule : Schedule
        The diffusion schedule (respaced or not).
    denoiser : callable
        ``denoiser(x_t, t) -> model_output`` on arrays of ``x_start``'s backend: x_t [B, C, ...],
        t int64 [B] in the model's own schedule, output [B, C, ...] (or [B, 2C, ...] for a
        learned variance) of x_t's dtype.
    x_start : array [B, C, ...]
        Data x_0, real floating; within ``data_range`` for the discretized decoder.
    num_draws : int
        Timesteps drawn per example besides the exact terms (at least 2, for a standard error).
    timestep_probs : float array [T], optional
        The proposal p(t); positive and summing to 1. None: the schedule's (:func:`mc_plan`).
    prediction : Prediction or str
        What the denoiser's mean channels predict: ``"epsilon"``, ``"x0"`` or ``"v"``.
    variance : Variance or str
        ``"fixed_small"``, ``"fixed_large"``, ``"learned"`` or ``"learned_range"``.
    decoder : Decoder or str
        ``"discretized"`` (data on ``num_bins`` levels) or ``"continuous"``.
    clip_denoised : bool
        Clip x̂_0 to ``data_range`` before forming the reverse mean.
    data_range : (float, float)
        The data's (low, high): its first and last level.
    num_bins : int
        Number of levels of the discretized decoder (256 for 8-bit data).
    seed : int
        Seed of the counter-based noise (a non-negative 64-bit integer).
    sample_indices : integer array [B], optional
        Each example's global index in the noise stream (default 0 … B-1), so that an example's
        result does not depend on the batch it is in.
    progress : callable, optional
        ``progress(i, n)`` after each of the n network calls.

    Returns
    -------
    MonteCarloBound
        ``estimate_bpd`` [B] and ``stderr_bpd`` [B] in bits/dim, of ``x_start``'s backend and
        dtype, ``num_draws``, ``exact_timesteps`` and ``groups``.
    """
    plan = mc_plan(schedule, num_draws, timestep_probs, check_data_range(data_range))
    T = schedule.num_timesteps
    settings = (prediction, variance, decoder, clip_denoised, data_range, num_bins)
    xp, idx, term = _prepare(schedule, denoiser, x_start, settings, seed, sample_indices)
    dims = math.prod(x_start.shape[1:])
    prior_bpd = prior_kl(schedule, x_start) / (dims * LN2)
    return _stratified(
        plan,
        lambda t: term(t, t).nats / (dims * LN2),
        prior_bpd,
        seed,
        idx,
        T,
        xp,
        progress,
    )


def mc_estimate_from_terms(
    schedule: Any,
    terms_bpd: Array,
    prior_bpd: Array,
    *,
    num_draws: int = 16,
    timestep_probs: np.ndarray | None = None,
    data_range: tuple[float, float] = (-1.0, 1.0),
    seed: int = 0,
    sample_indices: Array | None = None,
) -> MonteCarloBound:
    """The estimate :func:`variational_bound_mc` gives with ``seed``, read from the terms of
    :func:`variational_bound` with the same seed instead of calling the denoiser: both evaluate
    term t at the same x_t. The evaluation computes it this way when it computes the full bound
    anyway.

    Parameters
    ----------
    schedule : Schedule
        The schedule of the full bound.
    terms_bpd : array [B, T]
        ``BoundResult.terms_bpd`` of :func:`variational_bound` with ``seed``.
    prior_bpd : array [B]
        ``BoundResult.prior_bpd``, the prior term L_T.
    num_draws, timestep_probs, data_range, seed, sample_indices
        As :func:`variational_bound_mc` (the full bound's seed and sample indices).

    Returns
    -------
    MonteCarloBound
        The estimate, equal to :func:`variational_bound_mc`'s up to rounding.
    """
    plan = mc_plan(schedule, num_draws, timestep_probs, check_data_range(data_range))
    xp = get_namespace(terms_bpd)
    B, T = terms_bpd.shape
    if T != schedule.num_timesteps or tuple(prior_bpd.shape) != (B,):
        raise ValueError(
            f"terms_bpd must be [B, T={schedule.num_timesteps}] and prior_bpd [B], got "
            f"{tuple(terms_bpd.shape)} and {tuple(prior_bpd.shape)}"
        )
    idx = _sample_indices(terms_bpd, sample_indices, xp)
    flat = xp.reshape(terms_bpd, (-1,))
    rows = xp.arange(B, dtype=xp.int64, device=device(terms_bpd)) * T
    return _stratified(
        plan, lambda t: xp.take(flat, rows + t, axis=0), prior_bpd, seed, idx, T, xp, None
    )


def _stratified(
    plan: MonteCarloPlan,
    term_bpd: Callable[[Array], Array],
    prior_bpd: Array,
    seed: int,
    idx: Array,
    T: int,
    xp: Any,
    progress: Callable[[int, int], None] | None,
) -> MonteCarloBound:
    """The estimate of ``plan`` from ``term_bpd(t)``: each example's term at its timestep t [B]."""
    num_draws = plan.num_draws
    B, dev = prior_bpd.shape[0], device(prior_bpd)
    calls = plan.exact.size + (num_draws if plan.tail.size else 0)
    done = 0

    def called() -> None:
        nonlocal done
        done += 1
        if progress is not None:
            progress(done, calls)

    total = prior_bpd
    for t_int in plan.exact.tolist():
        total = total + term_bpd(xp.full((B,), t_int, dtype=xp.int64, device=dev))
        called()
    if plan.tail.size == 0:  # every term exact: the full bound
        zero = xp.zeros_like(total)
        return MonteCarloBound(total, zero, num_draws, tuple(plan.exact.tolist()), 0)
    cdf = np.cumsum(plan.tail_probs)
    cdf[-1] = 1.0
    cdf_x, tail_x = table_on(cdf, xp, dev), table_on(plan.tail, xp, dev)
    probs_x = table_on(plan.tail_probs, xp, dev)
    draws = []
    for k in range(num_draws):
        # stratum k of the proposal's CDF; a contiguous copy: torch's searchsorted warns on strided
        u = xp.astype(uniform_open(seed, idx, T + k, 1, xp, dev)[:, 0], xp.float64, copy=True)
        pos = xp.clip(xp.searchsorted(cdf_x, (k + u) / num_draws), None, plan.tail.size - 1)
        bpd = term_bpd(xp.astype(xp.take(tail_x, pos, axis=0), xp.int64))
        draws.append(bpd / xp.astype(xp.take(probs_x, pos, axis=0), bpd.dtype))
        called()
    f = xp.stack(draws, axis=1)  # [B, num_draws]: each stratum's estimate of the tail's sum
    total = total + xp.mean(f, axis=1)
    # pairs of neighbouring strata, the last three together when num_draws is odd
    groups = num_draws // 2
    var = xp.zeros_like(total)
    for g in range(groups):
        stop = num_draws if g == groups - 1 else 2 * g + 2
        part = f[:, 2 * g : stop]
        m = stop - 2 * g
        var = var + m / (m - 1) * xp.sum((part - xp.mean(part, axis=1)[:, None]) ** 2, axis=1)
    stderr = xp.sqrt(var) / num_draws
    return MonteCarloBound(total, stderr, num_draws, tuple(plan.exact.tolist()), groups)
