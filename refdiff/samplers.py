"""Samplers over a denoiser callable: ancestral DDPM (Ho et al. Algorithm 2) and DDIM with η
(Song et al. 2021, eq. 12), on full or respaced schedules, and the dispatcher :func:`sample` over
:data:`SAMPLERS`, which also holds the ODE and multistep solvers of :mod:`refdiff.solvers`
(Euler, Heun, DPM-Solver++ 2M, 3M and 2M SDE).

All samplers share one signature (DDIM adds ``eta``). Noise comes from :func:`refdiff.noise.standard_normal`, so every
sample is a function of (seed, sample index) only: the same whether drawn alone or in a batch, on
one process or sharded over many, on NumPy, PyTorch or CuPy. A ``noise`` callable
``noise(step, shape) -> array`` may replace it (for example to drive the sampler from a backend's
own generator).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np

from . import _formulas as f
from ._array import Array, gather
from ._enums import Prediction, Spacing, Variance
from .noise import PRIOR_STEP
from .reverse import check_denoiser_output
from .sampler_loop import Callback, FiniteWatch, SamplerRun, check_zero_terminal_snr
from .solvers import (
    dpmpp_2m_sample,
    dpmpp_2m_sde_sample,
    dpmpp_3m_sample,
    euler_sample,
    heun_sample,
)

__all__ = [
    "RECOMMENDED_SPACING",
    "SAMPLERS",
    "Callback",
    "ddim_sample",
    "ddpm_sample",
    "recommended_spacing",
    "sample",
]


def ddpm_sample(
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
    fused: bool = False,
) -> Array:
    """Ancestral sampling (Ho et al. 2020, Algorithm 2).

    x_T ~ N(0, I); for t = T-1, …, 0: x_{t-1} = μ_θ(x_t, t) + σ_t z with z ~ N(0, I) for t > 0
    (no noise at the last step), σ_t² given by ``variance``. On a respaced schedule the betas are
    the respaced ones and the denoiser sees the original timestep indices.

    ``fused=True`` (CuPy, float32, ε-prediction, fixed variance, the built-in noise) runs each
    update and its noise draw as one CUDA kernel (:mod:`refdiff.fused`), equal to this generic
    path; the callback then receives ``pred_x0=None``.
    """
    prediction, variance = Prediction.parse(prediction), Variance.parse(variance)
    check_zero_terminal_snr(schedule, prediction)
    if fused:
        return _ddpm_fused(
            schedule,
            denoiser,
            shape,
            prediction,
            variance,
            clip_denoised,
            data_range,
            seed,
            sample_indices,
            xp,
            dtype,
            noise,
            x_T,
            callback,
        )
    run = SamplerRun(schedule, shape, xp, dtype, device, seed, sample_indices, noise, x_T)
    xp, x = run.xp, run.x
    posterior = _model_posterior(
        schedule, denoiser, run.tmap, prediction, variance, clip_denoised, data_range, xp
    )
    T = schedule.num_timesteps
    for i, t_int in enumerate(range(T - 1, -1, -1)):
        p = posterior(x, run.full(t_int), want_eps=False)
        if t_int > 0:
            x = p.mean + xp.exp(0.5 * p.log_variance) * run.noise(t_int, tuple(x.shape))
        else:
            x = p.mean
        run.watch(i, t_int, x)
        if callback is not None:
            callback(i, t_int, x, p.pred_x0)
    return run.finish(x)


def ddim_sample(
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
    eta: float = 0.0,
) -> Array:
    """DDIM (Song et al. 2021, eq. 12) with stochasticity ``eta`` over the schedule's steps.

    x_{t-1} = √ᾱ_{t-1} x̂_0 + √(1 - ᾱ_{t-1} - σ_t²) ε̂ + σ_t z, with
    σ_t = η √((1 - ᾱ_{t-1}) / (1 - ᾱ_t)) √(1 - ᾱ_t / ᾱ_{t-1}). η = 0 is deterministic, η = 1 matches
    DDPM's fixed-small variance. Pass a respaced schedule (``schedule.respace(...)``) for fewer steps.
    A learned variance's channels are ignored (DDIM sets its own σ).
    """
    run = SamplerRun(schedule, shape, xp, dtype, device, seed, sample_indices, noise, x_T)
    xp, x = run.xp, run.x
    prediction, variance = Prediction.parse(prediction), Variance.parse(variance)
    check_zero_terminal_snr(schedule, prediction)
    if isinstance(eta, bool) or not (
        isinstance(eta, (int, float)) and math.isfinite(eta) and eta >= 0
    ):
        raise ValueError(f"eta must be a finite number >= 0, got {eta!r}")
    posterior = _model_posterior(
        schedule, denoiser, run.tmap, prediction, variance, clip_denoised, data_range, xp
    )
    # σ_t in float64 from the tables, per index.
    acp, acp_prev = schedule.alphas_cumprod, schedule.alphas_cumprod_prev
    with np.errstate(divide="ignore", invalid="ignore"):
        sigma = eta * np.sqrt((1 - acp_prev) / (1 - acp)) * np.sqrt(1 - acp / acp_prev)
    sigma = np.nan_to_num(sigma)
    dir_coef = np.sqrt(np.maximum(1.0 - acp_prev - sigma**2, 0.0))
    sqrt_acp_prev = np.sqrt(acp_prev)
    T = schedule.num_timesteps
    for i, t_int in enumerate(range(T - 1, -1, -1)):
        t = run.full(t_int)
        p = posterior(x, t)
        # p.pred_eps is recomputed from the clipped x̂_0 when clipping (consistent pair).
        x_new = (
            gather(sqrt_acp_prev, t, x, xp=xp) * p.pred_x0
            + gather(dir_coef, t, x, xp=xp) * p.pred_eps
        )
        if t_int > 0 and sigma[t_int] > 0:
            x_new = x_new + gather(sigma, t, x, xp=xp) * run.noise(t_int, tuple(x.shape))
        x = x_new
        run.watch(i, t_int, x)
        if callback is not None:
            callback(i, t_int, x, p.pred_x0)
    return run.finish(x)


def _ddpm_fused(
    schedule,
    denoiser,
    shape,
    prediction,
    variance,
    clip_denoised,
    data_range,
    seed,
    sample_indices,
    xp,
    dtype,
    noise,
    x_T,
    callback,
):
    """The DDPM loop with one fused CUDA kernel per update (see :func:`ddpm_sample`)."""
    from array_api_compat import is_cupy_namespace

    from .fused import ddpm_step_eps_cuda, standard_normal_cuda

    if xp is None or not is_cupy_namespace(xp):
        raise ValueError("fused=True needs the CuPy namespace (xp=array_api_compat.cupy)")
    if dtype is not None and dtype != xp.float32:
        raise ValueError(f"fused=True runs in float32, got dtype {dtype}")
    if prediction is not Prediction.EPSILON or variance.learned:
        raise ValueError("fused=True supports the ε prediction with a fixed variance")
    if noise is not None:
        raise ValueError("fused=True draws its own counter-based noise; do not pass noise=")
    B = int(shape[0])
    idx = (
        xp.arange(B, dtype=xp.int64)
        if sample_indices is None
        else xp.astype(xp.asarray(sample_indices), xp.int64)
    )
    x = standard_normal_cuda(seed, idx, PRIOR_STEP, tuple(shape[1:])) if x_T is None else x_T
    watch = FiniteWatch(schedule.num_timesteps, xp, None)
    for i, t_int in enumerate(range(schedule.num_timesteps - 1, -1, -1)):
        t_model = xp.full((B,), int(schedule.timestep_map[t_int]), dtype=xp.int64)
        out = check_denoiser_output(denoiser(x, t_model), x, variance)
        new = ddpm_step_eps_cuda(
            schedule,
            x,
            out,
            t_int,
            seed=seed,
            sample_indices=idx,
            clip_denoised=clip_denoised,
            data_range=data_range,
            variance=variance.value,
        )
        x = new
        watch(i, t_int, x)
        if callback is not None:
            callback(i, t_int, x, None)
    return watch.finish(x)


def _model_posterior(schedule, denoiser, tmap, prediction, variance, clip_denoised, data_range, xp):
    """``posterior(x, t, want_eps=True)``: p(x_{t-1} | x_t) from the denoiser's checked output at
    (x, t), the model's parameterisation wrapped once for the whole loop."""

    def posterior(x: Array, t: Array, want_eps: bool = True) -> f.PMeanVariance:
        out = check_denoiser_output(denoiser(x, xp.take(tmap, t, axis=0)), x, variance)
        mean_out, var_out = f.split_channels(out, x.shape[1], variance)
        return f.p_mean_variance(
            schedule,
            mean_out,
            var_out,
            x,
            t,
            prediction,
            variance,
            clip_denoised,
            data_range,
            xp,
            want_eps=want_eps,
        )

    return posterior


