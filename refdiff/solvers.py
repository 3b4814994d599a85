"""Solvers of the probability-flow ODE and its SDE: Euler and Heun (Karras et al. 2022,
Algorithm 1) and DPM-Solver++ (Lu et al. 2022, "DPM-Solver++": 2M is Algorithm 2; 3M and the 2M
SDE variant follow the same construction).

They share the samplers' signature (:mod:`refdiff.samplers` registers them in ``SAMPLERS``) and
run on the steps of the schedule they are given: the base schedule, or one respaced with
:func:`refdiff.select_timesteps` (spacings ``even``, ``logsnr``, ``karras``). The model is only
ever called at its own integer training indices, and every coefficient uses the exact ᾱ of the
index the model is given. Each run ends with a step to σ = 0, whose result is x̂_0 at the last
index (as DDPM and DDIM end).

Notation (the variance-preserving form of the schedule): x_t = α_t x_0 + σ_t ε with
α_t = √ᾱ_t, σ_t = √(1 - ᾱ_t), and λ_t = log(α_t / σ_t), half the log-SNR. Karras et al.'s
variables are x̃ = x/α and σ̃ = σ/α, in which the probability-flow ODE reads dx̃/dσ̃ = ε̂. The model
is wrapped once into the data prediction D(x, t) = x̂_0 (from ε, x_0 or v; clipped to the data
range when ``clip_denoised``), and ε̂ = (x - α D) / σ.

Steps go from node k to node k+1 (noisiest first; the node after the last index is σ = 0,
α = 1), with h_k = λ_{k+1} - λ_k. All coefficients are computed before the loop in float64:

- Euler: x_{k+1} = (σ_{k+1}/σ_k) x_k + α_{k+1} (1 - e^{-h_k}) D_k. This *is* Karras' Euler step
  x̃_{k+1} = x̃_k + (σ̃_{k+1} - σ̃_k) ε̂_k written in x, and also DDIM with η = 0 and first-order
  DPM-Solver++: one method under three names.
- Heun: the Euler step, then x_{k+1} += ½ (σ_{k+1} - α_{k+1} σ_k/α_k) (ε̂(x_{k+1}) - ε̂_k), the
  trapezoid in σ̃; the step to σ = 0 stays an Euler step (Karras' Algorithm 1).
- DPM-Solver++(2M): x_{k+1} = (σ_{k+1}/σ_k) x_k + α_{k+1} (1 - e^{-h_k}) ((1 + 1/(2r)) D_k -
  D_{k-1}/(2r)), r = h_{k-1}/h_k.
- DPM-Solver++(3M): x_{k+1} = (σ_{k+1}/σ_k) x_k + σ_{k+1} ∫ e^λ P(λ) dλ over [λ_k, λ_{k+1}],
  P the quadratic through D_k, D_{k-1}, D_{k-2} in λ, integrated exactly.
- DPM-Solver++(2M) SDE: x_{k+1} = (σ_{k+1}/σ_k) e^{-h} x_k + α_{k+1} (1 - e^{-2h}) ((1 + 1/(2r))
  D_k - D_{k-1}/(2r)) + σ_{k+1} √(1 - e^{-2h}) z.

Multistep solvers start at first order and reach their order as the history fills; the step to
σ = 0 is first order (it returns D), and with fewer than 15 steps the step before it is at most
second order (Lu et al.'s ``lower_order_final``, as diffusers does). Zero terminal SNR (α = 0,
σ̃ = ∞ at the first index): the first step is the Euler step, which is finite there (x_{k+1} =
σ_{k+1} x_k + α_{k+1} D_k), and no later step extrapolates from that node. docs/samplers.md has
the derivations and the measured orders.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np

from . import _formulas as f
from ._array import Array
from ._enums import Prediction, Variance
from .reverse import check_denoiser_output
from .sampler_loop import Callback, SamplerRun, check_zero_terminal_snr

__all__ = [
    "dpmpp_2m_sample",
    "dpmpp_2m_sde_sample",
    "dpmpp_3m_sample",
    "euler_sample",
    "heun_sample",
    "network_calls",
]

#: Lu et al.'s ``lower_order_final``: below this many steps the last steps drop in order.
LOWER_ORDER_FINAL_BELOW = 15


class _Grid(NamedTuple):
    """The nodes of a run, noisiest first: N schedule indices, then σ = 0 (arrays have N + 1)."""

    index: list[int]  # schedule index of node k
    model_t: list[int]  # the training index the model is given at node k
    alpha: np.ndarray  # α_k = √ᾱ (1 at the end)
    sigma: np.ndarray  # σ_k = √(1 - ᾱ) (0 at the end)
    lam: np.ndarray  # λ_k = log(α_k / σ_k): -inf at a zero-terminal-SNR start, +inf at the end

    @property
    def h(self) -> np.ndarray:
        """h_k = λ_{k+1} - λ_k [N] (+inf into σ = 0 and out of a zero-terminal-SNR start)."""
        with np.errstate(invalid="ignore"):
            return np.diff(self.lam)


def _grid(schedule: Any) -> _Grid:
    T = schedule.num_timesteps
    index = list(range(T - 1, -1, -1))
    acp = np.append(schedule.alphas_cumprod[index], 1.0)
    alpha, sigma = np.sqrt(acp), np.sqrt(1.0 - acp)
    with np.errstate(divide="ignore"):
        lam = np.log(alpha) - np.log(sigma)
    return _Grid(index, [int(schedule.timestep_map[i]) for i in index], alpha, sigma, lam)


# -- coefficients, before the loop -----------------------------------------------------------


class _Coefficients(NamedTuple):
    """x_{k+1} = x_coef[k] x_k + Σ_j d_coef[k, j] D_{k-j} + noise_coef[k] z."""

    x_coef: np.ndarray  # [N]
    d_coef: np.ndarray  # [N, order]
    noise_coef: np.ndarray  # [N]


def _orders(grid: _Grid, order: int) -> np.ndarray:
    """The order of each step: limited by the history of finite-λ nodes, first order into σ = 0,
    at most second order just before it with fewer than 15 steps."""
    N = len(grid.index)
    finite = np.isfinite(grid.lam[:N])
    out = np.ones(N, dtype=np.int64)
    run = 0
    for k in range(N):
        run = run + 1 if finite[k] else 0
        out[k] = max(1, min(order, run))
    out[N - 1] = 1
    if N < LOWER_ORDER_FINAL_BELOW and N >= 2:
        out[N - 2] = min(out[N - 2], 2)
    return out


def _exp_moments(h: float, n: int) -> np.ndarray:
    """μ_m = e^{-h} ∫_0^h e^u u^m / m! du for m < n ≤ 3 and finite h, without cancellation."""
    em1 = math.expm1(-h)  # e^{-h} - 1
    return np.array([-em1, h + em1, h * h / 2 - h - em1][:n])


def _dpmpp_coefficients(grid: _Grid, order: int, *, exact: bool, sde: bool) -> _Coefficients:
    """DPM-Solver++ coefficients (data prediction). ``exact``: the history polynomial integrated
    exactly (3M); otherwise Lu et al.'s Algorithm 2 (2M). ``sde``: the SDE variant (2M only)."""
    N, h, alpha, sigma = len(grid.index), grid.h, grid.alpha, grid.sigma
    orders = _orders(grid, order)
    x_coef, noise_coef = np.zeros(N), np.zeros(N)
    d_coef = np.zeros((N, order))
    for k in range(N):
        scale = sigma[k + 1] / sigma[k]
        hk = 2 * h[k] if sde else h[k]  # the SDE's kernel is e^{-2h}
        if sde:
            scale *= math.exp(-h[k])
            noise_coef[k] = sigma[k + 1] * math.sqrt(-math.expm1(-2 * h[k]))
        x_coef[k] = scale
        p = int(orders[k])
        if p == 1:
            d_coef[k, 0] = alpha[k + 1] * -math.expm1(-hk)
        elif exact:  # polynomial through D at λ_k, λ_{k-1}, … in u = λ - λ_k, integrated exactly
            u = grid.lam[k - np.arange(p)] - grid.lam[k]
            m = np.arange(p)
            A = u[:, None] ** m[None, :] / np.array([math.factorial(i) for i in m])
            d_coef[k, :p] = alpha[k + 1] * np.linalg.solve(A.T, _exp_moments(h[k], p))
        else:  # Algorithm 2: (1 + 1/(2r)) D_k - D_{k-1} / (2r), r = h_{k-1} / h_k
            phi = alpha[k + 1] * -math.expm1(-hk)
            r = h[k - 1] / h[k]
            d_coef[k, :2] = phi * (1 + 1 / (2 * r)), -phi / (2 * r)
    return _Coefficients(x_coef, d_coef, noise_coef)


