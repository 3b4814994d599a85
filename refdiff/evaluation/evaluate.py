"""Evaluate a model: the one entry point that the trainer, ``refdiff eval`` and ``refdiff demo`` call.

:func:`evaluate` scores a denoiser on held-out images: bits/dim through the core's bound (the full
pass and/or the Monte-Carlo estimate), the independent-pixel baseline on the same images, and,
given samples, their quality (for the digits: a Fréchet distance on a scale with confidence and
class coverage; for any images: the memorisation check). It returns one JSON-ready report.

A process evaluating a shard of the images (the trainer under torchrun) passes ``shard`` and a
``gather`` that concatenates arrays over the processes; every process then gets the report of the
whole set. Processes that share no process group (``refdiff eval --shard``) each call
:func:`score_images` and write its per-image scores; :mod:`refdiff.evaluation.shards` joins the files into the
same report, bit for bit.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import numpy as np

from .._docstrings import parameters_from
from ..baseline import IndependentPixelModel
from ..bound import mc_plan
from ..data import check_uint8_images
from ..runtime.sampling import shard_range
from ..settings import Diffusion
from .likelihood import bound_parts, importance_timestep_probs
from .quality import digits_sample_quality, memorisation_report
from .shards import ImageScores

__all__ = ["PILOT_IMAGES", "evaluate", "score_images"]

#: Training images of the pilot run that sets the Monte-Carlo estimate's timestep distribution.
PILOT_IMAGES = 16

MC_TIMESTEPS = ("schedule", "importance")


def evaluate(
    denoiser: Callable[[Any, Any], Any],
    diffusion: Diffusion,
    heldout_uint8: np.ndarray,
    *,
    train_uint8: np.ndarray,
    samples_uint8: np.ndarray | None = None,
    reference_uint8: np.ndarray | None = None,
    digits: bool = False,
    full: bool = True,
    num_draws: int = 16,
    mc_timesteps: str = "schedule",
    batch_size: int = 64,
    seed: int = 0,
    progress: bool = True,
    shard: tuple[int, int] | None = None,
    gather: Callable[[np.ndarray], np.ndarray] | None = None,
    xp: Any = None,
    device: Any = None,
    announce: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Bits/dim, the baseline and sample quality of a model, as one report.

    Parameters
    ----------
    denoiser : callable
        ``(x_t, t) -> model_output`` on arrays of namespace ``xp`` (default: ``denoiser.xp`` or
        NumPy), ``t`` the indices of the model's own schedule.
    diffusion : Diffusion
        The model's settings.
    heldout_uint8 : numpy.ndarray
        uint8 [N, C, H, W]: the images scored by the bound (and the baseline).
    train_uint8 : numpy.ndarray
        The training images: the baseline is fitted on them, the pilot of the importance-sampled
        estimate runs on the first :data:`PILOT_IMAGES`, and samples are compared with them.
    samples_uint8 : numpy.ndarray, optional
        Generated images: adds ``sample_quality``.
    reference_uint8 : numpy.ndarray, optional
        Real held-out images the samples are compared with (default ``heldout_uint8``).
    digits : bool
        The images are scikit-learn's digits: sample quality in the digits classifier's features
        (Fréchet distance with floor and ceiling, confidence, coverage) besides memorisation.
    full, num_draws, batch_size, seed, progress
        As :func:`refdiff.evaluation.bound_parts`.
    mc_timesteps : {"schedule", "importance"}
        The proposal of the Monte-Carlo estimate's timesteps (:func:`refdiff.mc_plan`): the
        schedule's envelope of the bound's terms (no extra cost), or p(t) ∝ √E[L_t²] from a pilot
        run of the full bound on :data:`PILOT_IMAGES` training images (T more network calls on
        that batch; less noise). Uniform timesteps are not offered: a few uniform draws miss the
        small t that carry most of the bound, and their standard error does not show it.
    shard : (rank, world), optional
        Score only this process's part of ``heldout_uint8`` (the contiguous block
        ``shard_range(N, shard)``, as sampling's shards); with ``gather`` the report covers all
        of it.
    gather : callable, optional
        Concatenates a NumPy array over the processes in rank order (needed with ``shard``).
    xp, device : optional
        The array namespace (and device) the denoiser takes; default ``denoiser.xp`` or NumPy.
    announce : callable, optional
        Called with one line saying what each long stage does and costs, before it starts.

    Returns
    -------
    dict
        ``bits_per_dim`` (:func:`~refdiff.evaluation.bits_per_dim`'s summary), ``baseline``
        (``bpd`` and ``bpd_stderr`` of the independent-pixel model on the same images),
        ``sample_quality`` (or None) and ``seconds`` per part.
    """
    heldout = check_uint8_images(heldout_uint8, "held-out images")
    train = check_uint8_images(train_uint8, "training images")
    if shard is not None and gather is None:
        raise ValueError("a sharded evaluation needs gather= to join the shards")
    parts = score_images(
        denoiser,
        diffusion,
        heldout,
        train_uint8=train,
        full=full,
        num_draws=num_draws,
        mc_timesteps=mc_timesteps,
        batch_size=batch_size,
        seed=seed,
        progress=progress,
        shard=shard,
        xp=xp,
        device=device,
        announce=announce,
    )
    if gather is not None:
        parts = parts.join(gather)
    seconds = dict(parts.seconds)
    report: dict[str, Any] = {**parts.report(), "sample_quality": None, "seconds": seconds}
    if samples_uint8 is not None:
        t0 = time.perf_counter()
        samples = check_uint8_images(samples_uint8, "samples")
        reference = (
            heldout if reference_uint8 is None else check_uint8_images(reference_uint8, "reference")
        )
        if digits:
            quality = digits_sample_quality(samples, train=train, test=reference)
        else:
            quality = memorisation_report(samples, train=train, heldout=reference)
        report["sample_quality"] = quality
        seconds["sample_quality"] = time.perf_counter() - t0
    return report


