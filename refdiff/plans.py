"""Samplers as data: a :class:`Plan` holds a sampler's per-step float64 tables, and :func:`run_plan`
is the one loop that runs every plan, on any array-API backend.

Every sampler whose update is a fixed linear combination is a plan: DDPM with any variance, DDIM
at any η, Euler, DPM-Solver++ 2M, 3M and 2M SDE (:data:`refdiff.SAMPLERS` says which have one).
A run visits N steps k = 0 … N-1, noisiest first. At step k the model is called at its training
index ``model_t[k]``; its mean channels ``out`` (a learned variance's channels are split off)
give the data prediction

    x̂₀_k = clip(pred_x[k] · x_k + pred_out[k] · out_k)        (clipped to the data range if asked)

with (pred_x, pred_out) = (1/√ᾱ, -√(1/ᾱ - 1)) for ε, (√ᾱ, -√(1-ᾱ)) for v and (0, 1) for x₀, and
the next state is

    x_{k+1} = x_coef[k] · x_k + Σ_j d_coef[k, j] · x̂₀_{k-j} + noise_coef[k] · z_k,

z_k the counter-based noise of (seed, sample index, ``step_index[k]``) (:mod:`refdiff.noise`).
DDPM with a learned variance takes its noise scale from the model's variance channels instead:
σ_k = exp(½ log σ²_k) with log σ²_k the channels themselves (``learned``) or
f · log_var_max[k] + (1 - f) · log_var_min[k], f = (channels + 1)/2 (``learned_range``), and
``noise_coef[k]`` is 1 where the step draws noise, 0 where it does not.

A plan is plain arrays: it can be printed (:meth:`Plan.table`), saved and loaded
(:meth:`Plan.save`, :meth:`Plan.load`: an .npz with a JSON header) and compared. It is the single
source for every place a sampler runs: the loop below on NumPy, PyTorch, CuPy or
array-api-strict, the fused CUDA step (:mod:`refdiff.fused`), an ONNX generator graph, and the
reference vectors that ports in other languages check themselves against.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from . import _formulas as f
from ._array import Array
from ._enums import Prediction, Variance
from .reverse import check_denoiser_output
from .sampler_loop import Callback, SamplerRun

__all__ = ["Plan", "StepGrid", "combine", "run_plan", "step_grid"]

#: The version of a saved plan's layout (``Plan.save``); bumped when a field changes meaning.
PLAN_FORMAT = 1

_TABLES = ("pred_x", "pred_out", "x_coef", "noise_coef", "log_var_min", "log_var_max")


class StepGrid(NamedTuple):
    """The nodes of a run over a (possibly respaced) schedule, noisiest first: its N indices,
    then the end of the run at σ = 0. The float arrays have N + 1 entries (the last: α = 1, σ = 0,
    λ = +∞)."""

    # int64 [N]: the schedule index of node k (T'-1, …, 0); the field hides tuple.index
    index: np.ndarray  # type: ignore[assignment]
    model_t: np.ndarray  # int64 [N]: the training index the model is given at node k
    alpha: np.ndarray  # [N + 1] α_k = √ᾱ
    sigma: np.ndarray  # [N + 1] σ_k = √(1 - ᾱ)
    lam: np.ndarray  # [N + 1] λ_k = log(α_k / σ_k): -∞ at a zero-terminal-SNR start

    @property
    def h(self) -> np.ndarray:
        """h_k = λ_{k+1} - λ_k [N] (+∞ into σ = 0 and out of a zero-terminal-SNR start)."""
        with np.errstate(invalid="ignore"):
            return np.diff(self.lam)


def step_grid(schedule: Any) -> StepGrid:
    """The :class:`StepGrid` of ``schedule`` (every one of its indices, from T'-1 down to 0)."""
    index = np.arange(schedule.num_timesteps - 1, -1, -1, dtype=np.int64)
    acp = np.append(schedule.alphas_cumprod[index], 1.0)
    alpha, sigma = np.sqrt(acp), np.sqrt(1.0 - acp)
    with np.errstate(divide="ignore"):
        lam = np.log(alpha) - np.log(sigma)
    model_t = np.asarray(schedule.timestep_map, dtype=np.int64)[index]
    return StepGrid(index, model_t, alpha, sigma, lam)


def prediction_coefficients(
    schedule: Any, index: np.ndarray, prediction: Prediction
) -> tuple[np.ndarray, np.ndarray]:
    """(pred_x, pred_out) [N]: x̂₀ = pred_x · x + pred_out · out at the schedule's ``index``, from
    the schedule's own tables (the same numbers :func:`refdiff.p_mean_variance` uses)."""
    if prediction is Prediction.EPSILON:
        return (
            schedule.sqrt_recip_alphas_cumprod[index],
            -schedule.sqrt_recipm1_alphas_cumprod[index],
        )
    if prediction is Prediction.V:
        return schedule.sqrt_alphas_cumprod[index], -schedule.sqrt_one_minus_alphas_cumprod[index]
    n = len(index)
    return np.zeros(n), np.ones(n)


def _frozen(a: Any, dtype: Any, shape: tuple[int, ...], name: str) -> np.ndarray:
    arr = np.array(a, dtype=dtype)  # a copy: a plan never shares memory with its inputs
    if arr.shape != shape:
        raise ValueError(f"plan table {name} must have shape {shape}, got {arr.shape}")
    if arr.dtype.kind == "f" and not np.all(np.isfinite(arr)):
        bad = np.argwhere(~np.isfinite(arr))[0].tolist()
        raise ValueError(f"plan table {name} holds a non-finite value at {bad}: {arr[tuple(bad)]}")
    arr.flags.writeable = False
    return arr


@dataclass(frozen=True, eq=False)
class Plan:
    """A sampler as per-step float64 tables, run by :func:`run_plan` (see the module docstring).

    Build one with a sampler's plan function (``refdiff.SAMPLERS[name].plan``, or
    :meth:`refdiff.Diffusion.plan`), not by hand; the constructor checks shapes and finiteness
    and freezes every table.

    Attributes
    ----------
    sampler : str
        The registry name of the sampler that made it.
    options : mapping
        The sampler's options as the plan was made (e.g. ``{"eta": 0.0}``).
    prediction, variance : Prediction, Variance
        The model's parameterisation; with a learned variance the output has 2C channels.
    clip : (lo, hi) or None
        The range x̂₀ is clipped to, or None.
    learned_noise : bool
        DDPM with a learned variance: the noise scale comes from the model's variance channels.
    step_index : int64 [N]
        The sampling schedule's index of each step: the noise counter and the ``t`` callbacks see.
    model_t : int64 [N]
        The training index the model is called at.
    pred_x, pred_out : float64 [N]
        x̂₀ = pred_x · x + pred_out · out (before clipping).
    x_coef : float64 [N]
    d_coef : float64 [N, H]
        The weight of x̂₀ of step k - j, j < H (the history length).
    noise_coef : float64 [N]
    log_var_min, log_var_max : float64 [N]
        ``learned_range``'s interpolation ends, log β̃ and log β (zeros when unused).
    """

    sampler: str
    options: Mapping[str, Any]
    prediction: Prediction
    variance: Variance
    clip: tuple[float, float] | None
    step_index: np.ndarray
    model_t: np.ndarray
    pred_x: np.ndarray
    pred_out: np.ndarray
    x_coef: np.ndarray
    d_coef: np.ndarray
    noise_coef: np.ndarray
    learned_noise: bool = False
    log_var_min: np.ndarray | None = None
    log_var_max: np.ndarray | None = None

    def __post_init__(self) -> None:
        set_ = object.__setattr__
        set_(self, "prediction", Prediction.parse(self.prediction))
        set_(self, "variance", Variance.parse(self.variance))
        set_(self, "options", dict(self.options))
        n = int(np.shape(self.step_index)[0]) if np.ndim(self.step_index) == 1 else -1
        if n < 1:
            raise ValueError(f"a plan needs at least one step, got step_index {self.step_index!r}")
        d = np.asarray(self.d_coef)
        if d.ndim != 2 or d.shape[1] < 1:
            raise ValueError(f"plan table d_coef must be [N, H] with H >= 1, got {d.shape}")
        for name in ("step_index", "model_t"):
            set_(self, name, _frozen(getattr(self, name), np.int64, (n,), name))
        set_(self, "d_coef", _frozen(d, np.float64, (n, d.shape[1]), "d_coef"))
        for name in _TABLES:
            value = getattr(self, name)
            set_(
                self, name, _frozen(np.zeros(n) if value is None else value, np.float64, (n,), name)
            )
        if self.clip is not None:
            lo, hi = (float(v) for v in self.clip)
            set_(self, "clip", (lo, hi))
        if self.learned_noise:
            if not self.variance.learned:
                raise ValueError(
                    f"learned_noise needs a learned variance, got {self.variance.value!r}"
                )
            if not np.all(np.isin(self.noise_coef, (0.0, 1.0))):
                raise ValueError("with learned_noise, noise_coef marks the noisy steps with 0 or 1")

    # -- what the tables imply ---------------------------------------------------------------

    @property
    def steps(self) -> int:
        """N, the number of steps (one network call each)."""
        return int(self.step_index.shape[0])

    @property
    def history(self) -> int:
        """H, how many x̂₀ predictions a step combines (1 for DDPM, DDIM and Euler)."""
        return int(self.d_coef.shape[1])

    @property
    def stochastic(self) -> bool:
        """Whether any step draws noise after x_T."""
        return bool(np.any(self.noise_coef != 0))

    # -- printing, saving, comparing ---------------------------------------------------------

    def table(self, digits: int = 6) -> str:
        """The tables as text, one row per step (what a port in another language checks first)."""
        hist = [f"d[k-{j}]" if j else "d[k]" for j in range(self.history)]
        cols = ["k", "step", "model_t", "pred_x", "pred_out", "x_coef", *hist, "noise"]
        if self.learned_noise:
            cols += ["logvar_min", "logvar_max"]
        rows = []
        for k in range(self.steps):
            nums = [self.pred_x[k], self.pred_out[k], self.x_coef[k], *self.d_coef[k]]
            nums.append(self.noise_coef[k])
            if self.learned_noise:
                nums += [self.log_var_min[k], self.log_var_max[k]]  # type: ignore[index]
            ints = [str(k), str(self.step_index[k]), str(self.model_t[k])]
            rows.append(ints + [f"{v:.{digits}g}" for v in nums])
        widths = [max(len(c), *(len(r[i]) for r in rows)) for i, c in enumerate(cols)]
        head = "  ".join(c.rjust(w) for c, w in zip(cols, widths, strict=True))
        body = ["  ".join(v.rjust(w) for v, w in zip(r, widths, strict=True)) for r in rows]
        return "\n".join([self.describe(), head, *body])

    def describe(self) -> str:
        """One line: the sampler, its options, the steps and the parameterisation."""
        opts = ", ".join(f"{k}={v}" for k, v in self.options.items())
        clip = "" if self.clip is None else f", x̂₀ clipped to {list(self.clip)}"
        return (
            f"{self.sampler}({opts}): {self.steps} steps, history {self.history}, "
            f"{self.prediction.value} prediction, {self.variance.value} variance{clip}"
        )

    def to_dict(self) -> dict[str, Any]:
        """Every field as JSON-serialisable values (lists of numbers); :meth:`from_dict` inverts
        it exactly (float64 values round-trip through JSON's shortest repr)."""
        d: dict[str, Any] = {
            "format": PLAN_FORMAT,
            "sampler": self.sampler,
            "options": dict(self.options),
            "prediction": self.prediction.value,
            "variance": self.variance.value,
            "clip": None if self.clip is None else list(self.clip),
            "learned_noise": self.learned_noise,
            "step_index": self.step_index.tolist(),
            "model_t": self.model_t.tolist(),
            "d_coef": self.d_coef.tolist(),
        }
        for name in _TABLES:
            d[name] = getattr(self, name).tolist()
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Plan:
        """The plan :meth:`to_dict` described; an unknown format or a missing key is an error."""
        if not isinstance(d, Mapping):
            raise TypeError(f"a plan description must be a mapping, got {type(d).__name__}")
        if d.get("format") != PLAN_FORMAT:
            raise ValueError(
                f"unknown plan format {d.get('format')!r} (this refdiff reads {PLAN_FORMAT})"
            )
        names = ("sampler", "options", "prediction", "variance", "clip", "step_index", "model_t")
        missing = [k for k in (*names, "d_coef", *_TABLES) if k not in d]
        if missing:
            raise ValueError(f"the plan description lacks {missing}")
        kwargs = {k: d[k] for k in names}
        kwargs["clip"] = None if d["clip"] is None else tuple(d["clip"])
        tables: dict[str, Any] = {k: np.asarray(d[k], dtype=np.float64) for k in _TABLES}
        return cls(
            **kwargs,
            d_coef=np.asarray(d["d_coef"], dtype=np.float64),
            learned_noise=bool(d.get("learned_noise", False)),
            **tables,
        )

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the plan as an .npz: every table as an array, the rest as a JSON string under
        ``header``; written whole or not at all."""
        from ._io import write_npz

        d = self.to_dict()
        arrays = {k: np.asarray(d.pop(k)) for k in ("step_index", "model_t", "d_coef", *_TABLES)}
        out = Path(path)
        write_npz(out, header=np.asarray(json.dumps(d, sort_keys=True)), **arrays)
        return out

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Plan:
        """The plan :meth:`save` wrote."""
        with np.load(path, allow_pickle=False) as npz:
            if "header" not in npz.files:
                raise ValueError(f"{str(path)!r} is not a saved refdiff plan (no 'header')")
            d = json.loads(str(npz["header"]))
            d.update({k: npz[k] for k in npz.files if k != "header"})
        return cls.from_dict(d)

    def same_as(self, other: Plan, *, rtol: float = 0.0, atol: float = 0.0) -> bool:
        """Whether ``other`` has the same settings and indices and tables equal within
        ``rtol``/``atol`` (exactly, by default)."""
        a, b = self.to_dict(), other.to_dict()
        for key in a:
            if key in (*_TABLES, "d_coef"):
                x, y = np.asarray(a[key]), np.asarray(b[key])
                if x.shape != y.shape or not np.allclose(x, y, rtol=rtol, atol=atol):
                    return False
            elif a[key] != b[key]:
                return False
        return True


# -- the loop --------------------------------------------------------------------------------


def combine(x: Array, x_coef: float, history: Sequence[Array], d_coef: Sequence[float]) -> Array:
    """x_coef · x + Σ_j d_coef[j] · history[j], skipping zero terms (x may drop out entirely)."""
    out = x * float(x_coef) if x_coef != 0 else None
    for d, c in zip(history, d_coef, strict=False):
        if c != 0:
            out = d * float(c) if out is None else out + d * float(c)
    if out is None:  # every weight zero: not a plan refdiff makes, but well defined
        out = x * 0.0
    return out


def data_prediction(
    x: Array, out: Array, pred_x: float, pred_out: float, clip: tuple[float, float] | None, xp: Any
) -> Array:
    """x̂₀ = clip(pred_x · x + pred_out · out), skipping a zero weight and a unit one."""
    y = out if pred_out == 1.0 else out * float(pred_out)
    x0 = y if pred_x == 0.0 else x * float(pred_x) + y
    return x0 if clip is None else xp.clip(x0, clip[0], clip[1])


Step = Callable[[int, Array, Array, list[Array]], tuple[Array, Array]]


def _generic_step(plan: Plan, run: SamplerRun) -> Step:
    """``step(k, x, out, history) -> (x_next, x̂₀_k)`` in array-API operations."""
    xp = run.xp

    def step(k: int, x: Array, out: Array, history: list[Array]) -> tuple[Array, Array]:
        mean_out, var_out = f.split_channels(out, x.shape[1], plan.variance)
        d = data_prediction(x, mean_out, plan.pred_x[k], plan.pred_out[k], plan.clip, xp)
        x_new = combine(x, plan.x_coef[k], [d, *history], plan.d_coef[k])
        nc = plan.noise_coef[k]
        if nc != 0:
            z = run.noise(int(plan.step_index[k]), tuple(x.shape))
            if plan.learned_noise:
                assert var_out is not None  # a learned variance's channels (split_channels)
                log_var = var_out
                if plan.variance is Variance.LEARNED_RANGE:
                    assert plan.log_var_min is not None and plan.log_var_max is not None
                    frac = (var_out + 1.0) / 2.0
                    log_var = frac * float(plan.log_var_max[k]) + (1.0 - frac) * float(
                        plan.log_var_min[k]
                    )
                x_new = x_new + xp.exp(0.5 * log_var) * z
            else:
                x_new = x_new + float(nc) * z
        return x_new, d

    return step


def _step_function(plan: Plan, run: SamplerRun, seed: int, noise: Any, fused: bool | None) -> Step:
    from array_api_compat import is_cupy_namespace

    if fused is None:
        fused = is_cupy_namespace(run.xp) and run.dtype == run.xp.float32 and noise is None
    if not fused:
        return _generic_step(plan, run)
    if not is_cupy_namespace(run.xp):
        raise ValueError(
            f"fused=True needs CuPy arrays (xp=array_api_compat.cupy), got {run.xp.__name__}"
        )
    if run.dtype != run.xp.float32:
        raise ValueError(f"fused=True runs in float32, got dtype {run.dtype}")
    if noise is not None:
        raise ValueError("fused=True draws its own counter-based noise; do not pass noise=")
    from .fused import plan_step_cuda

    def step(k: int, x: Array, out: Array, history: list[Array]) -> tuple[Array, Array]:
        return plan_step_cuda(plan, k, x, out, history, seed=seed, sample_indices=run.idx)

    return step


def run_plan(
    plan: Plan,
    denoiser: Callable[[Array, Array], Array],
    shape: tuple[int, ...],
    *,
    seed: int = 0,
    sample_indices: Array | None = None,
    xp: Any = None,
    dtype: Any = None,
    device: Any = None,
    noise: Callable[[int, tuple[int, ...]], Array] | None = None,
    x_T: Array | None = None,
    callback: Callback | None = None,
    fused: bool | None = None,
) -> Array:
    """Run ``plan`` from x_T: ``plan.steps`` network calls, then the samples [B, ...].

    Parameters
    ----------
    plan : Plan
        The sampler's tables (:meth:`refdiff.Diffusion.plan`, ``SAMPLERS[name].plan``).
    denoiser : callable
        ``denoiser(x, t) -> model_output``: x [B, C, ...] of the run's namespace and dtype, t int64
        [B] training indices; the output [B, C or 2C, ...] of x's type and dtype.
    shape : tuple of int
        [B, C, ...] of the samples.
    seed, sample_indices, xp, dtype, device, noise, x_T, callback
        As for every sampler (:func:`refdiff.sample`): x_T is ``noise(PRIOR_STEP, shape)`` unless
        given; step k draws ``noise(step_index[k], shape)``.
    fused : bool, optional
        Run each step as one CUDA kernel (:func:`refdiff.fused.plan_step_cuda`; CuPy, float32,
        the built-in noise). Default: whenever those hold. The result equals the generic path.

    Returns
    -------
    array [B, C, ...]
        The samples, in x_T's (or ``xp``'s) namespace, dtype and device.

    Raises
    ------
    FloatingPointError
        When the samples turn NaN or infinite; the message names the first such step.
    """
    if not isinstance(plan, Plan):
        raise TypeError(f"plan must be a refdiff Plan, got {type(plan).__name__}")
    run = SamplerRun(plan.steps, shape, xp, dtype, device, seed, sample_indices, noise, x_T)
    step = _step_function(plan, run, seed, noise, fused)
    x = run.x
    history: list[Array] = []
    for k in range(plan.steps):
        t = int(plan.step_index[k])
        out = check_denoiser_output(denoiser(x, run.full(int(plan.model_t[k]))), x, plan.variance)
        x, d = step(k, x, out, history)
        history = [d, *history][: plan.history - 1] if plan.history > 1 else []
        run.watch(k, t, x)
        if callback is not None:
            callback(k, t, x, d)
    return run.finish(x)
