"""The coefficients of every sampler, as plans (:mod:`refdiff.plans`), and Heun's corrector.

Ancestral DDPM (Ho et al. 2020, Algorithm 2) and DDIM (Song et al. 2021, eq. 12) are the first
rows of the same table as the solvers of the probability-flow ODE and its SDE: Euler and Heun
(Karras et al. 2022, Algorithm 1) and DPM-Solver++ (Lu et al. 2022: 2M is Algorithm 2; 3M and
the 2M SDE follow the same construction). Each function here turns a schedule (the base one, or
one respaced with :func:`refdiff.select_timesteps`) and the model's settings into a
:class:`~refdiff.plans.Plan`: float64 tables computed once, before any network call.
:mod:`refdiff.samplers` registers them and runs them.

Notation (the variance-preserving form of the schedule): x_t = α_t x_0 + σ_t ε with
α_t = √ᾱ_t, σ_t = √(1 - ᾱ_t), and λ_t = log(α_t / σ_t), half the log-SNR. The model is wrapped
into the data prediction D = x̂_0 (the plan's pred_x, pred_out and clip), and ε̂ = (x - α D) / σ.
Steps go from node k to node k+1 (noisiest first; the node after the last index is σ = 0,
α = 1), with h_k = λ_{k+1} - λ_k:

- DDPM: x_{k+1} = c2_t x_k + c1_t D_k + σ_t z, the posterior mean's coefficients at index t and
  σ_t² = β̃_t (fixed_small), β_t (fixed_large), or the model's own (learned variances); no noise
  at index 0.
- DDIM: x_{k+1} = √ᾱ_{t-1} D_k + √(1 - ᾱ_{t-1} - s_t²) ε̂_k + s_t z, s_t = η √((1-ᾱ_{t-1})/(1-ᾱ_t))
  √(1 - ᾱ_t/ᾱ_{t-1}); with ε̂ written through x and D, a row of the table.
- Euler: x_{k+1} = (σ_{k+1}/σ_k) x_k + α_{k+1} (1 - e^{-h_k}) D_k: Karras' Euler step in x̃ = x/α,
  DDIM with η = 0, and first-order DPM-Solver++ (one method under three names).
- Heun: the Euler step, then x_{k+1} += ½ (σ_{k+1} - α_{k+1} σ_k/α_k) (ε̂(x_{k+1}) - ε̂_k), the
  trapezoid in σ̃; the step to σ = 0 stays an Euler step. Its second evaluation per step is what
  a plan cannot hold: :func:`heun_loop`.
- DPM-Solver++(2M): x_{k+1} = (σ_{k+1}/σ_k) x_k + α_{k+1} (1 - e^{-h_k}) ((1 + 1/(2r)) D_k -
  D_{k-1}/(2r)), r = h_{k-1}/h_k.
- DPM-Solver++(3M): x_{k+1} = (σ_{k+1}/σ_k) x_k + σ_{k+1} ∫ e^λ P(λ) dλ over [λ_k, λ_{k+1}],
  P the quadratic through D_k, D_{k-1}, D_{k-2} in λ, integrated exactly.
- DPM-Solver++(2M) SDE with noise η (k-diffusion's ``eta``; 1 is Lu et al.'s SDE, 0 is 2M):
  x_{k+1} = (σ_{k+1}/σ_k) e^{-ηh} x_k + α_{k+1} (1 - e^{-(1+η)h}) ((1 + 1/(2r)) D_k - D_{k-1}/(2r))
  + σ_{k+1} √(1 - e^{-2ηh}) z.

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
from typing import Any

import numpy as np

from ._enums import Prediction, Variance
from .plans import (
    Plan,
    StepGrid,
    combine,
    data_prediction,
    prediction_coefficients,
    step_grid,
)
from .reverse import check_denoiser_output, check_zero_terminal_snr
from .sampler_loop import Callback, SamplerRun

__all__ = [
    "LOWER_ORDER_FINAL_BELOW",
    "ddim_plan",
    "ddpm_plan",
    "dpmpp_2m_plan",
    "dpmpp_2m_sde_plan",
    "dpmpp_3m_plan",
    "euler_plan",
    "heun_calls",
    "heun_loop",
]

#: Lu et al.'s ``lower_order_final``: below this many steps the last steps drop in order.
LOWER_ORDER_FINAL_BELOW = 15


def _make_plan(
    name: str,
    options: dict[str, Any],
    schedule: Any,
    settings: dict[str, Any],
    tables: Callable[[StepGrid], dict[str, Any]],
) -> Plan:
    """The plan of sampler ``name``: the model's ``settings`` (prediction, variance,
    clip_denoised, data_range) checked against the schedule, its step grid, and the ``tables``
    (x_coef, d_coef, noise_coef, ...) computed from that grid."""
    prediction = Prediction.parse(settings["prediction"])
    check_zero_terminal_snr(schedule.zero_terminal_snr, prediction)
    grid = step_grid(schedule)
    pred_x, pred_out = prediction_coefficients(schedule, grid.index, prediction)
    clip = tuple(settings["data_range"]) if settings["clip_denoised"] else None
    return Plan(
        sampler=name,
        options=options,
        prediction=prediction,
        variance=settings["variance"],
        clip=clip,
        step_index=grid.index,
        model_t=grid.model_t,
        pred_x=pred_x,
        pred_out=pred_out,
        **tables(grid),
    )


# -- DDPM and DDIM ---------------------------------------------------------------------------


def ddpm_plan(schedule: Any, **settings: Any) -> Plan:
    """Ancestral DDPM (Ho et al. 2020, Algorithm 2) as a plan: x_{t-1} = μ̃_t(x_t, x̂_0) + σ_t z,
    the posterior mean's coefficients per index, σ_t from ``variance`` (the model's variance
    channels for the learned types), no noise at index 0. ``settings``: ``prediction``,
    ``variance``, ``clip_denoised``, ``data_range``."""
    variance = Variance.parse(settings["variance"])

    def tables(grid: StepGrid) -> dict[str, Any]:
        t = grid.index
        noisy = t > 0
        out: dict[str, Any] = {
            "x_coef": schedule.posterior_mean_coef2[t],
            "d_coef": schedule.posterior_mean_coef1[t][:, None],
        }
        if variance.learned:
            out["noise_coef"] = noisy.astype(np.float64)
            out["learned_noise"] = True
            out["log_var_min"] = schedule.posterior_log_variance_clipped[t]
            out["log_var_max"] = schedule.log_betas[t]
        else:
            small = variance is Variance.FIXED_SMALL
            log_var = (
                schedule.posterior_log_variance_clipped
                if small
                else schedule.fixed_large_log_variance
            )[t]
            out["noise_coef"] = np.where(noisy, np.exp(0.5 * log_var), 0.0)
        return out

    return _make_plan("ddpm", {}, schedule, settings, tables)


def ddim_plan(schedule: Any, *, eta: float = 0.0, **settings: Any) -> Plan:
    """DDIM (Song et al. 2021, eq. 12) with stochasticity ``eta`` as a plan:
    x_{t-1} = √ᾱ_{t-1} x̂_0 + √(1 - ᾱ_{t-1} - s_t²) ε̂ + s_t z with ε̂ = (x_t - √ᾱ_t x̂_0)/√(1-ᾱ_t),
    so x's weight is √(1 - ᾱ_{t-1} - s_t²)/√(1-ᾱ_t) and x̂_0's is √ᾱ_{t-1} minus √ᾱ_t times that.
    A learned variance's channels are ignored (DDIM sets its own s_t). ``settings``: as
    :func:`ddpm_plan`."""

    def tables(grid: StepGrid) -> dict[str, Any]:
        t = grid.index
        acp, acp_prev = schedule.alphas_cumprod[t], schedule.alphas_cumprod_prev[t]
        with np.errstate(divide="ignore", invalid="ignore"):
            s = eta * np.sqrt((1 - acp_prev) / (1 - acp)) * np.sqrt(1 - acp / acp_prev)
        s = np.where(t > 0, np.nan_to_num(s), 0.0)
        direction = np.sqrt(np.maximum(1.0 - acp_prev - s**2, 0.0))
        eps_x = direction / grid.sigma[:-1]  # ε̂'s weight on x, times the direction's
        d = np.sqrt(acp_prev) - eps_x * grid.alpha[:-1]
        return {"x_coef": eps_x, "d_coef": d[:, None], "noise_coef": s}

    return _make_plan("ddim", {"eta": eta}, schedule, settings, tables)


# -- the exponential integrators -------------------------------------------------------------


def _orders(grid: StepGrid, order: int, lower_order_final: bool) -> np.ndarray:
    """The order of each step: limited by the history of finite-λ nodes, first order into σ = 0,
    at most second order just before it with fewer than 15 steps (``lower_order_final``)."""
    N = len(grid.index)
    finite = np.isfinite(grid.lam[:N])
    out = np.ones(N, dtype=np.int64)
    run = 0
    for k in range(N):
        run = run + 1 if finite[k] else 0
        out[k] = max(1, min(order, run))
    out[N - 1] = 1
    if lower_order_final and 2 <= N < LOWER_ORDER_FINAL_BELOW:
        out[N - 2] = min(out[N - 2], 2)
    return out


def _exp_moments(h: float, n: int) -> np.ndarray:
    """μ_m = e^{-h} ∫_0^h e^u u^m / m! du for m < n ≤ 3 and finite h, without cancellation."""
    em1 = math.expm1(-h)  # e^{-h} - 1
    return np.array([-em1, h + em1, h * h / 2 - h - em1][:n])


def _dpmpp(
    name: str,
    options: dict[str, Any],
    schedule: Any,
    order: int,
    settings: dict[str, Any],
    *,
    exact: bool = False,
    eta: float = 0.0,
    lower_order_final: bool = True,
) -> Plan:
    """DPM-Solver++ coefficients (data prediction). ``exact``: the history polynomial integrated
    exactly (3M); otherwise Lu et al.'s Algorithm 2 (2M). ``eta`` > 0: the SDE variant (2M)."""

    def tables(grid: StepGrid) -> dict[str, Any]:
        N, h, alpha, sigma = len(grid.index), grid.h, grid.alpha, grid.sigma
        orders = _orders(grid, order, lower_order_final)
        x_coef, noise_coef = np.zeros(N), np.zeros(N)
        d_coef = np.zeros((N, order))
        for k in range(N):
            scale = sigma[k + 1] / sigma[k]
            hk = h[k]
            if eta:  # the SDE: the kernel is e^{-(1+η)h} and x decays by e^{-ηh} more
                eta_h = eta * h[k]
                scale *= math.exp(-eta_h)
                hk = h[k] + eta_h
                noise_coef[k] = sigma[k + 1] * math.sqrt(-math.expm1(-2 * eta_h))
            x_coef[k] = scale
            p = int(orders[k])
            if p == 1:
                d_coef[k, 0] = alpha[k + 1] * -math.expm1(-hk)
            elif exact:  # polynomial through D at λ_k, λ_{k-1}, … in u = λ - λ_k, exactly
                u = grid.lam[k - np.arange(p)] - grid.lam[k]
                m = np.arange(p)
                A = u[:, None] ** m[None, :] / np.array([math.factorial(i) for i in m])
                d_coef[k, :p] = alpha[k + 1] * np.linalg.solve(A.T, _exp_moments(h[k], p))
            else:  # Algorithm 2: (1 + 1/(2r)) D_k - D_{k-1} / (2r), r = h_{k-1} / h_k
                phi = alpha[k + 1] * -math.expm1(-hk)
                r = h[k - 1] / h[k]
                d_coef[k, :2] = phi * (1 + 1 / (2 * r)), -phi / (2 * r)
        return {"x_coef": x_coef, "d_coef": d_coef, "noise_coef": noise_coef}

    return _make_plan(name, options, schedule, settings, tables)


