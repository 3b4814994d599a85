"""The drift harness: what a reduced-precision variant changes, step by step, against float32.

:func:`measure_drift` runs a reference denoiser (the float32 file) and a variant (int8, bfloat16,
float16, or any other refdiff file of the same model) from the same seed and noise through the
same sampler, and measures:

- per sampler step, the **denoiser error**: the variant's output against the reference's on the
  *reference's* inputs at that step (relative RMS and max abs), the error of one call with
  nothing accumulated; and the **trajectory divergence**: the RMS distance between the two
  samplers' states after the step, where the errors of all earlier steps have accumulated;
- the final images' difference (RMS and max in the data range, share of 8-bit values changed);
- the **bits/dim difference** on held-out images (the full bound over all T steps, the same noise
  for both, so the difference is paired), with the per-timestep terms showing where in t it
  arises;
- for 8x8 digits, each model's **Fréchet distance** to the held-out digits in the digits
  classifier's features (:mod:`refdiff.evaluation.quality`) and its relative change;
- optionally, per layer (:func:`layer_drift`), the relative error of every convolution and
  matrix product's output, in graph order, where the two files share tensor names.

A :class:`DriftReport` passes when the Fréchet distance moves by at most ``fd_tolerance``
(relative) and the bits/dim by at most ``bpd_tolerance``: the targets of docs/precision.md.
``refdiff check MODEL --against VARIANT`` prints it. NumPy only (CuPy arrays are copied to the
host for the statistics); no torch.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .._array import to_host
from ..settings import Diffusion

__all__ = [
    "DriftReport",
    "LayerDrift",
    "StepDrift",
    "layer_drift",
    "measure_drift",
]


@dataclass(frozen=True)
class StepDrift:
    """One sampler step. ``t``: the model timestep of the step's first denoiser call."""

    step: int
    t: int
    calls: int
    denoiser_rel: float
    denoiser_max_abs: float
    trajectory_rms: float
    pred_x0_rms: float | None


@dataclass(frozen=True)
class LayerDrift:
    """One convolution or matrix product: its output's relative RMS error over the inputs."""

    index: int
    name: str
    op: str
    rel: float


