"""The reverse process p_θ(x_{t-1} | x_t): what the denoiser predicts and the Gaussian it implies.

The denoiser's output is interpreted through two enums: :class:`Prediction` (what the mean
channels predict: ε, x_0 or v) and :class:`Variance` (how the variance is chosen: fixed small β̃,
fixed large β, learned log σ², or improved DDPM's learned interpolation).
"""

from __future__ import annotations

import enum
from typing import Any, NamedTuple

from ._array import Array, as_batch_timesteps, device, gather, get_namespace
from .forward import _posterior_mean

__all__ = [
    "PMeanVariance",
    "Prediction",
    "Variance",
    "eps_from_v",
    "eps_from_x0",
    "p_mean_variance",
    "split_model_output",
    "v_from_x0_eps",
    "x0_from_eps",
    "x0_from_v",
]


class Prediction(str, enum.Enum):
    """What the denoiser's mean channels predict."""

    EPSILON = "epsilon"  # the noise ε (Ho et al.)
    X0 = "x0"  # the clean data x_0
    V = "v"  # v = √ᾱ ε - √(1-ᾱ) x_0 (Salimans & Ho 2022)


class Variance(str, enum.Enum):
    """How the reverse variance Σ_θ(x_t, t) is chosen."""

    FIXED_SMALL = "fixed_small"  # σ² = β̃_t, the posterior variance (clipped log at t = 0)
    FIXED_LARGE = "fixed_large"  # σ² = β_t ([β̃_1, β_2, …] as in Ho et al.)
    LEARNED = "learned"  # the model outputs log σ² directly
    LEARNED_RANGE = "learned_range"  # log σ² = v log β + (1 - v) log β̃ with v = (out + 1)/2

    @property
    def learned(self) -> bool:
        return self in (Variance.LEARNED, Variance.LEARNED_RANGE)


def _enum(cls: type[enum.Enum], value: Any) -> Any:
    try:
        return cls(value)
    except ValueError:
        choices = [m.value for m in cls]  # type: ignore[attr-defined]
        raise ValueError(
            f"unknown {cls.__name__.lower()} {value!r}; choose from {choices}"
        ) from None


def _checked(schedule: Any, a: Array, t: Any, b: Array) -> tuple[Any, Array]:
    xp = get_namespace(a, b)
    if tuple(a.shape) != tuple(b.shape):
        raise ValueError(f"shape mismatch: {tuple(a.shape)} vs {tuple(b.shape)}")
    return xp, as_batch_timesteps(t, schedule.num_timesteps, a.shape[0], xp, device(a))


# The conversions below come in pairs: a public function that checks its inputs and a private one
# (same name with a leading underscore) that trusts them, for use inside the core's loops.


def _x0_from_eps(schedule: Any, x_t: Array, t: Array, eps: Array, xp: Any) -> Array:
    return (
        gather(schedule.sqrt_recip_alphas_cumprod, t, x_t, xp=xp) * x_t
        - gather(schedule.sqrt_recipm1_alphas_cumprod, t, x_t, xp=xp) * eps
    )


def x0_from_eps(schedule: Any, x_t: Array, t: Any, eps: Array) -> Array:
    """x_0 = (x_t - √(1-ᾱ_t) ε) / √ᾱ_t = √(1/ᾱ_t) x_t - √(1/ᾱ_t - 1) ε."""
    xp, t = _checked(schedule, x_t, t, eps)
    _check_recoverable(schedule, t, xp, "ε")
    return _x0_from_eps(schedule, x_t, t, eps, xp)


def _eps_from_x0(schedule: Any, x_t: Array, t: Array, x0: Array, xp: Any) -> Array:
    return (x_t - gather(schedule.sqrt_alphas_cumprod, t, x_t, xp=xp) * x0) / gather(
        schedule.sqrt_one_minus_alphas_cumprod, t, x_t, xp=xp
    )