def euler_plan(schedule: Any, **settings: Any) -> Plan:
    """Euler on the probability-flow ODE: x_{k+1} = (σ_{k+1}/σ_k) x_k + α_{k+1} (1 - e^{-h}) D_k.
    ``settings``: ``prediction``, ``variance``, ``clip_denoised``, ``data_range``."""
    return _dpmpp("euler", {}, schedule, 1, settings)


def dpmpp_2m_plan(schedule: Any, **settings: Any) -> Plan:
    """DPM-Solver++(2M), Lu et al.'s Algorithm 2. ``settings``: as :func:`euler_plan`."""
    return _dpmpp("dpmpp_2m", {}, schedule, 2, settings)


def dpmpp_3m_plan(schedule: Any, *, lower_order_final: bool = True, **settings: Any) -> Plan:
    """DPM-Solver++(3M): the quadratic through the last three x̂_0 in λ, integrated exactly;
    ``lower_order_final``: at most second order on the step before the last below 15 steps."""
    options = {"lower_order_final": lower_order_final}
    return _dpmpp(
        "dpmpp_3m", options, schedule, 3, settings, exact=True, lower_order_final=lower_order_final
    )


def dpmpp_2m_sde_plan(schedule: Any, *, eta: float = 1.0, **settings: Any) -> Plan:
    """DPM-Solver++(2M) SDE with noise ``eta`` (1: Lu et al.'s SDE solver; 0: DPM-Solver++(2M))."""
    return _dpmpp("dpmpp_2m_sde", {"eta": eta}, schedule, 2, settings, eta=eta)