@dataclass(frozen=True)
class DriftReport:
    """What :func:`measure_drift` measured; :meth:`table` prints it, :meth:`to_dict` saves it.

    Attributes
    ----------
    reference, variant : str
        The two models' names (``reference_name``, ``variant_name``).
    sampler : str
        The sampler both were run with.
    num_steps, num_samples, seed : int
        Its steps, the samples drawn and their noise seed.
    steps : tuple of StepDrift
        Per sampler step: the denoiser's relative error on the reference's inputs and the
        trajectories' RMS divergence.
    image_rms, image_max_abs : float
        The final samples' difference (variant - reference), in data-range units.
    pixels_changed : float
        The fraction of 8-bit values that differ (NaN when the variant diverged).
    bpd : dict or None
        The bits/dim of both on the held-out images and their difference (``images``,
        ``reference``, ``variant``, ``difference``, ``stderr``, ``terms_difference``,
        ``worst_terms``); None without held-out images.
    fd : dict or None
        The Fréchet distances in the digits classifier's features (``reference``, ``variant``,
        ``relative_change``, ``between``, ...); None when not measured.
    fd_tolerance, bpd_tolerance : float
        The pass criteria the failures were judged by.
    layers : tuple of LayerDrift
        Per-layer errors (:func:`layer_drift`), when given.
    notes, failures : tuple of str
        What was not measured and why; which criteria failed (none: :attr:`ok`).
    """

    reference: str
    variant: str
    sampler: str
    num_steps: int
    num_samples: int
    seed: int
    steps: tuple[StepDrift, ...]
    image_rms: float
    image_max_abs: float
    pixels_changed: float
    bpd: dict[str, Any] | None
    fd: dict[str, Any] | None
    fd_tolerance: float
    bpd_tolerance: float
    layers: tuple[LayerDrift, ...] = ()
    notes: tuple[str, ...] = ()
    failures: tuple[str, ...] = field(default=())

    @property
    def ok(self) -> bool:
        return not self.failures

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["ok"] = self.ok
        return d

    def table(self) -> str:
        lines = [
            f"drift of {self.variant} against {self.reference}: {self.sampler}, "
            f"{self.num_steps} steps, {self.num_samples} samples, seed {self.seed}",
            f"{'step':>4} {'t':>5} {'calls':>5}  {'denoiser rel':>12} {'max abs':>9}  "
            f"{'trajectory rms':>14} {'x0 rms':>9}",
        ]
        for s in self.steps:
            x0 = "" if s.pred_x0_rms is None else f"{s.pred_x0_rms:9.2e}"
            lines.append(
                f"{s.step:>4} {s.t:>5} {s.calls:>5}  {s.denoiser_rel:>12.2e} "
                f"{s.denoiser_max_abs:>9.2e}  {s.trajectory_rms:>14.2e} {x0:>9}"
            )
        lines.append(
            f"final images: rms {self.image_rms:.2e}, max abs {self.image_max_abs:.2e} (data "
            f"range units), {100 * self.pixels_changed:.2f} % of 8-bit values changed"
        )
        if self.bpd is not None:
            b = self.bpd
            lines.append(
                f"bits/dim on {b['images']} held-out images (full bound, paired noise): "
                f"reference {b['reference']:.4f}, variant {b['variant']:.4f}, difference "
                f"{b['difference']:+.4f} ± {b['stderr']:.4f} (tolerance {self.bpd_tolerance:g})"
            )
            worst = b.get("worst_terms") or []
            if worst:
                lines.append(
                    "  largest per-timestep differences (t: bits/dim): "
                    + ", ".join(f"{t}: {v:+.4f}" for t, v in worst)
                )
        if self.fd is not None:
            f = self.fd
            lines.append(
                f"Fréchet distance to the held-out digits (digits classifier features): "
                f"reference {f['reference']:.3f}, variant {f['variant']:.3f}, change "
                f"{100 * f['relative_change']:+.1f} % (tolerance {100 * self.fd_tolerance:g} %); "
                f"between the two sample sets {f['between']:.3f}"
            )
        if self.layers:
            lines.append(
                f"per layer ({len(self.layers)} convolutions and matrix products, graph order): "
                "the largest relative errors of a layer's output"
            )
            worst = sorted(self.layers, key=lambda la: la.rel, reverse=True)[:8]
            for la in sorted(worst, key=lambda la: la.index):
                lines.append(f"  #{la.index:<3} {la.op:<6} {la.name:<28} rel {la.rel:.2e}")
            last = self.layers[-1]
            lines.append(f"  output layer #{last.index} {last.name}: rel {last.rel:.2e}")
        lines.extend(f"note: {n}" for n in self.notes)
        if self.ok:
            lines.append("PASS: within the tolerances")
        else:
            lines.append(f"FAIL: {len(self.failures)} problem(s):")
            lines.extend(f"  - {f}" for f in self.failures)
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.table()


class _Accumulator:
    """Sums of squares per step."""

    def __init__(self) -> None:
        self.err: dict[int, float] = {}
        self.ref: dict[int, float] = {}
        self.max_abs: dict[int, float] = {}

    def add(self, key: int, diff: np.ndarray, ref: np.ndarray) -> None:
        d = diff.astype(np.float64)
        self.err[key] = self.err.get(key, 0.0) + float(np.sum(d * d))
        self.ref[key] = self.ref.get(key, 0.0) + float(np.sum(ref.astype(np.float64) ** 2))
        self.max_abs[key] = max(self.max_abs.get(key, 0.0), float(np.max(np.abs(d))))


def _rms(sum_sq: float, count: int) -> float:
    return math.sqrt(sum_sq / count) if count else math.nan


def _check_pair(reference: Any, variant: Any) -> Diffusion:
    d, dv = reference.diffusion, variant.diffusion
    if d != dv:
        raise ValueError(
            "the two models have different diffusion settings; the drift harness compares "
            f"variants of one model (reference: {d}; variant: {dv})"
        )
    return d


