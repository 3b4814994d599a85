"""The variational bound and the training losses, in nats inside and bits/dim at the edge.

L = L_T + Σ_{t>1} L_{t-1} + L_0  (Ho et al. eq. 5), with

- L_T = KL(q(x_T | x_0) ‖ N(0, I)): :func:`prior_kl`;
- L_{t-1} = KL(q(x_{t-1} | x_t, x_0) ‖ p_θ(x_{t-1} | x_t)): :func:`vb_term` for index t > 0;
- L_0 = -log p_θ(x_0 | x_1): :func:`vb_term` at index 0, through
  :func:`discretized_gaussian_log_likelihood` (8-bit data) or
  :func:`continuous_gaussian_log_likelihood` (real-valued data).

bits/dim = nats / (D · ln 2), D the number of dimensions of one example.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

from array_api_compat import device

from . import _formulas as f
from ._array import Array, as_batch_timesteps, gather, get_namespace, stop_gradient
from ._checks import check_int
from ._enums import DEFAULT_CLIP_DENOISED, Decoder, LossType, Prediction, Variance
from ._formulas import LN2, VBTerm
from .reverse import check_model_output

__all__ = [
    "LN2",
    "Decoder",
    "LossTerms",
    "LossType",
    "VBTerm",
    "check_data_range",
    "check_num_bins",
    "continuous_gaussian_log_likelihood",
    "discretized_gaussian_log_likelihood",
    "mean_flat",
    "normal_kl",
    "prior_kl",
    "sum_flat",
    "training_losses",
    "vb_term",
]


def sum_flat(x: Array, xp: Any | None = None) -> Array:
    """Sum over every axis but the first (the batch).

    Parameters
    ----------
    x : array [B, ...]
        Any array of an array-API backend.
    xp : namespace, optional
        ``x``'s namespace, when the caller already has it.

    Returns
    -------
    array [B]
        The per-example sums, of ``x``'s backend and dtype.
    """
    return f.sum_flat(x, get_namespace(x) if xp is None else xp)


def mean_flat(x: Array, xp: Any | None = None) -> Array:
    """Mean over every axis but the first (the batch).

    Parameters
    ----------
    x : array [B, ...]
        Any array of an array-API backend.
    xp : namespace, optional
        ``x``'s namespace, when the caller already has it.

    Returns
    -------
    array [B]
        The per-example means, of ``x``'s backend and dtype.
    """
    return f.mean_flat(x, get_namespace(x) if xp is None else xp)


def normal_kl(mean1: Array, logvar1: Array, mean2: Array, logvar2: Array) -> Array:
    """KL(N(mean1, e^{logvar1}) ‖ N(mean2, e^{logvar2})) elementwise, in nats.

    KL = ½ (-1 + logvar2 - logvar1 + e^{logvar1 - logvar2} + (mean1 - mean2)² e^{-logvar2}),
    evaluated as ½ (expm1(d) - d + (mean1 - mean2)² e^{-logvar2}) with d = logvar1 - logvar2, which is
    exactly 0 at equality and keeps full precision for nearly equal distributions.

    Parameters
    ----------
    mean1, logvar1 : array
        Mean and log-variance of the first Gaussian.
    mean2, logvar2 : array
        Mean and log-variance of the second; all four broadcast together, of one backend.

    Returns
    -------
    array
        The KL divergence in nats, elementwise, of the broadcast shape.
    """
    return f.normal_kl(
        mean1, logvar1, mean2, logvar2, get_namespace(mean1, logvar1, mean2, logvar2)
    )


def discretized_gaussian_log_likelihood(
    x: Array,
    *,
    means: Array,
    log_scales: Array,
    num_bins: int = 256,
    data_range: tuple[float, float] = (-1.0, 1.0),
) -> Array:
    """log p(x) for data on ``num_bins`` evenly spaced levels of ``data_range`` under a
    discretized Gaussian.

    The levels are lo, lo + 2δ, …, hi with δ = (hi - lo) / (2 (num_bins - 1)) (for 8-bit images in
    [-1, 1], δ = 1/255). Each level x owns the bin [x - δ, x + δ]; the outer bins are open,
    (-∞, lo + δ] and [hi - δ, ∞), so the probabilities of the ``num_bins`` levels sum to 1. The log
    of each bin's mass log(Φ(b) - Φ(a)) is computed in log space from ``log_ndtr`` of whichever
    tail is smaller (mirroring a bin above the mean), never through a tanh approximation or a
    clamp.

    Parameters
    ----------
    x : array [B, ...]
        Data on the grid of levels.
    means, log_scales : array [B, ...]
        The Gaussian's mean and log standard deviation.
    num_bins : int
        Number of levels (256 for 8-bit data).
    data_range : (lo, hi)
        The first and last level.

    Returns
    -------
    array [B, ...]
        log-likelihood in nats, elementwise.
    """
    xp = get_namespace(x, means, log_scales)
    if not (tuple(x.shape) == tuple(means.shape) == tuple(log_scales.shape)):
        raise ValueError(
            f"shapes differ: x {tuple(x.shape)}, means {tuple(means.shape)}, log_scales {tuple(log_scales.shape)}"
        )
    num_bins = check_num_bins(num_bins)
    data_range = check_data_range(data_range)
    return f.discretized_gaussian_log_likelihood(x, means, log_scales, num_bins, data_range, xp)


def check_num_bins(num_bins: Any) -> int:
    """``num_bins`` as an int >= 2, or a ``ValueError`` naming it."""
    return check_int(num_bins, "num_bins", minimum=2)


def check_data_range(data_range: Any) -> tuple[float, float]:
    """``data_range`` as finite floats (lo, hi) with lo < hi, or a ``ValueError`` naming it."""
    try:
        lo, hi = (float(v) for v in data_range)
    except (TypeError, ValueError):
        raise ValueError(f"data_range must be (lo, hi) with lo < hi, got {data_range!r}") from None
    if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
        raise ValueError(f"data_range must be (lo, hi) with lo < hi, got {data_range!r}")
    return lo, hi


def continuous_gaussian_log_likelihood(x: Array, *, means: Array, log_scales: Array) -> Array:
    """log N(x; mean, e^{2 log_scale}) elementwise, in nats (for real-valued data).

    Parameters
    ----------
    x : array [B, ...]
        The data.
    means, log_scales : array [B, ...]
        The Gaussian's mean and log standard deviation, of ``x``'s backend.

    Returns
    -------
    array [B, ...]
        The log-density in nats, elementwise.
    """
    return f.continuous_gaussian_log_likelihood(
        x, means, log_scales, get_namespace(x, means, log_scales)
    )


def prior_kl(schedule: Any, x_start: Array) -> Array:
    """L_T = KL(q(x_T | x_0) ‖ N(0, I)) per example, summed over dimensions, in nats.

    Zero under zero terminal SNR; not a function of any model parameter.

    Parameters
    ----------
    schedule : Schedule
        The diffusion schedule.
    x_start : array [B, ...]
        Data x_0, real floating.

    Returns
    -------
    array [B]
        L_T in nats per example, of ``x_start``'s backend and dtype.
    """
    xp = get_namespace(x_start)
    t = xp.full(
        (x_start.shape[0],), schedule.num_timesteps - 1, dtype=xp.int64, device=device(x_start)
    )
    mean = gather(schedule.sqrt_alphas_cumprod, t, x_start, xp=xp) * x_start
    log_var = xp.broadcast_to(
        gather(schedule.log_one_minus_alphas_cumprod, t, x_start, xp=xp), x_start.shape
    )
    zero = xp.zeros_like(x_start)
    return f.sum_flat(f.normal_kl(mean, log_var, zero, zero, xp), xp)


def vb_term(
    schedule: Any,
    model_output: Array,
    x_start: Array,
    x_t: Array,
    t: Any,
    *,
    prediction: Prediction | str = Prediction.EPSILON,
    variance: Variance | str = Variance.FIXED_SMALL,
    decoder: Decoder | str = Decoder.DISCRETIZED,
    clip_denoised: bool = DEFAULT_CLIP_DENOISED,
    data_range: tuple[float, float] = (-1.0, 1.0),
    num_bins: int = 256,
) -> VBTerm:
    """L_{t-1} for each example: the Gaussian KL for index t > 0, the decoder NLL at index 0.

    Parameters
    ----------
    schedule : Schedule
        The diffusion schedule.
    model_output : array [B, C, ...] or [B, 2C, ...]
        The denoiser's output at (x_t, t): 2C channels for a learned variance, C otherwise.
    x_start : array [B, C, ...]
        Data x_0, real floating.
    x_t : array [B, C, ...]
        x_0 noised to index t, of ``x_start``'s shape, dtype and backend.
    t : int, Timesteps or integer array [B]
        Timestep indices in [0, T-1], one per example; an int is used for every example.
    prediction : Prediction or str
        What the mean channels predict: ``"epsilon"``, ``"x0"`` or ``"v"``.
    variance : Variance or str
        ``"fixed_small"``, ``"fixed_large"``, ``"learned"`` or ``"learned_range"``.
    decoder : Decoder or str
        ``"discretized"`` (data on ``num_bins`` levels) or ``"continuous"`` (real-valued data) for
        the index-0 term.
    clip_denoised : bool
        Clip x̂_0 to ``data_range`` before forming the reverse mean.
    data_range : (float, float)
        The data's (low, high): its first and last level.
    num_bins : int
        Number of levels of the discretized decoder (256 for 8-bit data).

    Returns
    -------
    VBTerm
        ``nats`` [B]: the term in nats summed over the non-batch dimensions; ``pred_x0``
        [B, C, ...]: the model's x̂_0.
    """
    prediction = Prediction.parse(prediction)
    variance = Variance.parse(variance)
    decoder = Decoder.parse(decoder)
    xp, tt, data_range = _check_term_inputs(
        schedule, model_output, x_start, x_t, t, variance, num_bins, data_range
    )
    return f.vb_term(
        schedule,
        model_output,
        x_start,
        x_t,
        tt,
        prediction,
        variance,
        decoder,
        clip_denoised,
        data_range,
        num_bins,
        xp,
    )


def _check_term_inputs(
    schedule: Any,
    model_output: Array,
    x_start: Array,
    x_t: Array,
    t: Any,
    variance: Variance,
    num_bins: int,
    data_range: Any,
) -> tuple[Any, Array, tuple[float, float]]:
    xp = get_namespace(model_output, x_start, x_t)
    if tuple(x_start.shape) != tuple(x_t.shape):
        raise ValueError(
            f"x_start {tuple(x_start.shape)} and x_t {tuple(x_t.shape)} differ in shape"
        )
    if model_output.dtype != x_t.dtype:
        raise TypeError(f"model output dtype {model_output.dtype} differs from x_t's {x_t.dtype}")
    check_num_bins(num_bins)
    data_range = check_data_range(data_range)
    tt = as_batch_timesteps(t, schedule.num_timesteps, x_t.shape[0], xp, device(x_t))
    check_model_output(model_output, x_t, variance)
    return xp, tt, data_range


class LossTerms(NamedTuple):
    """Per-example training loss and its parts (``vb`` is None for the simple loss).

    Attributes
    ----------
    loss : array [B]
        The loss to minimise, per example.
    mse : array [B]
        Mean squared error of the prediction against its target (ε, x_0 or v).
    vb : array [B] or None
        T · L_{t-1} in bits/dim (the ``vlb`` and ``hybrid`` losses), else None.
    """

    loss: Array
    mse: Array
    vb: Array | None


def training_losses(
    schedule: Any,
    model_output: Array,
    x_start: Array,
    x_t: Array,
    t: Any,
    noise: Array,
    *,
    loss_type: LossType | str = LossType.SIMPLE,
    prediction: Prediction | str = Prediction.EPSILON,
    variance: Variance | str = Variance.FIXED_SMALL,
    decoder: Decoder | str = Decoder.DISCRETIZED,
    data_range: tuple[float, float] = (-1.0, 1.0),
    num_bins: int = 256,
    lambda_vlb: float = 0.001,
) -> LossTerms:
    """Per-example training loss for a denoiser output at (x_t, t) with x_t = q_sample(x_0, t, noise).

    - ``simple``: mean over dimensions of (target - prediction)², target ε, x_0 or v;
    - ``vlb``: T · L_{t-1} in bits/dim, an unbiased estimate of Σ_t L_{t-1} for uniform t;
    - ``hybrid``: simple + λ · T · L_{t-1} with λ = ``lambda_vlb`` and the mean channels frozen
      (stop-gradient) inside the bound term, so it trains only the variance (Nichol & Dhariwal §3.1).

    The bound term never clips x̂_0 (as improved-diffusion trains): a clipped prediction has no
    gradient where it leaves the data range. Works on any backend; on PyTorch the result carries
    autograd through ``model_output``.

    Parameters
    ----------
    schedule : Schedule
        The diffusion schedule.
    model_output : array [B, C, ...] or [B, 2C, ...]
        The denoiser's output at (x_t, t): 2C channels for a learned variance, C otherwise.
    x_start : array [B, C, ...]
        Data x_0, real floating.
    x_t : array [B, C, ...]
        ``q_sample(schedule, x_start, t, noise)``.
    t : int, Timesteps or integer array [B]
        Timestep indices in [0, T-1], one per example; an int is used for every example.
    noise : array [B, C, ...]
        The ε that made ``x_t``.
    loss_type : LossType or str
        ``"simple"``, ``"vlb"`` or ``"hybrid"``.
    prediction : Prediction or str
        What the mean channels predict: ``"epsilon"``, ``"x0"`` or ``"v"``.
    variance : Variance or str
        ``"fixed_small"``, ``"fixed_large"``, ``"learned"`` or ``"learned_range"``.
    decoder : Decoder or str
        ``"discretized"`` (data on ``num_bins`` levels) or ``"continuous"`` (real-valued data) for
        the index-0 term.
    data_range : (float, float)
        The data's (low, high): its first and last level.
    num_bins : int
        Number of levels of the discretized decoder (256 for 8-bit data).
    lambda_vlb : float
        λ, the weight of the bound term in the ``hybrid`` loss.

    Returns
    -------
    LossTerms
        ``loss``, ``mse`` and ``vb``, each [B], of ``x_t``'s backend and dtype.
    """
    loss_type = LossType.parse(loss_type)
    prediction = Prediction.parse(prediction)
    variance = Variance.parse(variance)
    decoder = Decoder.parse(decoder)
    if variance.learned and loss_type is LossType.SIMPLE:
        raise ValueError(
            f"a {variance.value!r} variance is only trained by the 'hybrid' or 'vlb' loss, not 'simple'"
        )
    xp, tt, data_range = _check_term_inputs(
        schedule, model_output, x_start, x_t, t, variance, num_bins, data_range
    )
    if tuple(noise.shape) != tuple(x_t.shape):
        raise ValueError(f"noise {tuple(noise.shape)} and x_t {tuple(x_t.shape)} differ in shape")
    get_namespace(model_output, noise)  # one backend, one device
    out, var_out = f.split_channels(model_output, x_t.shape[1] if x_t.ndim > 1 else 0, variance)
    if prediction is Prediction.EPSILON:
        target = noise
    elif prediction is Prediction.X0:
        target = x_start
    else:
        target = f.v_from_x0_eps(schedule, x_start, tt, noise, xp)
    mse = f.mean_flat((target - out) ** 2, xp)
    if loss_type is LossType.SIMPLE:
        return LossTerms(mse, mse, None)
    frozen = model_output
    if loss_type is LossType.HYBRID:
        frozen = (
            stop_gradient(out)
            if var_out is None
            else xp.concat([stop_gradient(out), var_out], axis=1)
        )
    dims = math.prod(x_start.shape[1:])
    vb = (
        f.vb_term(
            schedule,
            frozen,
            x_start,
            x_t,
            tt,
            prediction,
            variance,
            decoder,
            False,  # the training loss never clips x̂_0
            data_range,
            num_bins,
            xp,
        ).nats
        / (dims * LN2)
        * float(schedule.num_timesteps)
    )
    if loss_type is LossType.VLB:
        return LossTerms(vb, mse, vb)
    return LossTerms(mse + lambda_vlb * vb, mse, vb)