# -- the loops -------------------------------------------------------------------------------


Denoise = Callable[[Array, int], Array]


def _combine(x: Array, x_coef: float, history: list[Array], d_coef: np.ndarray) -> Array:
    """x_coef x + Σ_j d_coef[j] history[j], skipping zero terms (x may be dropped entirely)."""
    out = x * float(x_coef) if x_coef != 0 else None
    for d, c in zip(history, d_coef, strict=False):
        if c != 0:
            out = d * float(c) if out is None else out + d * float(c)
    return out


def _multistep_loop(coef: _Coefficients) -> Callable[..., Array]:
    def loop(run: SamplerRun, denoise: Denoise, grid: _Grid, callback: Callback | None) -> Array:
        x, history = run.x, []
        for k, i in enumerate(grid.index):
            d = denoise(x, k)
            history = [d, *history][: coef.d_coef.shape[1]]
            x_new = _combine(x, coef.x_coef[k], history, coef.d_coef[k])
            if coef.noise_coef[k] > 0:
                x_new = x_new + float(coef.noise_coef[k]) * run.noise(i, tuple(x.shape))
            x = x_new
            run.watch(k, i, x)
            if callback is not None:
                callback(k, i, x, d)
        return x

    return loop


def _heun_loop(run: SamplerRun, denoise: Denoise, grid: _Grid, callback: Callback | None) -> Array:
    euler = _dpmpp_coefficients(grid, 1, exact=True, sde=False)
    alpha, sigma = grid.alpha, grid.sigma
    # the trapezoid's weight α_{k+1} (σ̃_{k+1} - σ̃_k) / 2, except into σ = 0 or out of σ̃ = ∞
    with np.errstate(divide="ignore", invalid="ignore"):
        half_step = 0.5 * (sigma[1:] - alpha[1:] * sigma[:-1] / alpha[:-1])
    corrected = (sigma[1:] > 0) & (alpha[:-1] > 0)
    x = run.x
    for k, i in enumerate(grid.index):
        d = denoise(x, k)
        x_euler = _combine(x, euler.x_coef[k], [d], euler.d_coef[k])
        if corrected[k]:
            slope_change = _eps(x_euler, denoise(x_euler, k + 1), grid, k + 1) - _eps(x, d, grid, k)
            x = x_euler + float(half_step[k]) * slope_change
        else:
            x = x_euler
        run.watch(k, i, x)
        if callback is not None:
            callback(k, i, x, d)
    return x