#: Every sampler by name, all with the shared signature: the ancestral ones here, the ODE and
#: multistep solvers of :mod:`refdiff.solvers`.
SAMPLERS: dict[str, Callable[..., Array]] = {
    "ddpm": ddpm_sample,
    "ddim": ddim_sample,
    "euler": euler_sample,
    "heun": heun_sample,
    "dpmpp_2m": dpmpp_2m_sample,
    "dpmpp_3m": dpmpp_3m_sample,
    "dpmpp_2m_sde": dpmpp_2m_sde_sample,
}


#: The step spacing each sampler is at its best on, where it is not ``even``: the third-order
#: multistep solver extrapolates far beyond its history on evenly spaced steps and breaks down
#: at 15-20 calls on the digits (docs/samplers.md); on steps uniform in log-SNR it does not.
RECOMMENDED_SPACING: dict[str, Spacing] = {"dpmpp_3m": Spacing.LOGSNR}


def recommended_spacing(name: str) -> Spacing:
    """The step spacing to use with the sampler ``name`` when none is given."""
    if name not in SAMPLERS:
        raise ValueError(f"unknown sampler {name!r}; choose from {sorted(SAMPLERS)}")
    return RECOMMENDED_SPACING.get(name, Spacing.EVEN)


def sample(name: str, *args: Any, **kwargs: Any) -> Array:
    """Run the sampler called ``name`` (one of :data:`SAMPLERS`) with the shared signature."""
    if name not in SAMPLERS:
        raise ValueError(f"unknown sampler {name!r}; choose from {sorted(SAMPLERS)}")
    return SAMPLERS[name](*args, **kwargs)
