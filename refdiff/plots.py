"""Plots of a diffusion model and its training, as PNG files (matplotlib; no torch).

- :func:`plot_schedule`: ᾱ_t and log-SNR against t (one schedule, or several to compare);
- :func:`plot_loss`: the training loss with a smoothed curve, log y;
- :func:`plot_bound_terms`: where in t the bound spends its bits: each L_t in bits/dim (log y)
  and the cumulative share of the total;
- :func:`plot_samples_vs_data`: a grid of samples next to a grid of real images;
- :func:`plot_quality_vs_calls`: Fréchet distance and classifier confidence against the number of
  network calls, one line per sampler (:func:`refdiff.evaluation.steps.quality_vs_steps`).

Figures are drawn on :class:`matplotlib.figure.Figure` objects rendered by the Agg canvas, never
through pyplot, so no GUI backend is touched and nothing global changes. Each function writes one
PNG atomically (creating parent folders) and returns its path.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ._deps import require
from ._io import atomic_path, created_folder

__all__ = [
    "plot_bound_terms",
    "plot_loss",
    "plot_quality_vs_calls",
    "plot_samples_vs_data",
    "plot_schedule",
]

_DPI = 120


def _figure(width: float, height: float) -> Any:
    require("matplotlib", "eval", "plots")
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=_DPI, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _save(fig: Any, path: str | os.PathLike[str]) -> Path:
    p = Path(path)
    if p.suffix.lower() != ".png":
        raise ValueError(f"plots are written as PNG; give a path ending in .png, got {str(p)!r}")
    with created_folder(p.parent), atomic_path(p, suffix=".png") as tmp:
        fig.savefig(tmp, format="png", dpi=_DPI)
    return p


def _time_label(T: int) -> str:
    return f"timestep index t (0 … {T - 1}; paper step t + 1)"


# --------------------------------------------------------------------------------------------


def plot_schedule(schedule: Any, path: str | os.PathLike[str]) -> Path:
    """ᾱ_t (signal kept) and log-SNR = log(ᾱ_t / (1 - ᾱ_t)) against t, in two panels.

    Parameters
    ----------
    schedule : Schedule or mapping of label -> Schedule
        One schedule, or several drawn on the same axes (e.g. ``{"linear": ..., "cosine": ...}``).
    path : str or PathLike
        A ``.png`` file.
    """
    items = dict(schedule) if isinstance(schedule, Mapping) else {None: schedule}
    if not items:
        raise ValueError("no schedule to plot")
    fig = _figure(9.0, 3.6)
    ax_a, ax_s = fig.subplots(1, 2)
    Ts = set()
    for label, s in items.items():
        acp = np.asarray(s.alphas_cumprod, dtype=np.float64)
        T = acp.shape[0]
        Ts.add(T)
        t = np.arange(T)
        name = label if label is not None else f"{s.name}, T = {T}"
        (line,) = ax_a.plot(t, acp, lw=1.8, label=name)
        log_snr = np.asarray(s.log_snr, dtype=np.float64)
        finite = np.isfinite(log_snr)
        ax_s.plot(t[finite], log_snr[finite], lw=1.8, label=name, color=line.get_color())
        if not finite.all():  # zero terminal SNR: log-SNR is -inf at the last step
            ax_s.annotate(
                "−∞ at the last step\n(zero terminal SNR)",
                xy=(t[finite][-1], log_snr[finite][-1]),
                xytext=(0.35, 0.1),
                textcoords="axes fraction",
                fontsize=8,
                color=line.get_color(),
                arrowprops={"arrowstyle": "->", "lw": 0.8, "color": line.get_color()},
            )
    T_label = _time_label(max(Ts)) if len(Ts) == 1 else "timestep index t (paper step t + 1)"
    ax_a.set(
        xlabel=T_label,
        ylabel=r"$\bar\alpha_t$  (share of signal variance kept)",
        title=r"Signal kept: $\bar\alpha_t = \prod_{s \leq t}\,(1 - \beta_s)$",
        ylim=(-0.02, 1.02),
    )
    ax_s.set(
        xlabel=T_label,
        ylabel=r"$\log \mathrm{SNR}_t = \log\,(\bar\alpha_t\,/\,(1 - \bar\alpha_t))$",
        title="Signal-to-noise ratio (natural log)",
    )
    ax_s.axhline(0.0, color="0.6", lw=0.8, ls=":")
    for ax in (ax_a, ax_s):
        ax.grid(alpha=0.3)
    if len(items) > 1 or None not in items:
        ax_a.legend(fontsize=8)
    else:
        (s,) = items.values()
        fig.suptitle(f"{s.name} schedule, T = {s.num_timesteps}", fontsize=11)
    return _save(fig, path)


def _smooth(values: np.ndarray, window: int) -> np.ndarray:
    """Centred moving average (edges averaged over the available values)."""
    if window <= 1 or values.size < 3:
        return values
    kernel = np.ones(window)
    num = np.convolve(values, kernel, mode="same")
    den = np.convolve(np.ones_like(values), kernel, mode="same")
    return num / den


def plot_loss(
    steps: Sequence[float] | np.ndarray,
    losses: Sequence[float] | np.ndarray,
    path: str | os.PathLike[str],
    *,
    smoothing: int | None = None,
    ylabel: str = "training loss (MSE of the prediction)",
    title: str = "Training loss",
) -> Path:
    """The training loss against the step, raw (faint) and smoothed (bold), log y axis.

    Parameters
    ----------
    steps, losses : sequences of the same length ≥ 1
        Optimiser steps and the loss logged at each.
    path : str or PathLike
        A ``.png`` file.
    smoothing : int, optional
        Width of the centred moving average in logged points; default ~5 % of the points.
    ylabel, title : str
    """
    x = np.asarray(steps, dtype=np.float64).ravel()
    y = np.asarray(losses, dtype=np.float64).ravel()
    if x.shape != y.shape or x.size == 0:
        raise ValueError(
            f"steps and losses must be non-empty and of equal length, got {x.size} and {y.size}"
        )
    keep = np.isfinite(x) & np.isfinite(y) & (y > 0)
    if not keep.any():
        raise ValueError("no finite positive loss to plot (the y axis is logarithmic)")
    x, y = x[keep], y[keep]
    order = np.argsort(x, kind="stable")
    x, y = x[order], y[order]
    window = max(1, round(0.05 * x.size)) if smoothing is None else int(smoothing)
    fig = _figure(7.0, 3.8)
    ax = fig.subplots()
    ax.plot(x, y, color="tab:blue", alpha=0.3, lw=0.8, label="logged")
    if window > 1 and x.size >= 3:
        # Smooth log(loss): a geometric mean suits a log axis and is not dragged up by spikes.
        ax.plot(
            x,
            np.exp(_smooth(np.log(y), window)),
            color="tab:blue",
            lw=2.0,
            label=f"moving average ({window} points)",
        )
    ax.set_yscale("log")
    ax.set(xlabel="optimiser step", ylabel=ylabel, title=title)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    ax.text(
        0.99,
        0.97,
        f"last: {y[-1]:.4g} at step {x[-1]:.0f}",
        transform=ax.transAxes,
        ha="right",
        va="top",
        fontsize=8,
    )
    return _save(fig, path)


def plot_bound_terms(
    terms_bpd_mean: Sequence[float] | np.ndarray,
    path: str | os.PathLike[str],
    *,
    prior_bpd: float | None = None,
    title: str | None = None,
) -> Path:
    """Where in t the bound spends its bits.

    Top: the mean of each term in bits/dim against the timestep index, log y (index 0 is the
    decoder term L_0, index t > 0 the KL term L_t of the paper's step t + 1). Bottom: the
    cumulative share of Σ_t L_t spent at indices ≤ t.

    Parameters
    ----------
    terms_bpd_mean : array_like [T]
        ``bits_per_dim(...)["terms_bpd"]``: the mean of each term over the images.
    path : str or PathLike
        A ``.png`` file.
    prior_bpd : float, optional
        The prior term L_T, shown in the title with the total.
    title : str, optional
    """
    terms = np.asarray(terms_bpd_mean, dtype=np.float64).ravel()
    if terms.size < 1 or not np.isfinite(terms).all():
        raise ValueError(f"terms_bpd_mean must be T >= 1 finite numbers, got {terms.size} values")
    T = terms.size
    t = np.arange(T)
    total = float(terms.sum())
    fig = _figure(7.5, 5.6)
    ax, ax_c = fig.subplots(2, 1, sharex=True, height_ratios=(3, 2))
    # Log axis: a KL term that rounds to ≤ 0 is not drawn (it spends no bits).
    kl = (t >= 1) & (terms > 0)
    if kl.any():
        ax.plot(t[kl], terms[kl], lw=1.6, color="tab:blue", label=r"KL terms $L_t$ ($t \geq 1$)")
    if terms[0] > 0:
        ax.plot(
            [0], [terms[0]], "o", color="tab:red", ms=6, label=rf"decoder $L_0$ = {terms[0]:.3g}"
        )
    ax.set_yscale("log")
    ax.set(ylabel="term  [bits/dim]", title=title or "Variational bound per timestep")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8, loc="upper right")
    lines = [rf"terms $L_0 \ldots L_{{T-1}}$: {total:.4g} bits/dim"]
    if prior_bpd is not None:
        lines.append(rf"prior $L_T$: {float(prior_bpd):.3g} bits/dim")
        lines.append(f"bound: {total + float(prior_bpd):.4g} bits/dim")
    ax.text(
        0.4,
        0.96,
        "\n".join(lines),
        transform=ax.transAxes,
        fontsize=8,
        va="top",
        bbox={"boxstyle": "round", "fc": "white", "ec": "0.8"},
    )
    share = np.cumsum(np.clip(terms, 0.0, None))
    share = share / share[-1] if share[-1] > 0 else share
    ax_c.plot(t, 100.0 * share, lw=1.8, color="tab:green")
    ax_c.set(xlabel=_time_label(T), ylabel="cumulative share\nof the terms [%]", ylim=(-2, 102))
    ax_c.grid(alpha=0.3)
    for q in (0.5, 0.9):
        if share[-1] > 0:
            k = int(np.searchsorted(share, q))
            ax_c.axhline(100 * q, color="0.6", lw=0.8, ls=":")
            ax_c.annotate(
                f"{int(100 * q)} % by t = {k}",
                xy=(k, 100 * q),
                xytext=(6, -12),
                textcoords="offset points",
                fontsize=8,
            )
    return _save(fig, path)


def plot_samples_vs_data(
    samples_uint8: np.ndarray,
    data_uint8: np.ndarray,
    path: str | os.PathLike[str],
    *,
    max_images: int = 64,
    titles: tuple[str, str] = ("model samples", "real images"),
) -> Path:
    """Two image grids side by side: the first ``max_images`` samples and as many real images."""
    from .images import make_grid

    grids = []
    for what, imgs in (("samples", samples_uint8), ("real images", data_uint8)):
        if not isinstance(imgs, np.ndarray) or imgs.dtype != np.uint8 or imgs.ndim != 4:
            raise TypeError(f"{what} must be uint8 images [N, C, H, W]")
        imgs = imgs[:max_images]
        scale = max(1, math.ceil(64 / max(imgs.shape[2:])))  # small images stay visible
        grids.append(make_grid(imgs, scale=min(scale, 4), pad=2, pad_value=128))
    fig = _figure(8.0, 4.4)
    axes = fig.subplots(1, 2)
    for ax, grid, title in zip(axes, grids, titles, strict=True):
        ax.imshow(
            grid[:, :, 0] if grid.shape[2] == 1 else grid,
            cmap="gray",
            vmin=0,
            vmax=255,
            interpolation="nearest",
        )
        ax.set_title(title)
        ax.set_axis_off()
    return _save(fig, path)


def plot_quality_vs_calls(
    rows: Sequence[Mapping[str, Any]],
    path: str | os.PathLike[str],
    *,
    reference: tuple[str, int] | None = ("ddpm", 200),
    tolerance: float = 0.10,
    title: str | None = None,
) -> Path:
    """Sample quality against the price of a sample: Fréchet distance (top, log-log; error bars
    ``fd_std`` where the rows have it) and the classifier's mean confidence (bottom) against the
    number of network calls (log x), one line per sampler.

    Parameters
    ----------
    rows : sequence of mappings
        :func:`refdiff.evaluation.steps.quality_vs_steps`'s rows: ``sampler``, ``spacing``,
        ``calls``, ``fd``, ``confidence`` (``fd_floor``, if given, is drawn as the floor).
    path : str or PathLike
        A ``.png`` file.
    reference : (sampler, calls), optional
        A run whose Fréchet distance is drawn as a dashed line, with a band of ``tolerance``
        above it (default: DDPM over 200 calls, +10 %); skipped if the rows do not hold it.
    """
    if not rows:
        raise ValueError("no rows to plot")
    for key in ("sampler", "spacing", "calls", "fd", "confidence"):
        missing = [i for i, r in enumerate(rows) if key not in r]
        if missing:
            raise ValueError(f"row {missing[0]} has no {key!r}")
    fig = _figure(7.5, 6.4)
    ax_fd, ax_conf = fig.subplots(2, 1, sharex=True, height_ratios=(3, 2))
    labels: dict[str, list[Mapping[str, Any]]] = {}
    for r in rows:
        labels.setdefault(f"{r['sampler']} ({r['spacing']})", []).append(r)
    for label, runs in labels.items():
        runs = sorted(runs, key=lambda r: r["calls"])
        calls = [r["calls"] for r in runs]
        spread = [r.get("fd_std", 0.0) for r in runs]
        ax_fd.errorbar(
            calls,
            [r["fd"] for r in runs],
            yerr=spread,
            fmt="o-",
            lw=1.5,
            ms=4,
            capsize=2,
            label=label,
        )
        ax_conf.plot(calls, [r["confidence"] for r in runs], "o-", lw=1.5, ms=4, label=label)
    ref = [r for r in rows if reference and (r["sampler"], r["calls"]) == tuple(reference)]
    if ref and reference is not None:  # ref is empty without a reference
        fd = float(ref[0]["fd"])
        ax_fd.axhline(fd, color="0.3", ls="--", lw=1)
        ax_fd.axhspan(fd, (1 + tolerance) * fd, color="0.85", zorder=0)
        ax_fd.annotate(
            f"{reference[0]} {reference[1]} calls, +{100 * tolerance:.0f} %",
            xy=(0.99, fd),
            xycoords=("axes fraction", "data"),
            ha="right",
            va="bottom",
            fontsize=8,
        )
    floors = [float(r["fd_floor"]) for r in rows if "fd_floor" in r]
    if floors:
        ax_fd.axhline(float(np.mean(floors)), color="tab:green", ls=":", lw=1)
        ax_fd.annotate(
            "real images (floor)",
            xy=(0.01, float(np.mean(floors))),
            xycoords=("axes fraction", "data"),
            va="bottom",
            fontsize=8,
            color="tab:green",
        )
    ax_fd.set_xscale("log")
    ax_fd.set_yscale("log")
    ax_fd.set(
        ylabel="Fréchet distance (lower is better)", title=title or "Quality vs network calls"
    )
    ax_fd.grid(alpha=0.3, which="both")
    ax_fd.legend(fontsize=8)
    ax_conf.set(xlabel="network calls per sample (log)", ylabel="classifier confidence")
    ax_conf.grid(alpha=0.3, which="both")
    return _save(fig, path)


def plot_drift(
    reports: Sequence[tuple[str, Any]] | Any,
    path: str | os.PathLike[str],
    *,
    title: str | None = None,
) -> Path:
    """The drift of reduced-precision variants against float32, per sampler step and per t.

    Left: the denoiser's relative error on the reference's inputs (solid) and the trajectories'
    RMS divergence (dashed) after each sampler step, against the step's timestep (log y).
    Right: where the bits/dim difference arises: the per-timestep terms of the variant's bound
    minus the reference's (symlog y), when the reports have them.

    Parameters
    ----------
    reports : DriftReport or sequence of (label, DriftReport)
        :func:`refdiff.evaluation.drift.measure_drift`'s reports (any objects with ``steps`` rows
        holding ``t``, ``denoiser_rel``, ``trajectory_rms``, and a ``bpd`` dict or None).
    path : str or PathLike
        A ``.png`` file.
    """
    pairs: list[tuple[str, Any]] = (
        [("variant", reports)] if hasattr(reports, "steps") else list(reports)
    )
    if not pairs or not all(len(r.steps) for _, r in pairs):
        raise ValueError("no drift rows to plot")
    with_bpd = any(r.bpd is not None for _, r in pairs)
    fig = _figure(10.0 if with_bpd else 6.0, 3.8)
    axes = fig.subplots(1, 2 if with_bpd else 1)
    ax = axes[0] if with_bpd else axes
    for k, (label, r) in enumerate(pairs):
        color = f"C{k}"
        t = [s.t for s in r.steps]
        ax.plot(
            t,
            [s.denoiser_rel for s in r.steps],
            "o-",
            color=color,
            lw=1.5,
            ms=4,
            label=f"{label}: denoiser rel. error",
        )
        ax.plot(
            t,
            [s.trajectory_rms for s in r.steps],
            "s--",
            color=color,
            lw=1.2,
            ms=3,
            label=f"{label}: trajectory RMS",
        )
    ax.set_yscale("log")
    ax.invert_xaxis()
    ax.set_xlabel("timestep of the sampler step (sampling runs left to right)")
    ax.set_ylabel("error")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7)
    if with_bpd:
        ax_b = axes[1]
        for k, (label, r) in enumerate(pairs):
            if r.bpd is None:
                continue
            terms = np.asarray(r.bpd["terms_difference"], dtype=np.float64)
            ax_b.plot(
                np.arange(terms.size),
                terms,
                "-",
                color=f"C{k}",
                lw=1.2,
                label=f"{label}: {r.bpd['difference']:+.4f} bits/dim in all",
            )
        ax_b.axhline(0.0, color="0.3", lw=0.8)
        ax_b.set_yscale("symlog", linthresh=1e-4)
        ax_b.set_xscale("symlog", linthresh=1.0)
        ax_b.set_xlim(0, terms.size - 1)
        if all(r.bpd is None or min(r.bpd["terms_difference"]) >= 0 for _, r in pairs):
            ax_b.set_ylim(bottom=0)
        ax_b.set_xlabel(_time_label(len(terms)))
        ax_b.set_ylabel("bits/dim term: variant - float32")
        ax_b.grid(True, which="both", alpha=0.3)
        ax_b.legend(fontsize=7)
    if title:
        fig.suptitle(title, fontsize=10)
    return _save(fig, path)
