"""Counter-based Gaussian noise: the same bits on every backend and device.

The array API has no random number generator, and a sample must not depend on the batch it was
drawn in nor on how the work was split over processes or devices. refdiff therefore draws noise
from Philox4x32-10 (Salmon et al., "Parallel random numbers: as easy as 1, 2, 3", SC 2011), a
counter-based generator: every value is a pure function of

    key     = the 64-bit seed,
    counter = (element quad, step, sample index low 32 bits, sample index high 32 bits),

so noise(seed, sample i, step k) is identical whether sample i is drawn alone, in a batch of 64,
on NumPy, on PyTorch or on a GPU. Each 128-bit Philox output gives four uniforms in (0, 1), turned
into four standard normals by the Box-Muller transform in float64 and cast to the requested dtype
at the end.

The integer arithmetic runs in int64 holding 32-bit values, with the 32x32-bit products split into
16-bit halves, so it needs nothing beyond the array API's integer operations.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from ._array import Array, as_namespace
from ._checks import check_int

__all__ = ["PRIOR_STEP", "check_seed", "philox4x32", "standard_normal", "uniform_open"]

_M32 = 0xFFFFFFFF
_M16 = 0xFFFF
_PHILOX_M0 = 0xD2511F53
_PHILOX_M1 = 0xCD9E8D57
_PHILOX_W0 = 0x9E3779B9
_PHILOX_W1 = 0xBB67AE85

#: The step counter used for the initial noise x_T of a sampler (no timestep index reaches it).
PRIOR_STEP = _M32


def _mulhilo32(a: int, b: Array, xp: Any) -> tuple[Array, Array]:
    """(high, low) 32-bit halves of ``a * b`` for a 32-bit constant ``a`` and 32-bit values ``b``."""
    lo16 = xp.bitwise_and(b, _M16) * a  # < 2**48
    hi16 = xp.bitwise_right_shift(b, 16) * a  # < 2**48
    low = xp.bitwise_and(lo16 + xp.bitwise_left_shift(xp.bitwise_and(hi16, _M16), 16), _M32)
    high = xp.bitwise_right_shift(hi16 + xp.bitwise_right_shift(lo16, 16), 16)
    return high, low


def philox4x32(
    counter: Sequence[Array], key: tuple[int, int], xp: Any, rounds: int = 10
) -> tuple[Array, Array, Array, Array]:
    """Philox4x32 with ``rounds`` rounds on int64 arrays holding unsigned 32-bit values.

    ``counter`` is four broadcastable integer arrays (each in [0, 2**32)), ``key`` two ints.
    Returns the four output words as int64 arrays.
    """
    xp = as_namespace(xp)
    c0, c1, c2, c3 = counter
    k0, k1 = key[0] & _M32, key[1] & _M32
    for r in range(rounds):
        if r:
            k0, k1 = (k0 + _PHILOX_W0) & _M32, (k1 + _PHILOX_W1) & _M32
        hi0, lo0 = _mulhilo32(_PHILOX_M0, c0, xp)
        hi1, lo1 = _mulhilo32(_PHILOX_M1, c2, xp)
        c0, c1, c2, c3 = (
            xp.bitwise_xor(xp.bitwise_xor(hi1, c1), k0),
            lo1,
            xp.bitwise_xor(xp.bitwise_xor(hi0, c3), k1),
            lo0,
        )
    return c0, c1, c2, c3


def check_seed(seed: int) -> int:
    """``seed`` as an int if it is a 64-bit Philox key: an integer in [0, 2**64 - 1]."""
    return check_int(seed, "seed", minimum=0, maximum=2**64 - 1)


def uniform_open(
    seed: int,
    sample_indices: Array,
    step: Array,  # one int, or an integer array [B] (Array is Any: int | Array could not narrow)
    per_sample: int,
    xp: Any,
    device: Any = None,
) -> Array:
    """float64 uniforms in the open interval (0, 1), shape ``[B, per_sample]``.

    Value j of sample ``sample_indices[b]`` at ``step`` depends on (seed, sample index, step, j)
    alone. ``step`` is one int, or an integer array [B] of each sample's own step (the
    Monte-Carlo bound draws each image at its own timestep). ``per_sample`` is rounded up to a
    multiple of 4 internally (one Philox call per four).
    """
    seed = check_seed(seed)
    xp = as_namespace(xp)
    per_sample_steps = getattr(step, "ndim", 0) == 1  # an array [B]; else one int for all
    if per_sample_steps:
        if not xp.isdtype(step.dtype, "integral") or tuple(step.shape) != tuple(
            sample_indices.shape
        ):
            raise ValueError(
                f"step must be an int or an integer array of shape {tuple(sample_indices.shape)}"
                f", got {step.dtype} {tuple(step.shape)}"
            )
        if step.shape[0] and not (0 <= int(xp.min(step)) and int(xp.max(step)) <= _M32):
            raise ValueError(f"steps must be in [0, 2**32), got [{xp.min(step)}, {xp.max(step)}]")
    else:
        step = check_int(step, "step", minimum=0, maximum=_M32)
    if not hasattr(sample_indices, "dtype") or not xp.isdtype(sample_indices.dtype, "integral"):
        got = getattr(sample_indices, "dtype", type(sample_indices).__name__)
        raise TypeError(
            f"sample_indices must be an integer array (a sample's noise depends on its index; "
            f"a fraction would silently select another sample's noise), got {got}"
        )
    idx = xp.astype(sample_indices, xp.int64)
    if idx.ndim != 1:
        raise ValueError(f"sample_indices must be 1-D, got shape {tuple(idx.shape)}")
    n_quads = -(-per_sample // 4)
    quad = xp.reshape(xp.arange(n_quads, dtype=xp.int64, device=device), (1, n_quads))
    idx = xp.reshape(idx, (idx.shape[0], 1))
    zero = xp.zeros((idx.shape[0], n_quads), dtype=xp.int64, device=device)
    c0 = quad + zero
    c1 = zero + (xp.reshape(xp.astype(step, xp.int64), (-1, 1)) if per_sample_steps else int(step))
    c2 = xp.bitwise_and(idx, _M32) + zero
    c3 = xp.bitwise_right_shift(idx, 32) + zero
    words = philox4x32((c0, c1, c2, c3), (seed & _M32, seed >> 32), xp)
    u = xp.stack(words, axis=-1)  # [B, n_quads, 4]
    u = (xp.astype(u, xp.float64) + 0.5) * (1.0 / 2**32)
    return xp.reshape(u, (idx.shape[0], 4 * n_quads))[:, :per_sample]


def standard_normal(
    seed: int,
    sample_indices: Array,
    step: int | Array,
    shape: Sequence[int],
    *,
    xp: Any,
    dtype: Any = None,
    device: Any = None,
) -> Array:
    """Standard normal noise of shape ``[B, *shape]``, a pure function of (seed, sample, step).

    Parameters
    ----------
    seed : int
        The 64-bit Philox key.
    sample_indices : integer array [B]
        Global index of each sample (so shards of a big run draw that run's noise).
    step : int or integer array [B]
        The sampler step (the timestep index, or :data:`PRIOR_STEP` for x_T), or each sample's
        own step.
    shape : tuple of int
        Shape of one sample, e.g. (C, H, W).
    xp, dtype, device
        Backend namespace (``numpy``, ``torch``, ... or their ``array_api_compat`` wrappers; see
        :func:`refdiff._array.as_namespace`), output dtype (default float64) and device.

    Returns
    -------
    array
        ``[B, *shape]`` N(0, 1) draws (Box–Muller in float64 on Philox uniforms), of ``xp`` on
        ``device``.
    """
    xp = as_namespace(xp)
    d = math.prod(shape)
    n = -(-d // 2) * 2
    u = uniform_open(seed, sample_indices, step, n, xp, device)
    u1, u2 = u[:, 0::2], u[:, 1::2]
    r = xp.sqrt(-2.0 * xp.log(u1))
    theta = (2.0 * math.pi) * u2
    z = xp.stack((r * xp.cos(theta), r * xp.sin(theta)), axis=-1)
    z = xp.reshape(z, (u.shape[0], n))[:, :d]
    z = xp.reshape(z, (u.shape[0], *shape))
    return z if dtype is None else xp.astype(z, dtype)