class _Pair:
    """The two runs of one chunk: the reference's states and its calls, which the variant also
    answers on the same inputs; statistics go into the accumulators."""

    def __init__(self, reference: Any, variant: Any, stats: dict[str, Any]) -> None:
        self.reference, self.variant, self.stats = reference, variant, stats
        self.states: list[np.ndarray] = []
        self.x0: list[np.ndarray | None] = []
        self.calls: list[tuple[int, np.ndarray, np.ndarray]] = []  # (t, ref out, var out)

    def ref_call(self, x: Any, t: Any) -> Any:
        out = self.reference(x, t)
        self.calls.append((int(to_host(t)[0]), to_host(out), to_host(self.variant(x, t))))
        return out

    def ref_step(self, i: int, t: int, x: Any, pred_x0: Any) -> None:
        self.states.append(to_host(x).astype(np.float32))
        self.x0.append(None if pred_x0 is None else to_host(pred_x0).astype(np.float32))
        if self.calls:
            self.stats["t"].setdefault(i, self.calls[0][0])
            self.stats["calls"][i] = len(self.calls)
        for _, a, b in self.calls:
            self.stats["den"].add(i, b - a, a)
        self.calls.clear()

    def var_step(self, i: int, t: int, x: Any, pred_x0: Any) -> None:
        a = self.states[i]
        self.stats["traj"].add(i, to_host(x).astype(np.float32) - a, a)
        ref_x0 = self.x0[i]
        if pred_x0 is not None and ref_x0 is not None:
            self.stats["x0"].add(i, to_host(pred_x0).astype(np.float32) - ref_x0, ref_x0)


def _sample_pair(
    reference: Any,
    variant: Any,
    diffusion: Diffusion,
    *,
    n: int,
    sampler: str,
    steps: int | None,
    seed: int,
    batch_size: int,
) -> tuple[list[StepDrift], np.ndarray, np.ndarray]:
    """Both trajectories, chunk by chunk; per-step statistics and the final samples."""
    xp: Any = getattr(reference, "xp", None)
    if xp is None:
        import array_api_compat.numpy as xp
    stats: dict[str, Any] = {
        "den": _Accumulator(),
        "traj": _Accumulator(),
        "x0": _Accumulator(),
        "t": {},
        "calls": {},
    }
    finals_ref, finals_var = [], []
    scope = getattr(reference, "device_scope", contextlib.nullcontext)
    for lo in range(0, n, batch_size):
        hi = min(lo + batch_size, n)
        pair = _Pair(reference, variant, stats)
        common = {
            "sampler": sampler,
            "steps": steps,
            "seed": seed,
            "sample_indices": xp.asarray(np.arange(lo, hi, dtype=np.int64)),
            "xp": xp,
            "dtype": xp.float32,
        }
        with scope():
            x_ref = diffusion.sample(pair.ref_call, hi - lo, callback=pair.ref_step, **common)
            x_var = diffusion.sample(variant, hi - lo, callback=pair.var_step, **common)
        finals_ref.append(to_host(x_ref))
        finals_var.append(to_host(x_var))
    den, traj, x0 = stats["den"], stats["traj"], stats["x0"]
    step_t, step_calls = stats["t"], stats["calls"]
    size = int(np.prod(diffusion.image_shape))
    rows = []
    for i in sorted(step_t):
        rows.append(
            StepDrift(
                step=i,
                t=step_t[i],
                calls=step_calls[i],
                denoiser_rel=math.sqrt(den.err[i] / den.ref[i]) if den.ref[i] else math.nan,
                denoiser_max_abs=den.max_abs[i],
                trajectory_rms=_rms(traj.err.get(i, math.nan), n * size),
                pred_x0_rms=_rms(x0.err[i], n * size) if i in x0.err else None,
            )
        )
    return rows, np.concatenate(finals_ref), np.concatenate(finals_var)


def _bpd_pair(
    reference: Any,
    variant: Any,
    diffusion: Diffusion,
    images: np.ndarray,
    *,
    batch_size: int,
    seed: int,
) -> dict[str, Any]:
    from .likelihood import bound_parts

    kw: dict[str, Any] = {
        "full": True,
        "num_draws": 0,
        "batch_size": batch_size,
        "seed": seed,
        "progress": False,
    }
    a = bound_parts(reference, diffusion, images, **kw)
    b = bound_parts(variant, diffusion, images, **kw)
    a_terms, b_terms = a.terms_sum, b.terms_sum
    # the full pass (full=True) makes the totals and terms
    assert a.total is not None and b.total is not None
    assert a_terms is not None and b_terms is not None
    diff = b.total - a.total
    n = diff.shape[0]
    terms = (b_terms - a_terms) / n
    worst = np.argsort(-np.abs(terms))[:5]
    return {
        "images": int(n),
        "reference": float(a.total.mean()),
        "variant": float(b.total.mean()),
        "difference": float(diff.mean()),
        "stderr": float(diff.std(ddof=1) / math.sqrt(n)) if n > 1 else math.nan,
        "terms_difference": terms.tolist(),
        "worst_terms": [(int(t), float(terms[t])) for t in worst],
    }