def eps_from_x0(schedule: Any, x_t: Array, t: Any, x0: Array) -> Array:
    """ε = (x_t - √ᾱ_t x_0) / √(1-ᾱ_t)."""
    xp, t = _checked(schedule, x_t, t, x0)
    return _eps_from_x0(schedule, x_t, t, x0, xp)


def _v_from_x0_eps(schedule: Any, x0: Array, t: Array, eps: Array, xp: Any) -> Array:
    return (
        gather(schedule.sqrt_alphas_cumprod, t, x0, xp=xp) * eps
        - gather(schedule.sqrt_one_minus_alphas_cumprod, t, x0, xp=xp) * x0
    )


def v_from_x0_eps(schedule: Any, x0: Array, t: Any, eps: Array) -> Array:
    """v = √ᾱ_t ε - √(1-ᾱ_t) x_0  (Salimans & Ho 2022)."""
    xp, t = _checked(schedule, x0, t, eps)
    return _v_from_x0_eps(schedule, x0, t, eps, xp)


def _x0_from_v(schedule: Any, x_t: Array, t: Array, v: Array, xp: Any) -> Array:
    return (
        gather(schedule.sqrt_alphas_cumprod, t, x_t, xp=xp) * x_t
        - gather(schedule.sqrt_one_minus_alphas_cumprod, t, x_t, xp=xp) * v
    )


def x0_from_v(schedule: Any, x_t: Array, t: Any, v: Array) -> Array:
    """x_0 = √ᾱ_t x_t - √(1-ᾱ_t) v."""
    xp, t = _checked(schedule, x_t, t, v)
    return _x0_from_v(schedule, x_t, t, v, xp)


def _eps_from_v(schedule: Any, x_t: Array, t: Array, v: Array, xp: Any) -> Array:
    return (
        gather(schedule.sqrt_one_minus_alphas_cumprod, t, x_t, xp=xp) * x_t
        + gather(schedule.sqrt_alphas_cumprod, t, x_t, xp=xp) * v
    )


def eps_from_v(schedule: Any, x_t: Array, t: Any, v: Array) -> Array:
    """ε = √(1-ᾱ_t) x_t + √ᾱ_t v."""
    xp, t = _checked(schedule, x_t, t, v)
    return _eps_from_v(schedule, x_t, t, v, xp)


def _check_recoverable(schedule: Any, t: Array, xp: Any, what: str) -> None:
    """ε (alone) cannot give x_0 where ᾱ_t = 0 (zero terminal SNR at the last step)."""
    if schedule.zero_terminal_snr and t.shape[0] and int(xp.max(t)) == schedule.num_timesteps - 1:
        raise ValueError(
            f"x_0 cannot be recovered from a {what} prediction at the last step of a zero-terminal-SNR "
            "schedule (ᾱ_T = 0); use the 'v' or 'x0' prediction with zero terminal SNR"
        )


def split_model_output(
    model_output: Array, x_t: Array, variance: Variance | str
) -> tuple[Array, Array | None]:
    """Split the denoiser output into (mean channels, variance channels or None).

    A learned variance needs 2C output channels for C data channels (the second half is the
    variance), a fixed one exactly C; anything else is a ``ValueError``.
    """
    variance = _enum(Variance, variance)
    if model_output.ndim != x_t.ndim or model_output.shape[0] != x_t.shape[0]:
        raise ValueError(
            f"model output of shape {tuple(model_output.shape)} does not match x_t {tuple(x_t.shape)}"
        )
    if model_output.ndim < 2:
        if variance.learned:
            raise ValueError("a learned variance needs a channel axis to hold 2C outputs")
        return model_output, None
    c = x_t.shape[1]
    want = 2 * c if variance.learned else c
    if model_output.shape[1] != want or tuple(model_output.shape[2:]) != tuple(x_t.shape[2:]):
        raise ValueError(
            f"variance type {variance.value!r} needs {want} output channels for {c} data channels "
            f"(shape {(x_t.shape[0], want, *x_t.shape[2:])}), got {tuple(model_output.shape)}"
        )
    if not variance.learned:
        return model_output, None
    return model_output[:, :c, ...], model_output[:, c:, ...]