@parameters_from(evaluate)
def score_images(
    denoiser: Callable[[Any, Any], Any],
    diffusion: Diffusion,
    heldout_uint8: np.ndarray,
    *,
    train_uint8: np.ndarray,
    full: bool = True,
    num_draws: int = 16,
    mc_timesteps: str = "schedule",
    batch_size: int = 64,
    seed: int = 0,
    progress: bool = True,
    shard: tuple[int, int] | None = None,
    xp: Any = None,
    device: Any = None,
    announce: Callable[[str], None] | None = None,
) -> ImageScores:
    """The per-image bound and baseline of ``heldout_uint8``, or of its ``shard``: the part of
    :func:`evaluate` that one process of a sharded evaluation computes; the parameters are its.

    Shard ``(K, N)`` scores the contiguous block ``shard_range(len(heldout_uint8), (K, N))``
    of the images, as sampling's shards; image i's noise depends on (seed, i) only. With
    ``full=False`` and ``num_draws=0`` only the baseline is scored.

    Parameters
    ----------
    shard : (K, N), optional
        Score only block K (from 0) of N of ``heldout_uint8``; default all of it.

    Returns
    -------
    ImageScores
        The shard's images' global indices, the bound's pieces per image (None when neither
        the full bound nor draws were asked for), the baseline's bits/dim, the Monte-Carlo
        estimate's timestep distribution and the seconds of each part.
    """
    heldout = check_uint8_images(heldout_uint8, "held-out images")
    train = check_uint8_images(train_uint8, "training images")
    if mc_timesteps == "uniform":
        raise ValueError(
            "uniform Monte-Carlo timesteps are not offered: a few uniform draws miss the small t "
            "that carry most of the bound, and their standard error does not show it; use "
            "'schedule' (the default) or 'importance'"
        )
    if mc_timesteps not in MC_TIMESTEPS:
        raise ValueError(f"mc_timesteps must be one of {MC_TIMESTEPS}, got {mc_timesteps!r}")
    say = announce if announce is not None else (lambda _: None)
    T = diffusion.num_timesteps
    seconds: dict[str, float] = {}
    common = {"xp": xp, "device": device}

    probs = None
    if num_draws and mc_timesteps == "importance":
        # Pilot on training images, not the evaluated ones: p(t) stays independent of them.
        t0 = time.perf_counter()
        say(
            f"pilot of the importance-sampled estimate: the full bound on "
            f"{min(PILOT_IMAGES, train.shape[0])} training images, {T} network calls"
        )
        probs = importance_timestep_probs(
            denoiser, diffusion, train[:PILOT_IMAGES], seed=seed + 1, progress=progress, **common
        )
        seconds["mc_pilot"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    start, stop = shard_range(heldout.shape[0], shard, what="images")
    indices = np.arange(start, stop, dtype=np.int64)
    batches = -(-len(indices) // batch_size)
    if full:
        say(
            f"full bound: {T} network calls per batch, {batches} batch(es) of up to {batch_size} "
            f"of {len(indices)} images: {T * batches} calls"
        )
    if num_draws:
        plan = mc_plan(diffusion.schedule, num_draws, probs, diffusion.data_range)
        calls = plan.exact.size + (num_draws if plan.tail.size else 0)
        cost = "read from the full bound's terms" if full else f"{calls * batches} calls"
        say(
            f"Monte-Carlo estimate ({mc_timesteps} proposal): {plan.exact.size} exact term(s) "
            f"and {num_draws if plan.tail.size else 0} drawn per image: {cost}"
        )
    parts = None
    if full or num_draws:
        parts = bound_parts(
            denoiser,
            diffusion,
            heldout[start:stop],
            full=full,
            num_draws=num_draws,
            batch_size=batch_size,
            seed=seed,
            progress=progress,
            timestep_probs=probs,
            indices=indices,
            **common,
        )
        seconds["bits_per_dim"] = time.perf_counter() - t0
    base = IndependentPixelModel().fit(train).bits_per_dim(heldout[start:stop])
    return ImageScores(indices, parts, base, probs, seconds)
