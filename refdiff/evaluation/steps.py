"""Sample quality against the number of network calls: each sampler at each budget of calls,
scored with the digits measures (:func:`refdiff.evaluation.digits_sample_quality`).

A sampler's price is its number of network calls, not its steps: Heun calls the model twice per
step (2·steps - 1 calls in all), every other sampler once. :func:`quality_vs_steps` therefore takes
budgets of calls, gives each sampler the most steps that fit (:func:`steps_for_calls`) and counts
the calls it actually made. Every sampler starts from the same prior noise (the noise of sample i
is a function of (seed, i) only), so the comparison is paired.

NumPy and onnxruntime only (the denoiser may be an :class:`~refdiff.runtime.OnnxDenoiser`): no
torch. ``benchmarks/quality_vs_steps.py`` runs it on the demo's digits model, and
:func:`refdiff.plots.plot_quality_vs_calls` draws the result.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from .._checks import check_int
from .._enums import Spacing
from ..runtime.sampling import sample_array, to_uint8
from ..samplers import SAMPLERS, get_sampler
from ..settings import Diffusion
from .quality import digits_sample_quality

__all__ = [
    "DEFAULT_CALLS",
    "calls_to_match",
    "quality_table",
    "quality_vs_steps",
    "steps_for_calls",
]

#: Budgets of network calls of the sweep (200 is the digits model's T: DDPM over every step).
DEFAULT_CALLS = (5, 10, 20, 50, 200)


def steps_for_calls(sampler: str, calls: int) -> int:
    """The most steps of ``sampler`` that fit in ``calls`` network calls (its registry entry's
    count: ``calls`` for all but Heun, (calls + 1) // 2 for Heun's 2·steps - 1 calls)."""
    return get_sampler(sampler).steps_for_calls(calls)


class _CountedCalls:
    """The denoiser with the settings :func:`~refdiff.runtime.sample_array` needs, counting its
    calls."""

    def __init__(self, denoiser: Callable[[Any, Any], Any], diffusion: Diffusion) -> None:
        self.denoiser, self.diffusion, self.calls = denoiser, diffusion, 0
        self.xp = getattr(denoiser, "xp", None)
        scope = getattr(denoiser, "device_scope", None)
        if scope is not None:
            self.device_scope = scope

    def __call__(self, x: Any, t: Any) -> Any:
        self.calls += 1
        return self.denoiser(x, t)


def quality_vs_steps(
    denoiser: Callable[[Any, Any], Any],
    diffusion: Diffusion,
    samplers: Sequence[str] | None = None,
    calls: Iterable[int] = DEFAULT_CALLS,
    *,
    n: int = 500,
    seed: int = 0,
    train: Any,
    test: Any,
    spacing: str | Mapping[str, str] | None = None,
    repeats: int = 1,
    batch_size: int = 500,
    progress: Callable[[dict[str, Any]], None] | None = None,
) -> list[dict[str, Any]]:
    """Sample ``n`` digits with each sampler at each budget of network calls and score them.

    Parameters
    ----------
    denoiser : callable
        ``(x, t) -> model_output`` on arrays of namespace ``denoiser.xp`` (default NumPy), ``t``
        the indices of the model's own schedule; an :class:`~refdiff.runtime.OnnxDenoiser`.
    diffusion : Diffusion
        The model's settings (image shape (1, 8, 8): the digits).
    samplers : sequence of str, optional
        Names in :data:`refdiff.SAMPLERS` (default: every registered sampler).
    calls : iterable of int
        Budgets of network calls; each must allow at most T steps.
    n, seed : int
        Samples per run and the noise seed: sample i starts from the same x_T in every run.
    repeats : int
        Runs per (sampler, budget), with seeds ``seed``, ``seed + 1``, …: the scores are their
        means and ``fd_std`` the spread of the Fréchet distance between them. On the digits a
        run of 1000 samples has a Fréchet distance within about ±25 % of its mean
        (docs/samplers.md), so a comparison at the 10 % level needs several.
    train, test : numpy.ndarray or ImageDataset
        The digits' training and held-out splits (:func:`digits_sample_quality`).
    spacing : str or mapping, optional
        The step spacing (:func:`refdiff.select_timesteps`) of every sampler, or per sampler;
        a sampler given none runs on its registry entry's spacing.
    batch_size : int
        Samples per denoiser call (memory only: the samples do not depend on it).
    progress : callable, optional
        Called with each row as it is finished.

    Returns
    -------
    list of dict
        One row per (sampler, budget), in that order: ``sampler``, ``spacing``, ``budget``,
        ``steps``, ``calls`` (the network calls one sample's run made, counted: the budget, or
        one less for Heun at an even budget), ``n``, ``repeats``, the means over the repeats of
        ``fd``, ``fd_relative``, ``fd_floor``, ``fd_ceiling``, ``confidence`` and
        ``class_coverage``, ``fd_std`` and ``seconds``.
    """
    budgets = sorted({check_int(c, "a budget of network calls", minimum=1) for c in calls})
    specs = [get_sampler(name) for name in (SAMPLERS if samplers is None else samplers)]
    check_int(n, "n (a Fréchet distance needs 2 samples)", minimum=2)
    check_int(batch_size, "batch_size", minimum=1)
    check_int(repeats, "repeats", minimum=1)
    spacings = _spacings(specs, spacing)
    T = diffusion.num_timesteps
    counted = _CountedCalls(denoiser, diffusion)
    rows = []
    for spec in specs:
        name = spec.name
        for budget in budgets:
            steps = spec.steps_for_calls(budget)
            if steps > T:
                raise ValueError(
                    f"a budget of {budget} network calls is {steps} steps of {name!r}, more than "
                    f"the model's T = {T}"
                )
            t0 = time.perf_counter()
            runs = [
                _score_run(
                    counted, name, steps, spacings[name], n, seed + r, batch_size, train, test
                )
                for r in range(repeats)
            ]
            row = {
                "sampler": name,
                "spacing": spacings[name],
                "budget": budget,
                "steps": steps,
                "calls": runs[0]["calls"],
                "n": n,
                "repeats": repeats,
                **{key: float(np.mean([q[key] for q in runs])) for key in _SCORES},
                "fd_std": float(np.std([q["fd"] for q in runs], ddof=1)) if repeats > 1 else 0.0,
                "seconds": time.perf_counter() - t0,
            }
            rows.append(row)
            if progress is not None:
                progress(row)
    return rows


_SCORES = ("fd", "fd_relative", "fd_floor", "fd_ceiling", "confidence", "class_coverage")


def _score_run(
    counted: _CountedCalls,
    name: str,
    steps: int,
    spacing: str,
    n: int,
    seed: int,
    batch_size: int,
    train: Any,
    test: Any,
) -> dict[str, Any]:
    """One run of ``n`` samples scored with the digits measures, and its calls per sample."""
    counted.calls = 0
    floats = sample_array(
        counted,
        n,
        sampler=name,
        steps=steps,
        spacing=spacing,
        seed=seed,
        batch_size=batch_size,
        progress=False,
    )
    images = to_uint8(floats, counted.diffusion.data_range)
    q = digits_sample_quality(images, train=train, test=test, seed=seed)
    return {"calls": counted.calls // math.ceil(n / batch_size), **{k: q[k] for k in _SCORES}}


def _spacings(specs: Sequence[Any], spacing: str | Mapping[str, str] | None) -> dict[str, str]:
    if isinstance(spacing, str):
        return {s.name: Spacing.parse(spacing).value for s in specs}
    given = spacing or {}
    return {s.name: Spacing.parse(given.get(s.name, s.spacing)).value for s in specs}


def calls_to_match(
    rows: Sequence[Mapping[str, Any]],
    *,
    reference: tuple[str, int] = ("ddpm", 200),
    tolerance: float = 0.10,
) -> dict[str, int | None]:
    """For each sampler, the fewest network calls at which its Fréchet distance is within
    ``tolerance`` of the reference run's (``(sampler, calls)``, default DDPM over 200 calls), or
    None where no budget of the sweep reaches it."""
    ref = [r for r in rows if (r["sampler"], r["calls"]) == tuple(reference)]
    if not ref:
        raise ValueError(f"the rows hold no run of {reference[0]!r} with {reference[1]} calls")
    if not (isinstance(tolerance, (int, float)) and 0 <= tolerance < math.inf):
        raise ValueError(f"tolerance must be a finite number >= 0, got {tolerance!r}")
    target = (1.0 + tolerance) * ref[0]["fd"]
    out: dict[str, int | None] = {}
    for r in rows:
        name = r["sampler"]
        out.setdefault(name, None)
        if r["fd"] <= target and (out[name] is None or r["calls"] < out[name]):
            out[name] = int(r["calls"])
    return out


def quality_table(rows: Sequence[Mapping[str, Any]]) -> str:
    """The rows as a Markdown table: one line per sampler, the Fréchet distance and (in brackets)
    the classifier's confidence per budget of calls; ``[k]`` marks a run that made k calls."""
    budgets = sorted({int(r["budget"]) for r in rows})
    by_sampler: dict[str, dict[int, Mapping[str, Any]]] = {}
    for r in rows:
        by_sampler.setdefault(f"{r['sampler']} ({r['spacing']})", {})[int(r["budget"])] = r
    head = "| sampler (spacing) | " + " | ".join(f"{c} calls" for c in budgets) + " |"
    lines = [head, "|---|" + "---:|" * len(budgets)]
    for label, cells in by_sampler.items():
        lines.append(f"| {label} | " + " | ".join(_cell(cells.get(c), c) for c in budgets) + " |")
    return "\n".join(lines)


def _cell(row: Mapping[str, Any] | None, budget: int) -> str:
    if row is None:
        return "–"
    text = f"{row['fd']:.2f} ({row['confidence']:.2f})"
    return text if row["calls"] == budget else f"{text} [{row['calls']}]"