def _eps(x: Array, d: Array, grid: _Grid, k: int) -> Array:
    """ε̂ = (x - α_k D) / σ_k, the slope dx̃/dσ̃ of the probability-flow ODE."""
    return (x - float(grid.alpha[k]) * d) * float(1.0 / grid.sigma[k])


# -- the wrapped model -----------------------------------------------------------------------


def _data_prediction(
    denoiser: Callable[[Array, Array], Array],
    run: SamplerRun,
    grid: _Grid,
    prediction: Prediction,
    variance: Variance,
    clip_denoised: bool,
    data_range: tuple[float, float],
) -> Denoise:
    """``denoise(x, k)``: x̂_0 at node k from the model's checked output, the parameterisation
    resolved once for the whole loop with float64 host coefficients."""
    xp = run.xp
    lo, hi = data_range

    def denoise(x: Array, k: int) -> Array:
        out = check_denoiser_output(denoiser(x, run.full(grid.model_t[k])), x, variance)
        out, _ = f.split_channels(out, x.shape[1], variance)
        a, s = float(grid.alpha[k]), float(grid.sigma[k])
        if prediction is Prediction.EPSILON:
            x0 = x * (1.0 / a) - out * (s / a)
        elif prediction is Prediction.V:
            x0 = x * a - out * s
        else:
            x0 = out
        return xp.clip(x0, lo, hi) if clip_denoised else x0

    return denoise