# -- Heun: the Euler plan and a second evaluation per step -----------------------------------


def heun_calls(steps: int, zero_terminal_snr: bool = False) -> int:
    """2·steps - 1 network calls (2·steps - 2 with zero terminal SNR, whose first step is an Euler
    step: the trapezoid has no finite limit from σ̃ = ∞); ``steps`` for a single step."""
    return max(steps, 2 * steps - (2 if zero_terminal_snr else 1))


def heun_loop(
    schedule: Any,
    denoiser: Callable[[Any, Any], Any],
    shape: tuple[int, ...],
    *,
    prediction: Prediction | str,
    variance: Variance | str,
    clip_denoised: bool,
    data_range: tuple[float, float],
    callback: Callback | None = None,
    **run_settings: Any,
) -> Any:
    """Heun's method (Karras et al. 2022, Algorithm 1, S_churn = 0): the Euler plan's step, then the
    trapezoid in σ̃ from a second evaluation at the next node (not into σ = 0, not out of a
    zero-terminal-SNR start). ``run_settings``: seed, sample_indices, xp, dtype, device, noise,
    x_T (as :func:`refdiff.plans.run_plan`)."""
    plan = euler_plan(
        schedule,
        prediction=prediction,
        variance=variance,
        clip_denoised=clip_denoised,
        data_range=data_range,
    )
    if run_settings.pop("fused", None):
        raise ValueError("fused=True runs plans; Heun's second evaluation has no fused kernel")
    grid = step_grid(schedule)
    run = SamplerRun(plan.steps, shape, **run_settings)
    xp = run.xp
    alpha, sigma = grid.alpha, grid.sigma
    # the trapezoid's weight α_{k+1} (σ̃_{k+1} - σ̃_k) / 2, except into σ = 0 or out of σ̃ = ∞
    with np.errstate(divide="ignore", invalid="ignore"):
        half_step = 0.5 * (sigma[1:] - alpha[1:] * sigma[:-1] / alpha[:-1])
    corrected = (sigma[1:] > 0) & (alpha[:-1] > 0)

    def denoise(x: Any, k: int) -> Any:
        out = check_denoiser_output(denoiser(x, run.full(int(plan.model_t[k]))), x, plan.variance)
        out = out[:, : x.shape[1], ...] if plan.variance.learned else out
        return data_prediction(x, out, plan.pred_x[k], plan.pred_out[k], plan.clip, xp)

    def eps(x: Any, d: Any, k: int) -> Any:  # ε̂ = (x - α_k D) / σ_k, the slope dx̃/dσ̃
        return (x - float(alpha[k]) * d) * float(1.0 / sigma[k])

    x = run.x
    for k in range(plan.steps):
        t = int(plan.step_index[k])
        d = denoise(x, k)
        x_euler = combine(x, plan.x_coef[k], [d], plan.d_coef[k])
        if corrected[k]:
            slope_change = eps(x_euler, denoise(x_euler, k + 1), k + 1) - eps(x, d, k)
            x = x_euler + float(half_step[k]) * slope_change
        else:
            x = x_euler
        run.watch(k, t, x)
        if callback is not None:
            callback(k, t, x, d)
    return run.finish(x)