def _fd_pair(
    samples_ref: np.ndarray, samples_var: np.ndarray, train: np.ndarray, test: np.ndarray
) -> dict[str, Any]:
    from .classifier import digits_classifier
    from .quality import frechet_distance

    clf = digits_classifier()
    f_test = clf.features(test)
    f_ref, f_var = clf.features(samples_ref), clf.features(samples_var)
    fd_ref, fd_var = frechet_distance(f_ref, f_test), frechet_distance(f_var, f_test)
    return {
        "reference": fd_ref,
        "variant": fd_var,
        "relative_change": (fd_var - fd_ref) / fd_ref if fd_ref > 0 else math.inf,
        "between": frechet_distance(f_ref, f_var),
        "num_heldout": int(test.shape[0]),
    }


def measure_drift(
    reference: Any,
    variant: Any,
    *,
    sampler: str = "dpmpp_2m",
    steps: int | None = 10,
    n: int = 1000,
    seed: int = 0,
    batch_size: int = 250,
    heldout: np.ndarray | None = None,
    train: np.ndarray | None = None,
    digits: bool | None = None,
    fd_tolerance: float = 0.05,
    bpd_tolerance: float = 0.01,
    layers: Sequence[LayerDrift] = (),
    reference_name: str = "reference",
    variant_name: str = "variant",
    progress: Callable[[str], None] | None = None,
) -> DriftReport:
    """Sample the reference and the variant from the same noise and measure their drift.

    Parameters
    ----------
    reference, variant : denoiser
        Callables ``(x, t) -> model_output`` with a ``diffusion`` attribute (and ``xp``), e.g. two
        :class:`~refdiff.runtime.OnnxDenoiser` of the same model; their diffusion settings must
        be equal.
    sampler, steps
        The sampler (one of :data:`refdiff.SAMPLERS`) and its number of steps (None: T), with the
        sampler's recommended spacing.
    n, seed, batch_size
        Samples drawn (sample i's noise depends on (seed, i) only), and per denoiser call.
    heldout : numpy.ndarray, optional
        uint8 [N, C, H, W] held-out images: the bits/dim of both models on them (full bound).
    train : numpy.ndarray, optional
        The digits training split (with ``digits``: the classifier's training data; unused else).
    digits : bool, optional
        Compare Fréchet distances in the digits classifier's features (needs ``heldout``; default:
        when the images are 1x8x8 and ``heldout`` is given).
    fd_tolerance, bpd_tolerance : float
        The pass criteria: ``|FD change| / FD_ref`` and ``|bits/dim difference|``.
    layers : sequence of LayerDrift
        Per-layer errors from :func:`layer_drift`, to be reported with the rest.
    reference_name, variant_name : str
        The names the report gives the two models.
    progress : callable, optional
        Called with a line of text before each stage.

    Returns
    -------
    DriftReport
        Per-step drift, the final images' difference, the bits/dim and Fréchet distance
        comparisons where measured, and the failed criteria (``report.ok`` when none).
    """
    say = progress or (lambda _line: None)
    diffusion = _check_pair(reference, variant)
    if isinstance(n, bool) or not isinstance(n, int) or n < 2:
        raise ValueError(f"n must be an int >= 2 (a Fréchet distance needs 2 samples), got {n!r}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    for what, tol in (("fd_tolerance", fd_tolerance), ("bpd_tolerance", bpd_tolerance)):
        if not (isinstance(tol, (int, float)) and math.isfinite(tol) and tol >= 0):
            raise ValueError(f"{what} must be a finite number >= 0, got {tol!r}")
    say(f"sampling {n} images twice ({sampler}, {steps or diffusion.num_timesteps} steps) ...")
    rows, final_ref, final_var = _sample_pair(
        reference,
        variant,
        diffusion,
        n=n,
        sampler=sampler,
        steps=steps,
        seed=seed,
        batch_size=batch_size,
    )
    from ..runtime.sampling import to_uint8

    notes: list[str] = []
    failures: list[str] = []
    diff = final_var.astype(np.float64) - final_ref.astype(np.float64)
    if not np.isfinite(diff).all():
        failures.append("the variant's samples hold NaN or infinite values")
        u_ref = u_var = None
    else:
        u_ref = to_uint8(final_ref, diffusion.data_range)
        u_var = to_uint8(final_var, diffusion.data_range)
    bpd = fd = None
    if heldout is not None and not failures:
        say(f"bits/dim of both on {heldout.shape[0]} held-out images (full bound) ...")
        bpd = _bpd_pair(reference, variant, diffusion, heldout, batch_size=batch_size, seed=seed)
        if not abs(bpd["difference"]) <= bpd_tolerance:
            failures.append(
                f"bits/dim moved by {bpd['difference']:+.4f} (tolerance {bpd_tolerance:g})"
            )
    else:
        notes.append("no held-out images: no bits/dim difference")
    if digits is None:
        digits = tuple(diffusion.image_shape) == (1, 8, 8) and heldout is not None
    if digits and u_ref is not None and u_var is not None:  # both or neither
        if heldout is None or train is None:
            raise ValueError("the digits Fréchet distance needs heldout= and train= images")
        say("Fréchet distances in the digits classifier's features ...")
        fd = _fd_pair(u_ref, u_var, train, heldout)
        if not abs(fd["relative_change"]) <= fd_tolerance:
            failures.append(
                f"the Fréchet distance moved by {100 * fd['relative_change']:+.1f} % "
                f"({fd['reference']:.3f} -> {fd['variant']:.3f}; tolerance "
                f"{100 * fd_tolerance:g} %)"
            )
    elif not digits:
        notes.append("not 8x8 digits: no Fréchet distance in the digits classifier's features")
    return DriftReport(
        reference=reference_name,
        variant=variant_name,
        sampler=sampler,
        num_steps=len(rows),
        num_samples=n,
        seed=seed,
        steps=tuple(rows),
        image_rms=float(np.sqrt(np.mean(diff**2))),
        image_max_abs=float(np.max(np.abs(diff))),
        pixels_changed=float(np.mean(u_ref != u_var)) if u_ref is not None else math.nan,
        bpd=bpd,
        fd=fd,
        fd_tolerance=float(fd_tolerance),
        bpd_tolerance=float(bpd_tolerance),
        layers=tuple(layers),
        notes=tuple(notes),
        failures=tuple(failures),
    )


def layer_drift(
    reference_path: Any, variant_path: Any, feeds: Sequence[dict[str, np.ndarray]]
) -> tuple[LayerDrift, ...]:
    """The relative RMS error of every convolution and matrix product's output, in graph order.

    Both files run on ``feeds`` (``{"x", "t"}`` inputs, e.g. the reference's inputs along a
    trajectory) with those tensors as extra outputs; only tensors present under the same name in
    both graphs are compared (a variant made from the float32 file keeps its names; two files
    exported separately may share none, and then the result is empty). Needs onnx.
    """
    from ..runtime.layers import inner_outputs, open_with_outputs

    ops = inner_outputs(reference_path, variant_path)
    if not ops:
        return ()
    names = [name for name, _ in ops]
    run_a = open_with_outputs(reference_path, names)
    run_b = open_with_outputs(variant_path, names)
    err = np.zeros(len(names))
    ref = np.zeros(len(names))
    for feed in feeds:
        outs_a, outs_b = run_a(feed), run_b(feed)
        for k, (a, b) in enumerate(zip(outs_a, outs_b, strict=True)):
            d = b.astype(np.float64) - a.astype(np.float64)
            err[k] += float(np.sum(d * d))
            ref[k] += float(np.sum(a.astype(np.float64) ** 2))
    return tuple(
        LayerDrift(k, name, op, math.sqrt(err[k] / ref[k]) if ref[k] else math.nan)
        for k, (name, op) in enumerate(ops)
    )
