"""Samplers over a denoiser callable: ancestral DDPM (Ho et al. Algorithm 2) and DDIM with η
(Song et al. 2021, eq. 12), on full or respaced schedules.

Both samplers share one signature (DDIM adds ``eta``). Noise comes from :func:`refdiff.noise.standard_normal`, so every
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
from ._array import Array, gather, get_namespace, table_on
from ._enums import Prediction, Variance
from .noise import PRIOR_STEP, standard_normal
from .reverse import check_denoiser_output

__all__ = ["SAMPLERS", "ddim_sample", "ddpm_sample", "sample"]

Callback = Callable[[int, int, Array, Array], None]
"""``callback(i, t, x, pred_x0)`` after step i (0-based) at index t with the new x."""


class _Run:
    """What every sampler's loop shares: the namespace, device and dtype, the noise, the map to
    the model's timesteps, and a watch on the state that names the first step at which it stopped
    being finite (kept on the device: one read at the end, none per step)."""

    def __init__(self, schedule, shape, xp, dtype, device, seed, sample_indices, noise, x_T):
        if len(shape) < 2:
            raise ValueError(
                f"shape must be [B, ...] with at least one data axis, got {tuple(shape)}"
            )
        B = int(shape[0])
        if B < 1:
            raise ValueError(f"need at least one sample, got batch size {B}")
        if x_T is not None:
            xp, dtype, device = _follow(x_T, shape, xp, dtype, device)
        elif xp is None:
            import array_api_compat.numpy as xp
        dtype = xp.float32 if dtype is None else dtype
        if not xp.isdtype(dtype, "real floating"):
            raise TypeError(f"samples must have a real floating dtype, got {dtype}")
        if sample_indices is None:
            idx = xp.arange(B, dtype=xp.int64, device=device)
        else:
            idx = xp.asarray(sample_indices, device=device)
            if not xp.isdtype(idx.dtype, "integral") or tuple(idx.shape) != (B,):
                raise ValueError(
                    f"sample_indices must be {B} integers, got {tuple(idx.shape)} {idx.dtype}"
                )
            idx = xp.astype(idx, xp.int64)
        if noise is None:

            def noise(step: int, shp: tuple[int, ...]) -> Array:
                return standard_normal(seed, idx, step, shp[1:], xp=xp, dtype=dtype, device=device)

        self.xp, self.B, self.dtype, self.device, self.idx, self.noise = (
            xp,
            B,
            dtype,
            device,
            idx,
            noise,
        )
        self.x = noise(PRIOR_STEP, tuple(shape)) if x_T is None else x_T
        self.tmap = table_on(schedule.timestep_map, xp, device)
        self.watch = _FiniteWatch(schedule.num_timesteps, xp, device)
        self.finish = self.watch.finish

    def full(self, t_int: int) -> Array:
        """The timestep index ``t_int`` for every sample."""
        return self.xp.full((self.B,), t_int, dtype=self.xp.int64, device=self.device)


class _FiniteWatch:
    """Calls ``watch(i, t, x)`` after each step; ``finish(x)`` raises a ``FloatingPointError``
    naming the first step whose state held a NaN or an infinity. The flag stays on the device:
    one read back at the end, none per step."""

    def __init__(self, num_steps: int, xp: Any, device: Any) -> None:
        self.xp = xp
        self._steps = xp.arange(num_steps + 1, dtype=xp.int64, device=device)
        self._first_bad = self._steps[num_steps]  # num_steps: no step has gone bad
        self._timesteps: list[int] = []

    def __call__(self, i: int, t_int: int, x: Array) -> None:
        xp = self.xp
        self._timesteps.append(t_int)
        bad = xp.logical_not(xp.all(xp.isfinite(x)))
        self._first_bad = xp.where(
            bad, xp.minimum(self._first_bad, self._steps[i]), self._first_bad
        )

    def finish(self, x: Array) -> Array:
        i = int(self._first_bad)
        if i < len(self._timesteps):
            raise FloatingPointError(
                f"sampling diverged: the samples hold NaN or infinite values from step {i} "
                f"(timestep index {self._timesteps[i]}) on; the denoiser returned non-finite "
                "values or the settings do not match the model"
            )
        return x


def _follow(x_T: Array, shape, xp, dtype, device):
    """The namespace, dtype and device of a given x_T (a conflicting explicit one is an error)."""
    from array_api_compat import device as device_of

    xt_ns = get_namespace(x_T)
    if xp is not None and xp.__name__ != xt_ns.__name__:
        raise TypeError(f"x_T is a {xt_ns.__name__} array but xp is {xp.__name__}")
    if tuple(x_T.shape) != tuple(shape):
        raise ValueError(f"x_T has shape {tuple(x_T.shape)}, expected {tuple(shape)}")
    if dtype is not None and dtype != x_T.dtype:
        raise TypeError(f"x_T has dtype {x_T.dtype} but dtype={dtype} was asked for")
    if device is not None and device != device_of(x_T):
        raise ValueError(f"x_T lives on {device_of(x_T)} but device={device} was asked for")
    return xt_ns, x_T.dtype, device_of(x_T)


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
    _check_ztsnr(schedule, prediction)
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
    run = _Run(schedule, shape, xp, dtype, device, seed, sample_indices, noise, x_T)
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
    run = _Run(schedule, shape, xp, dtype, device, seed, sample_indices, noise, x_T)
    xp, x = run.xp, run.x
    prediction, variance = Prediction.parse(prediction), Variance.parse(variance)
    _check_ztsnr(schedule, prediction)
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
    watch = _FiniteWatch(schedule.num_timesteps, xp, None)
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


def _check_ztsnr(schedule: Any, prediction: Prediction) -> None:
    if schedule.zero_terminal_snr and prediction is Prediction.EPSILON:
        raise ValueError(
            "an ε-prediction cannot recover x_0 at the last step of a zero-terminal-SNR schedule "
            "(ᾱ_T = 0); train with prediction 'v' or 'x0' to use zero terminal SNR"
        )


SAMPLERS: dict[str, Callable[..., Array]] = {"ddpm": ddpm_sample, "ddim": ddim_sample}


def sample(name: str, *args: Any, **kwargs: Any) -> Array:
    """Run the sampler called ``name`` (``"ddpm"`` or ``"ddim"``) with the shared signature."""
    if name not in SAMPLERS:
        raise ValueError(f"unknown sampler {name!r}; choose from {sorted(SAMPLERS)}")
    return SAMPLERS[name](*args, **kwargs)
