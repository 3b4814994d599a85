"""The reverse process p_θ(x_{t-1} | x_t): what the denoiser predicts and the Gaussian it implies.

The denoiser's output is interpreted through two enums: :class:`Prediction` (what the mean
channels predict: ε, x_0 or v) and :class:`Variance` (how the variance is chosen: fixed small β̃,
fixed large β, learned log σ², or improved DDPM's learned interpolation).
"""

from __future__ import annotations

from typing import Any

from array_api_compat import device

from . import _formulas as f
from ._array import Array, as_batch_timesteps, get_namespace, max_timestep
from ._enums import DEFAULT_CLIP_DENOISED, Prediction, Variance
from ._formulas import PMeanVariance

__all__ = [
    "ZERO_TERMINAL_SNR_ERROR",
    "PMeanVariance",
    "Prediction",
    "Variance",
    "check_denoiser_output",
    "check_model_output",
    "check_zero_terminal_snr",
    "eps_from_v",
    "eps_from_x0",
    "p_mean_variance",
    "split_model_output",
    "v_from_x0_eps",
    "x0_from_eps",
    "x0_from_v",
]


def _checked(schedule: Any, a: Array, t: Any, b: Array) -> tuple[Any, Array]:
    xp = get_namespace(a, b)
    if tuple(a.shape) != tuple(b.shape):
        raise ValueError(f"shape mismatch: {tuple(a.shape)} vs {tuple(b.shape)}")
    return xp, as_batch_timesteps(t, schedule.num_timesteps, a.shape[0], xp, device(a))


def x0_from_eps(schedule: Any, x_t: Array, t: Any, eps: Array) -> Array:
    """x_0 = (x_t - √(1-ᾱ_t) ε) / √ᾱ_t = √(1/ᾱ_t) x_t - √(1/ᾱ_t - 1) ε.

    Parameters
    ----------
    schedule : Schedule
        The diffusion schedule; its float64 tables are gathered at ``t``.
    x_t : array [B, ...]
        The noised data at index t, real floating.
    t : int, Timesteps or integer array [B]
        Timestep indices in [0, T-1], one per example; an int is used for every example.
    eps : array [B, ...]
        The noise ε (or its prediction), of ``x_t``'s shape, dtype and backend.

    Returns
    -------
    array [B, ...]
        x_0, like ``x_t``. At the last step of a zero-terminal-SNR schedule (ᾱ = 0) x_0 cannot be
        recovered from ε: ``ValueError``.
    """
    xp, tt = _checked(schedule, x_t, t, eps)
    _check_recoverable(schedule, max_timestep(t, tt, xp), Prediction.EPSILON)
    return f.x0_from_eps(schedule, x_t, tt, eps, xp)


def eps_from_x0(schedule: Any, x_t: Array, t: Any, x0: Array) -> Array:
    """ε = (x_t - √ᾱ_t x_0) / √(1-ᾱ_t).

    Parameters
    ----------
    schedule : Schedule
        The diffusion schedule; its float64 tables are gathered at ``t``.
    x_t : array [B, ...]
        The noised data at index t, real floating.
    t : int, Timesteps or integer array [B]
        Timestep indices in [0, T-1], one per example; an int is used for every example.
    x0 : array [B, ...]
        The data x_0 (or its prediction), of ``x_t``'s shape, dtype and backend.

    Returns
    -------
    array [B, ...]
        ε, like ``x_t``.
    """
    xp, t = _checked(schedule, x_t, t, x0)
    return f.eps_from_x0(schedule, x_t, t, x0, xp)


def v_from_x0_eps(schedule: Any, x0: Array, t: Any, eps: Array) -> Array:
    """v = √ᾱ_t ε - √(1-ᾱ_t) x_0  (Salimans & Ho 2022).

    Parameters
    ----------
    schedule : Schedule
        The diffusion schedule; its float64 tables are gathered at ``t``.
    x0 : array [B, ...]
        The data x_0, real floating.
    t : int, Timesteps or integer array [B]
        Timestep indices in [0, T-1], one per example; an int is used for every example.
    eps : array [B, ...]
        The noise ε, of ``x0``'s shape, dtype and backend.

    Returns
    -------
    array [B, ...]
        The velocity v, like ``x0``.
    """
    xp, t = _checked(schedule, x0, t, eps)
    return f.v_from_x0_eps(schedule, x0, t, eps, xp)


