"""Array-API helpers shared by the core: namespace and device checks, table gathering, ``log_ndtr``.

Nothing here imports torch or cupy at module level; backends are recognised through
``array_api_compat`` and their special functions are imported lazily.
"""

from __future__ import annotations

import math
import weakref
from dataclasses import dataclass
from typing import Any

import numpy as np
from array_api_compat import (
    array_namespace,
    device,
    is_array_api_obj,
    is_array_api_strict_namespace,
    is_cupy_namespace,
    is_numpy_namespace,
    is_torch_namespace,
)

from ._checks import check_int

__all__ = [
    "Timesteps",
    "as_batch_timesteps",
    "as_namespace",
    "check_same_device",
    "gather",
    "get_namespace",
    "log_ndtr",
    "max_timestep",
    "stop_gradient",
    "table_on",
    "to_host",
]

Array = Any


#: The array_api_compat wrapper of each library whose plain module a user may pass as ``xp=``.
_COMPAT = {
    "numpy": "array_api_compat.numpy",
    "torch": "array_api_compat.torch",
    "cupy": "array_api_compat.cupy",
    "dask.array": "array_api_compat.dask.array",
}


def as_namespace(xp: Any) -> Any:
    """The array namespace the core works with, for an ``xp=`` as a user gives it.

    ``None`` stays ``None``. The plain ``numpy``, ``torch`` or ``cupy`` module becomes its
    ``array_api_compat`` wrapper (``xp=np`` and ``xp=array_api_compat.numpy`` mean the same and
    give the same arrays); a wrapper, ``array_api_strict`` or any other module that makes arrays
    with ``asarray`` is taken as the namespace of its arrays. Anything else is a ``TypeError``.
    """
    if xp is None:
        return None
    name = getattr(xp, "__name__", None)
    if not isinstance(name, str) or not callable(getattr(xp, "asarray", None)):
        raise TypeError(
            "xp must be an array namespace (numpy, torch, cupy, array_api_strict or an "
            f"array_api_compat module), got {type(xp).__name__} {xp!r}"
        )
    if name in _COMPAT:
        import importlib

        return importlib.import_module(_COMPAT[name])
    if name.startswith("array_api_compat.") or name == "array_api_strict":
        return xp
    return array_namespace(xp.asarray(0))


def get_namespace(*arrays: Array) -> Any:
    """Return the common array namespace of ``arrays`` (non-arrays are ignored).

    Raises ``TypeError`` when the arrays come from different backends and ``ValueError`` when they
    live on different devices: the core never copies between backends or devices silently.
    """
    arrs = [a for a in arrays if a is not None and is_array_api_obj(a)]
    if not arrs:
        raise TypeError("expected at least one array (numpy, cupy, torch or array_api_strict)")
    try:
        xp = array_namespace(*arrs)
    except TypeError as exc:
        kinds = sorted({type(a).__module__ + "." + type(a).__name__ for a in arrs})
        raise TypeError(f"arrays from different backends cannot be mixed: {kinds}") from exc
    check_same_device(*arrs)
    return xp


def check_same_device(*arrays: Array) -> None:
    """Raise ``ValueError`` if ``arrays`` do not all live on one device."""
    devs = [device(a) for a in arrays if a is not None and is_array_api_obj(a)]
    if any(d != devs[0] for d in devs[1:]):
        raise ValueError(
            f"arrays live on different devices ({sorted({str(d) for d in devs})}); "
            "move them to one device explicitly"
        )


def table_on(table: np.ndarray, xp: Any, dev: Any) -> Array:
    """A float64 schedule table as an array of namespace ``xp`` on ``dev``, cached per table.

    The cache lives as long as the table (a weakref finalizer drops it), so converting a table to
    a device happens once per schedule, not once per sampling step.
    """
    if is_numpy_namespace(xp):
        return table
    key = id(table)
    cache = _TABLE_CACHE.get(key)
    if cache is None:
        cache = _TABLE_CACHE[key] = {}
        weakref.finalize(table, _TABLE_CACHE.pop, key, None)
    out = cache.get((xp.__name__, str(dev)))
    if out is None:
        # a writable copy: torch refuses to wrap read-only NumPy memory
        out = cache[(xp.__name__, str(dev))] = xp.asarray(np.array(table), device=dev)
    return out


_TABLE_CACHE: dict[int, dict[tuple[str, str], Array]] = {}


def gather(table: np.ndarray, t: Array, like: Array, *, xp: Any | None = None) -> Array:
    """``table[t]`` cast to ``like``'s dtype and shaped ``[B, 1, ..., 1]`` to broadcast against it.

    ``table`` is a float64 NumPy table of length T; ``t`` an integer array ``[B]`` already checked to
    be in range. The gather happens in float64 and the cast to the data's dtype is the last step.
    """
    xp = array_namespace(like) if xp is None else xp
    tab = table_on(table, xp, device(like))
    vals = xp.take(tab, t, axis=0)
    vals = xp.astype(vals, like.dtype)
    return xp.reshape(vals, (vals.shape[0],) + (1,) * (like.ndim - 1))