class PMeanVariance(NamedTuple):
    """p_θ(x_{t-1} | x_t) and the predictions it came from.

    ``variance`` and ``log_variance`` broadcast against ``mean``: shape [B, 1, …, 1] for the fixed
    variance types (no per-element work), the full shape for learned ones. ``pred_eps`` is None
    only when the caller asked not to compute it (inside the DDPM sampler).
    """

    mean: Array
    variance: Array
    log_variance: Array
    pred_x0: Array
    pred_eps: Array | None


def p_mean_variance(
    schedule: Any,
    model_output: Array,
    x_t: Array,
    t: Any,
    *,
    prediction: Prediction | str = Prediction.EPSILON,
    variance: Variance | str = Variance.FIXED_SMALL,
    clip_denoised: bool = False,
    data_range: tuple[float, float] = (-1.0, 1.0),
) -> PMeanVariance:
    """Mean and variance of p_θ(x_{t-1} | x_t) from the denoiser's output.

    The mean is the posterior mean μ̃_t(x_t, x̂_0) with x̂_0 the model's prediction of x_0 (converted
    from ε or v as needed, optionally clipped to ``data_range``): with the true x_0 or the true ε it
    equals the posterior mean of :func:`q_posterior_mean_variance` (Ho et al. eq. 11). The
    variance follows ``variance``:

    - ``fixed_small``: β̃_t (log clipped at t = 0),
    - ``fixed_large``: [β̃_1, β_2, …, β_T],
    - ``learned``: exp of the model's log σ² channels,
    - ``learned_range``: exp(v log β_t + (1 - v) log β̃_t), v = (out + 1)/2 (Nichol & Dhariwal eq. 15).
    """
    prediction = _enum(Prediction, prediction)
    variance = _enum(Variance, variance)
    xp = get_namespace(model_output, x_t)
    if model_output.dtype != x_t.dtype:
        raise TypeError(f"model output dtype {model_output.dtype} differs from x_t's {x_t.dtype}")
    t = as_batch_timesteps(t, schedule.num_timesteps, x_t.shape[0], xp, device(x_t))
    return _p_mean_variance(
        schedule, model_output, x_t, t, prediction, variance, clip_denoised, data_range, xp
    )


def _p_mean_variance(
    schedule: Any,
    model_output: Array,
    x_t: Array,
    t: Array,
    prediction: Prediction,
    variance: Variance,
    clip_denoised: bool,
    data_range: tuple[float, float],
    xp: Any,
    want_eps: bool = True,
) -> PMeanVariance:
    """:func:`p_mean_variance` for checked inputs; ``want_eps=False`` skips ε̂ where not free."""
    out, var_out = split_model_output(model_output, x_t, variance)
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
        min_log = gather(schedule.posterior_log_variance_clipped, t, x_t, xp=xp)
        max_log = gather(schedule.log_betas, t, x_t, xp=xp)
        frac = (var_out + 1.0) / 2.0
        log_var = frac * max_log + (1.0 - frac) * min_log
        var = xp.exp(log_var)

    pred_eps = None
    if prediction is Prediction.EPSILON:
        _check_recoverable(schedule, t, xp, "ε")
        pred_eps = out
        pred_x0 = _x0_from_eps(schedule, x_t, t, out, xp)
    elif prediction is Prediction.X0:
        pred_x0 = out
    else:
        pred_x0 = _x0_from_v(schedule, x_t, t, out, xp)
        pred_eps = _eps_from_v(schedule, x_t, t, out, xp) if want_eps else None
    if clip_denoised:
        lo, hi = data_range
        pred_x0 = xp.clip(pred_x0, lo, hi)
        pred_eps = None  # recomputed from the clipped x_0 below, so that the pair is consistent
    if pred_eps is None and want_eps:
        pred_eps = _eps_from_x0(schedule, x_t, t, pred_x0, xp)
    mean = _posterior_mean(schedule, pred_x0, x_t, t, xp)
    return PMeanVariance(mean, var, log_var, pred_x0, pred_eps)
