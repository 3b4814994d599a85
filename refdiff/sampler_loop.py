"""What every sampler's loop shares: the array namespace, dtype and device of the samples, the
counter-based noise, the map to the model's timesteps, and a watch that names the step at which
the samples stopped being finite.

The ancestral samplers (:mod:`refdiff.samplers`) and the ODE and multistep solvers
(:mod:`refdiff.solvers`) both start from a :class:`SamplerRun`, so the rules below hold for all of
them:

- the prior noise x_T and every later draw come from :func:`refdiff.noise.standard_normal`: a
  sample is a function of (seed, sample index) only, whatever the batch or the shard;
- a given ``x_T`` sets the namespace, dtype and device (an explicit setting that contradicts it
  is an error, never a silent cast or copy);
- the finiteness of the state is tracked on the device and read back once, at the end.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ._array import Array, as_namespace, get_namespace
from ._checks import check_int
from .noise import PRIOR_STEP, check_seed, standard_normal

__all__ = ["Callback", "FiniteWatch", "SamplerRun"]

Callback = Callable[[int, int, Array, Array], None]
"""``callback(i, t, x, pred_x0)`` after step i (0-based) at index t with the new x."""


class SamplerRun:
    """A sampler's loop state: the namespace ``xp``, batch size ``B``, ``dtype``, ``device``,
    sample indices ``idx``, the ``noise(step, shape)`` function, the starting state ``x``, and
    ``watch`` / ``finish`` (:class:`FiniteWatch`) over ``num_steps`` steps.

    ``xp`` may be a plain module (``numpy``, ``torch``): it is taken as its array_api_compat
    namespace (:func:`refdiff._array.as_namespace`). A custom ``noise(step, shape)`` is called
    with ``step`` = :data:`refdiff.noise.PRIOR_STEP` (2**32 - 1) for x_T, then with the
    sampling schedule's index of each step that draws noise.
    """

    def __init__(
        self,
        num_steps: int,
        shape: tuple[int, ...],
        xp: Any = None,
        dtype: Any = None,
        device: Any = None,
        seed: int = 0,
        sample_indices: Array | None = None,
        noise: Callable[[int, tuple[int, ...]], Array] | None = None,
        x_T: Array | None = None,
    ) -> None:
        if len(shape) < 2:
            raise ValueError(
                f"shape must be [B, ...] with at least one data axis, got {tuple(shape)}"
            )
        B = check_int(shape[0], "the batch size shape[0]", minimum=1)
        check_seed(seed)
        if noise is not None and not callable(noise):
            raise TypeError(f"noise must be a callable noise(step, shape), got {noise!r}")
        xp = as_namespace(xp)
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
        self.watch = FiniteWatch(num_steps, xp, device)
        self.finish = self.watch.finish

    def full(self, t_int: int) -> Array:
        """The timestep index ``t_int`` for every sample."""
        return self.xp.full((self.B,), t_int, dtype=self.xp.int64, device=self.device)


class FiniteWatch:
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


def _follow(
    x_T: Array, shape: tuple[int, ...], xp: Any, dtype: Any, device: Any
) -> tuple[Any, Any, Any]:
    """The namespace, dtype and device of a given x_T (a conflicting explicit one is an error)."""
    from array_api_compat import device as device_of

    xt_ns = get_namespace(x_T)
    if xp is not None and xp.__name__ != xt_ns.__name__:
        raise TypeError(
            f"x_T is a {xt_ns.__name__} array but xp is {xp.__name__}: pass xp of x_T's library "
            "or leave xp out (x_T sets it)"
        )
    if tuple(x_T.shape) != tuple(shape):
        raise ValueError(f"x_T has shape {tuple(x_T.shape)}, expected {tuple(shape)}")
    if dtype is not None and dtype != x_T.dtype:
        raise TypeError(f"x_T has dtype {x_T.dtype} but dtype={dtype} was asked for")
    if device is not None and device != device_of(x_T):
        raise ValueError(f"x_T lives on {device_of(x_T)} but device={device} was asked for")
    return xt_ns, x_T.dtype, device_of(x_T)