@dataclass(frozen=True, eq=False)
class Timesteps:
    """Timestep indices ``[B]`` validated where they were made, on the data's backend and device.

    The core checks the *values* of a plain integer array of timesteps (range), which reads them
    back to the host: a device synchronisation on a GPU. Timesteps made on the host (by a training
    timestep sampler, or from a Python int inside a sampling loop) are checked there, once, and
    wrapped in this type; the core then checks only their shape, namespace and device, so a
    training or sampling step never waits on the device for a timestep check.

    Build one with :meth:`from_host` or :meth:`full`; ``array`` is what a denoiser is given.

    Attributes
    ----------
    array : int64 array [B]
        The indices, on the data's backend and device.
    num_timesteps : int
        T of the schedule they index (every index lies in [0, T-1]).
    max_index : int
        The largest index (known on the host when the timesteps were made).
    """

    array: Array
    num_timesteps: int
    max_index: int

    @classmethod
    def from_host(cls, t: Any, num_timesteps: int, xp: Any, device: Any = None) -> Timesteps:
        """Check host integers ``t`` [B] (NumPy or a list) against [0, T-1], then move them to
        ``device`` of namespace ``xp`` once."""
        tn = np.asarray(t)
        if tn.ndim != 1:
            raise ValueError(f"timesteps must be 1-D [B], got shape {tn.shape}")
        if tn.size and tn.dtype.kind not in "iu":
            raise TypeError(f"timesteps must be integers, got dtype {tn.dtype}")
        T = _check_num_timesteps(num_timesteps)
        hi = -1
        if tn.size:
            lo, hi = int(tn.min()), int(tn.max())
            if lo < 0 or hi >= T:
                bad = lo if lo < 0 else hi
                raise ValueError(f"timestep {bad} is out of range [0, {T - 1}]")
        arr = xp.asarray(np.ascontiguousarray(tn, dtype=np.int64), device=device)
        return cls(arr, T, hi)

    @classmethod
    def full(cls, t: int, batch: int, num_timesteps: int, xp: Any, device: Any = None) -> Timesteps:
        """The index ``t`` for each of ``batch`` examples."""
        T = _check_num_timesteps(num_timesteps)
        t = _check_int_timestep(t, T)
        return cls(xp.full((batch,), t, dtype=xp.int64, device=device), T, t)


def _check_num_timesteps(T: Any) -> int:
    return check_int(T, "num_timesteps", minimum=1)


def _check_int_timestep(t: Any, num_timesteps: int) -> int:
    t = check_int(t, "timestep")
    if not 0 <= t < num_timesteps:
        raise ValueError(f"timestep {t} is out of range [0, {num_timesteps - 1}]")
    return t


def as_batch_timesteps(t: Any, num_timesteps: int, batch: int, xp: Any, dev: Any) -> Array:
    """Validate timestep indices and return them as an integer array ``[batch]``.

    ``t`` is a Python int (used for every example), a :class:`Timesteps` (checked where it was
    made: only its shape, namespace and device are checked here, with no device synchronisation),
    or an integer array of shape ``[batch]`` (or ``[1]``/``[]``, broadcast) on the data's device,
    whose values are range-checked (reading them back to the host). Out of range, non-integer or
    wrong-shaped timesteps raise ``ValueError``/``TypeError`` naming the offending value.
    """
    if isinstance(t, Timesteps):
        if t.num_timesteps != num_timesteps:
            raise ValueError(
                f"these timesteps index a schedule of T = {t.num_timesteps} steps, this one has "
                f"T = {num_timesteps}"
            )
        t = _check_array_timesteps(t.array, batch, xp, dev)
        return t if t.dtype == xp.int64 else xp.astype(t, xp.int64)
    if isinstance(t, bool):
        raise TypeError(f"timestep must be an integer index, got {t!r}")
    if isinstance(t, (int, np.integer)):
        t = _check_int_timestep(t, num_timesteps)
        return xp.full((batch,), t, dtype=xp.int64, device=dev)
    if isinstance(t, float) or not is_array_api_obj(t):
        raise TypeError(f"timesteps must be an integer array or int, got {type(t).__name__} {t!r}")
    t = _check_array_timesteps(t, batch, xp, dev)
    if batch:
        lo, hi = int(xp.min(t)), int(xp.max(t))
        if lo < 0 or hi >= num_timesteps:
            bad = lo if lo < 0 else hi
            raise ValueError(f"timestep {bad} is out of range [0, {num_timesteps - 1}]")
    return xp.astype(t, xp.int64)