def x0_from_v(schedule: Any, x_t: Array, t: Any, v: Array) -> Array:
    """x_0 = √ᾱ_t x_t - √(1-ᾱ_t) v.

    Parameters
    ----------
    schedule : Schedule
        The diffusion schedule; its float64 tables are gathered at ``t``.
    x_t : array [B, ...]
        The noised data at index t, real floating.
    t : int, Timesteps or integer array [B]
        Timestep indices in [0, T-1], one per example; an int is used for every example.
    v : array [B, ...]
        The velocity v (or its prediction), of ``x_t``'s shape, dtype and backend.

    Returns
    -------
    array [B, ...]
        x_0, like ``x_t``.
    """
    xp, t = _checked(schedule, x_t, t, v)
    return f.x0_from_v(schedule, x_t, t, v, xp)


def eps_from_v(schedule: Any, x_t: Array, t: Any, v: Array) -> Array:
    """ε = √(1-ᾱ_t) x_t + √ᾱ_t v.

    Parameters
    ----------
    schedule : Schedule
        The diffusion schedule; its float64 tables are gathered at ``t``.
    x_t : array [B, ...]
        The noised data at index t, real floating.
    t : int, Timesteps or integer array [B]
        Timestep indices in [0, T-1], one per example; an int is used for every example.
    v : array [B, ...]
        The velocity v (or its prediction), of ``x_t``'s shape, dtype and backend.

    Returns
    -------
    array [B, ...]
        ε, like ``x_t``.
    """
    xp, t = _checked(schedule, x_t, t, v)
    return f.eps_from_v(schedule, x_t, t, v, xp)


#: The one wording of the error: ε (alone) cannot give x_0 where ᾱ = 0.
ZERO_TERMINAL_SNR_ERROR = (
    "an ε-prediction cannot recover x_0 at the last step of a zero-terminal-SNR schedule "
    "(ᾱ_T = 0): x̂_0 = (x - √(1-ᾱ) ε̂)/√ᾱ is undefined there; use the 'v' or 'x0' prediction "
    "with zero terminal SNR"
)


def check_zero_terminal_snr(zero_terminal_snr: bool, prediction: Prediction) -> None:
    """A ``ValueError`` (:data:`ZERO_TERMINAL_SNR_ERROR`) when a schedule with zero terminal SNR
    meets an ε-prediction: the settings, the samplers and the bound all refuse it this way."""
    if zero_terminal_snr and Prediction.parse(prediction) is Prediction.EPSILON:
        raise ValueError(ZERO_TERMINAL_SNR_ERROR)


def _check_recoverable(schedule: Any, t_max: int, prediction: Prediction) -> None:
    """Zero terminal SNR with ε is refused only where the last step is asked for."""
    check_zero_terminal_snr(
        schedule.zero_terminal_snr and t_max == schedule.num_timesteps - 1, prediction
    )


def split_model_output(
    model_output: Array, x_t: Array, variance: Variance | str
) -> tuple[Array, Array | None]:
    """Split the denoiser output into (mean channels, variance channels or None).

    A learned variance needs 2C output channels for C data channels (the second half is the
    variance), a fixed one exactly C; anything else is a ``ValueError``.
    """
    variance = Variance.parse(variance)
    check_model_output(model_output, x_t, variance)
    return f.split_channels(model_output, x_t.shape[1] if x_t.ndim > 1 else 0, variance)