@dataclass(frozen=True)
class _Method:
    name: str
    loop: Callable[[SamplerRun, Denoise, _Grid, Callback | None], Array]


def _solve(
    method: Callable[[_Grid], _Method],
    schedule: Any,
    denoiser: Callable[[Array, Array], Array],
    shape: tuple[int, ...],
    *,
    prediction: Prediction | str = Prediction.EPSILON,
    variance: Variance | str = Variance.FIXED_SMALL,
    clip_denoised: bool = True,
    data_range: tuple[float, float] = (-1.0, 1.0),
    seed: int = 0,
    sample_indices: Array | None = None,
    xp: Any = None,
    dtype: Any = None,
    device: Any = None,
    noise: Callable[[int, tuple[int, ...]], Array] | None = None,
    x_T: Array | None = None,
    callback: Callback | None = None,
    **unknown: Any,
) -> Array:
    """The setup every solver shares, then its loop (see the module docstring)."""
    grid = _grid(schedule)
    chosen = method(grid)
    if unknown:
        raise TypeError(
            f"the {chosen.name!r} sampler takes no option {sorted(unknown)} (only the shared "
            "settings: prediction, variance, clip_denoised, data_range, seed, sample_indices, "
            "xp, dtype, device, noise, x_T, callback)"
        )
    prediction, variance = Prediction.parse(prediction), Variance.parse(variance)
    check_zero_terminal_snr(schedule, prediction)
    run = SamplerRun(schedule, shape, xp, dtype, device, seed, sample_indices, noise, x_T)
    denoise = _data_prediction(
        denoiser, run, grid, prediction, variance, clip_denoised, tuple(data_range)
    )
    return run.finish(chosen.loop(run, denoise, grid, callback))


def _heun(grid: _Grid) -> _Method:
    return _Method("heun", _heun_loop)


def _dpmpp(name: str, order: int, *, exact: bool = False, sde: bool = False):
    def method(grid: _Grid) -> _Method:
        coef = _dpmpp_coefficients(grid, order, exact=exact, sde=sde)
        return _Method(name, _multistep_loop(coef))

    return method


# -- the solvers -----------------------------------------------------------------------------


def euler_sample(schedule: Any, denoiser: Callable, shape: tuple[int, ...], **settings) -> Array:
    """Euler's method on the probability-flow ODE (Karras et al. 2022, Algorithm 1 without the
    second-order correction): x̃_{k+1} = x̃_k + (σ̃_{k+1} - σ̃_k) ε̂_k in x̃ = x/α, σ̃ = σ/α.

    First order; one network call per step. Equal to DDIM with η = 0 on the same schedule.
    ``settings`` are the samplers' shared keywords (``prediction``, ``variance``,
    ``clip_denoised``, ``data_range``, ``seed``, ``sample_indices``, ``xp``, ``dtype``,
    ``device``, ``noise``, ``x_T``, ``callback``); a learned variance's channels are ignored.
    """
    return _solve(_dpmpp("euler", 1), schedule, denoiser, shape, **settings)