def max_timestep(t: Any, checked: Array, xp: Any) -> int:
    """The largest index of timesteps ``t`` as given to :func:`as_batch_timesteps` (``checked`` is
    its result): known on the host for an int or :class:`Timesteps`, read back otherwise."""
    if isinstance(t, Timesteps):
        return t.max_index
    if isinstance(t, (int, np.integer)):
        return int(t)
    return int(xp.max(checked)) if checked.shape[0] else -1


def _check_array_timesteps(t: Array, batch: int, xp: Any, dev: Any) -> Array:
    tx = array_namespace(t)
    if tx is not xp and tx.__name__ != xp.__name__:
        raise TypeError(
            f"timesteps are a {type(t).__module__} array but the data is {xp.__name__}; "
            "use one backend"
        )
    if not xp.isdtype(t.dtype, "integral"):
        raise TypeError(f"timesteps must have an integer dtype, got {t.dtype}")
    if device(t) != dev:
        raise ValueError(f"timesteps live on {device(t)} but the data on {dev}")
    if t.ndim == 0 or t.shape == (1,):
        t = xp.broadcast_to(xp.reshape(t, (1,)), (batch,))
    if t.ndim != 1 or t.shape[0] != batch:
        raise ValueError(f"timesteps must have shape [{batch}] (the batch), got {tuple(t.shape)}")
    return t


#: Below this argument log Φ comes from its asymptotic series, exact to float64 rounding there
#: (the first omitted term is below 1e-16 relative). Its gradient stays finite: the backends'
#: own gradients of log_ndtr cancel two numbers of order x²/2 and turn into NaN in float32 for
#: |x| beyond a few ten thousand (a tiny predicted scale far from the data).
LOG_NDTR_TAIL = -40.0


def log_ndtr(x: Array, xp: Any | None = None) -> Array:
    """``log Φ(x)``, the log of the standard normal CDF, accurate in both tails.

    Dispatches to the backend's own implementation (``scipy.special``, ``cupyx.scipy.special``,
    ``torch.special``; array_api_strict through NumPy/SciPy around the compiled call) for
    x ≥ :data:`LOG_NDTR_TAIL`, and below it uses the asymptotic series
    log Φ(x) = -x²/2 - log(-x) - ½ log 2π + log(1 - 1/x² + 3/x⁴ - 15/x⁶ + 105/x⁸ - …),
    with each branch fed values inside its own domain so that no gradient becomes NaN.
    """
    xp = array_namespace(x) if xp is None else xp
    core = _backend_log_ndtr(xp.clip(x, LOG_NDTR_TAIL, None), xp)
    z = xp.clip(x, None, LOG_NDTR_TAIL)
    w = 1.0 / (z * z)
    series = (
        -0.5 * z * z
        - xp.log(-z)
        - 0.5 * math.log(2.0 * math.pi)
        + xp.log1p(w * (-1.0 + w * (3.0 + w * (-15.0 + 105.0 * w))))
    )
    return xp.where(x < LOG_NDTR_TAIL, series, core)


def _backend_log_ndtr(x: Array, xp: Any) -> Array:
    if is_torch_namespace(xp):
        import torch

        return torch.special.log_ndtr(x)
    if is_cupy_namespace(xp):
        import cupyx.scipy.special as cs

        return cs.log_ndtr(x)
    import scipy.special as sc

    if is_numpy_namespace(xp):
        return xp.asarray(sc.log_ndtr(x), dtype=x.dtype)
    if is_array_api_strict_namespace(xp):
        out = sc.log_ndtr(_from_dlpack(x))  # SciPy < 1.12 returns float64 for float32
        return xp.asarray(np.asarray(out), dtype=x.dtype, device=device(x))
    raise TypeError(f"no log_ndtr for namespace {xp.__name__}")


def to_host(x: Any) -> np.ndarray:
    """A host NumPy array of ``x`` (NumPy, CuPy, PyTorch, array-api-strict), without importing a
    backend: an explicit copy to the host, for results that leave the device."""
    if isinstance(x, np.ndarray):
        return x
    if type(x).__module__.split(".")[0] == "cupy":
        return x.get()
    detach = getattr(x, "detach", None)
    if callable(detach):  # torch
        return detach().cpu().numpy()
    return _from_dlpack(x)


def _from_dlpack(x: Array) -> np.ndarray:
    """``np.from_dlpack(x)``; NumPy < 2.1 cannot export a read-only array (a broadcast view, a
    schedule table) through DLPack, so array-api-strict's copy of one is taken instead."""
    try:
        return np.from_dlpack(x)
    except BufferError:
        return np.from_dlpack(array_namespace(x).asarray(x, copy=True))


def stop_gradient(x: Array) -> Array:
    """Stop gradients (``detach``) for autograd backends; the identity elsewhere."""
    detach = getattr(x, "detach", None)
    return detach() if callable(detach) else x