def check_model_output(model_output: Array, x_t: Array, variance: Variance) -> None:
    """Raise ``ValueError`` unless ``model_output`` has the shape ``variance`` implies for ``x_t``:
    [B, C, ...] for a fixed variance, [B, 2C, ...] for a learned one."""
    if model_output.ndim != x_t.ndim or model_output.shape[0] != x_t.shape[0]:
        raise ValueError(
            f"model output of shape {tuple(model_output.shape)} does not match x_t {tuple(x_t.shape)}"
        )
    if model_output.ndim < 2:
        if variance.learned:
            raise ValueError("a learned variance needs a channel axis to hold 2C outputs")
        return
    c = x_t.shape[1]
    want = 2 * c if variance.learned else c
    if model_output.shape[1] != want or tuple(model_output.shape[2:]) != tuple(x_t.shape[2:]):
        raise ValueError(
            f"variance type {variance.value!r} needs {want} output channels for {c} data channels "
            f"(shape {(x_t.shape[0], want, *x_t.shape[2:])}), got {tuple(model_output.shape)}"
        )


def check_denoiser_output(model_output: Any, x_t: Array, variance: Variance) -> Array:
    """A denoiser's output, checked: an array of ``x_t``'s type and dtype (no silent casts) with
    the channels ``variance`` implies (:func:`check_model_output`)."""
    if type(model_output) is not type(x_t):
        raise TypeError(
            f"the denoiser returned {type(model_output).__name__}, expected {type(x_t).__name__} "
            "like x_t"
        )
    if model_output.dtype != x_t.dtype:
        raise TypeError(
            f"the denoiser returned dtype {model_output.dtype}, expected {x_t.dtype} like x_t"
        )
    check_model_output(model_output, x_t, variance)
    return model_output


def p_mean_variance(
    schedule: Any,
    model_output: Array,
    x_t: Array,
    t: Any,
    *,
    prediction: Prediction | str = Prediction.EPSILON,
    variance: Variance | str = Variance.FIXED_SMALL,
    clip_denoised: bool = DEFAULT_CLIP_DENOISED,
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

    Parameters
    ----------
    schedule : Schedule
        The diffusion schedule; its float64 tables are gathered at ``t``.
    model_output : array [B, C, ...] or [B, 2C, ...]
        The denoiser's output at (x_t, t): C channels for a fixed variance, 2C for a learned one
        (the mean channels first, then the variance channels); of ``x_t``'s backend and dtype.
    x_t : array [B, C, ...]
        The noised data at index t, real floating.
    t : int, Timesteps or integer array [B]
        Timestep indices in [0, T-1], one per example; an int is used for every example.
    prediction : Prediction or str
        What the mean channels predict: ``"epsilon"``, ``"x0"`` or ``"v"``.
    variance : Variance or str
        ``"fixed_small"``, ``"fixed_large"``, ``"learned"`` or ``"learned_range"``.
    clip_denoised : bool
        Clip x̂_0 to ``data_range`` before forming the mean.
    data_range : (float, float)
        The data's (low, high), for clipping.

    Returns
    -------
    PMeanVariance
        The mean [B, C, ...], variance and log-variance ([B, 1, ..., 1] for a fixed variance,
        [B, C, ...] for a learned one), x̂_0 and ε̂, of ``x_t``'s backend, dtype and device.
    """
    prediction = Prediction.parse(prediction)
    variance = Variance.parse(variance)
    xp = get_namespace(model_output, x_t)
    if model_output.dtype != x_t.dtype:
        raise TypeError(f"model output dtype {model_output.dtype} differs from x_t's {x_t.dtype}")
    tt = as_batch_timesteps(t, schedule.num_timesteps, x_t.shape[0], xp, device(x_t))
    check_model_output(model_output, x_t, variance)
    if prediction is Prediction.EPSILON:
        _check_recoverable(schedule, max_timestep(t, tt, xp), prediction)
    out, var_out = f.split_channels(model_output, x_t.shape[1] if x_t.ndim > 1 else 0, variance)
    return f.p_mean_variance(
        schedule, out, var_out, x_t, tt, prediction, variance, clip_denoised, data_range, xp
    )