def heun_sample(schedule: Any, denoiser: Callable, shape: tuple[int, ...], **settings) -> Array:
    """Heun's method on the probability-flow ODE (Karras et al. 2022, Algorithm 1, deterministic:
    S_churn = 0): an Euler step, then the trapezoid x̃_{k+1} = x̃_k + (σ̃_{k+1} - σ̃_k) (ε̂_k +
    ε̂(x̃_{k+1}))/2; the last step, into σ = 0, stays an Euler step.

    Second order; 2N - 1 network calls for N steps (2N - 2 with zero terminal SNR, whose first
    step is an Euler step: the trapezoid has no finite limit from σ̃ = ∞). ``settings``: as
    :func:`euler_sample`.
    """
    return _solve(_heun, schedule, denoiser, shape, **settings)


def dpmpp_2m_sample(schedule: Any, denoiser: Callable, shape: tuple[int, ...], **settings) -> Array:
    """DPM-Solver++(2M) (Lu et al. 2022, "DPM-Solver++", Algorithm 2): the exponential integrator
    of the probability-flow ODE in λ with the data prediction, second order from the last two
    x̂_0 (one network call per step).

    x_{k+1} = (σ_{k+1}/σ_k) x_k + α_{k+1} (1 - e^{-h}) ((1 + 1/(2r)) D_k - D_{k-1}/(2r)),
    r = h_{k-1}/h_k. The first step and the step into σ = 0 are first order, as in diffusers'
    ``DPMSolverMultistepScheduler`` (``algorithm_type="dpmsolver++"``, ``solver_order=2``),
    which it equals on the same timesteps. ``settings``: as :func:`euler_sample`.
    """
    return _solve(_dpmpp("dpmpp_2m", 2), schedule, denoiser, shape, **settings)


def dpmpp_3m_sample(schedule: Any, denoiser: Callable, shape: tuple[int, ...], **settings) -> Array:
    """DPM-Solver++(3M): the multistep exponential integrator of third order (Lu et al. 2022):
    the quadratic through the last three x̂_0 in λ, integrated exactly against σ_{k+1} e^λ.

    The weights come from the exact moments e^{-h} ∫_0^h e^u u^m/m! du (m = 0, 1, 2), so the
    update is exact for any x̂_0 quadratic in λ; Lu et al.'s published third-order multistep
    formula halves the weight of the second difference (docs/samplers.md). Warm-up steps are first
    and second order. One network call per step. ``settings``: as :func:`euler_sample`.
    """
    return _solve(_dpmpp("dpmpp_3m", 3, exact=True), schedule, denoiser, shape, **settings)


def dpmpp_2m_sde_sample(
    schedule: Any, denoiser: Callable, shape: tuple[int, ...], **settings
) -> Array:
    """DPM-Solver++(2M) SDE (Lu et al. 2022, the SDE solver of the data prediction, midpoint
    form): x_{k+1} = (σ_{k+1}/σ_k) e^{-h} x_k + α_{k+1} (1 - e^{-2h}) ((1 + 1/(2r)) D_k -
    D_{k-1}/(2r)) + σ_{k+1} √(1 - e^{-2h}) z.

    Stochastic: z is the counter-based noise of step k (a sample depends only on (seed, index)).
    At first order it is exactly ancestral DDPM sampling with the posterior variance β̃.
    ``settings``: as :func:`euler_sample`.
    """
    return _solve(_dpmpp("dpmpp_2m_sde", 2, sde=True), schedule, denoiser, shape, **settings)


def network_calls(sampler: str, steps: int, *, zero_terminal_snr: bool = False) -> int:
    """How many times ``sampler`` calls the model in ``steps`` steps: ``steps`` for every sampler
    but Heun, which takes 2·steps - 1 (2·steps - 2 with zero terminal SNR)."""
    if isinstance(steps, bool) or not isinstance(steps, (int, np.integer)) or steps < 1:
        raise ValueError(f"steps must be an int >= 1, got {steps!r}")
    if sampler != "heun":
        return int(steps)
    return max(int(steps), 2 * int(steps) - (2 if zero_terminal_snr else 1))
