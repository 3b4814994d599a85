"""Likelihood: held-out bits/dim of a diffusion model through the core's variational bound.

:func:`bits_per_dim` gives the full pass over all T steps (:meth:`refdiff.Diffusion.bound`) and
the unbiased Monte-Carlo estimate (:meth:`refdiff.Diffusion.bound_mc`) with its standard error,
plus the mean per-timestep terms (where in t the bits are spent); :func:`importance_timestep_probs`
sets the estimate's timestep distribution from a pilot run.

A denoiser is any callable ``(x_t, t) -> model_output`` (the ONNX runtime's
:class:`~refdiff.runtime.OnnxDenoiser`, or a PyTorch model on torch tensors). No torch here.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import special

from .._array import to_host
from .._deps import require
from ..bound import mc_estimate_from_terms, mc_plan
from ..data import check_uint8_images, to_model_range
from ..settings import Diffusion
from ._arrays import mean_and_stderr

__all__ = ["BoundParts", "bits_per_dim", "bound_parts", "importance_timestep_probs"]


def bits_per_dim(
    denoiser: Callable[[Any, Any], Any],
    diffusion: Diffusion,
    images_uint8: np.ndarray,
    **options: Any,
) -> dict[str, Any]:
    """Bits/dim of 8-bit images under a diffusion model, through the core's variational bound.

    Parameters
    ----------
    denoiser : callable
        ``(x_t, t) -> model_output`` on arrays of namespace ``xp``, with ``t`` the timestep indices
        of the model's own schedule (``diffusion.schedule``).
    diffusion : Diffusion
        The model's settings: schedule, prediction, variance, decoder, clipping, image shape.
    images_uint8 : numpy.ndarray
        ``uint8 [N, C, H, W]`` with ``(C, H, W) == diffusion.image_shape``.
    **options
        The keyword arguments of :func:`bound_parts`: ``full``, ``num_draws``, ``batch_size``,
        ``seed``, ``progress``, ``timestep_probs``, ``indices``, ``dtype``, ``xp``, ``device``.

    Returns
    -------
    dict
        ``bpd_full`` (mean over images) and ``bpd_full_stderr`` (its standard error over the
        images), ``prior_bpd`` (L_T), ``terms_bpd`` (float64 [T]: the mean of each L_t in bits/dim,
        index t as in the code, so ``terms_bpd[0]`` is the decoder term L_0) and ``x0_mse``
        ([T]); ``bpd_mc`` and ``bpd_mc_stderr`` (the Monte-Carlo noise of that estimate:
        sqrt(Σ_i se_i²) / N, how far it may be from the full bound of the same seed on these
        images), ``bpd_mc_interval`` (its 95 % interval: ± Student's t quantile at the
        Welch-Satterthwaite degrees of freedom ``mc_dof`` times the standard error),
        ``mc_exact_timesteps`` and ``mc_calls_per_image`` (see :func:`refdiff.mc_plan`);
        ``None`` for parts not computed. Also ``num_images``, ``num_draws``, ``T`` and the
        seconds each part took.
    """
    return bound_parts(denoiser, diffusion, images_uint8, **options).summary()


@dataclass
class BoundParts:
    """The bound's pieces per image (float64 NumPy), before they are averaged. Shards of one
    evaluation are joined with :meth:`join` (in one run of processes) or :meth:`concat` (from
    files); every average is then taken over the joined per-image arrays in image order, so the
    figures of any split equal those of one process bit for bit.

    Attributes
    ----------
    T : int
        The number of steps of the model's schedule.
    seed : int
        The seed of the bound's noise.
    num_draws : int
        Timesteps per image of the Monte-Carlo estimate (0: not computed).
    mc_timesteps : str
        ``"schedule"`` or ``"importance"``: the proposal the estimate drew its timesteps from.
    indices : int64 array [N] or None
        The global indices of the images.
    total, prior : float64 array [N] or None
        The full bound per image and its prior term L_T, in bits/dim.
    terms, mse : float64 array [N, T] or None
        Each image's L_t and x̂_0 error per timestep (None without the full pass).
    mc_estimate, mc_var : float64 array [N] or None
        The Monte-Carlo estimate per image and its variance.
    mc_groups : int
        The pairs of strata each image's variance comes from (its degrees of freedom).
    mc_exact : tuple of int
        The timesteps the estimate computed exactly for every image.
    seconds_full, seconds_mc : float or None
        How long each part took.
    """

    T: int
    seed: int
    num_draws: int
    mc_timesteps: str
    indices: np.ndarray | None = None
    total: np.ndarray | None = None
    prior: np.ndarray | None = None
    terms: np.ndarray | None = None
    mse: np.ndarray | None = None
    mc_estimate: np.ndarray | None = None
    mc_var: np.ndarray | None = None
    mc_groups: int = 0
    mc_exact: tuple[int, ...] = ()
    seconds_full: float | None = None
    seconds_mc: float | None = None

    @property
    def num_images(self) -> int:
        arr = self.total if self.total is not None else self.mc_estimate
        return 0 if arr is None else int(arr.shape[0])

    #: The per-image arrays (first axis: the images), what shards join.
    PER_IMAGE = ("indices", "total", "prior", "terms", "mse", "mc_estimate", "mc_var")

    @property
    def terms_sum(self) -> np.ndarray | None:
        """Σ over the images of each L_t [T], in image order (None without the full pass)."""
        return None if self.terms is None else self.terms.sum(axis=0)

    @property
    def mse_sum(self) -> np.ndarray | None:
        """Σ over the images of each timestep's x̂₀ MSE [T], in image order."""
        return None if self.mse is None else self.mse.sum(axis=0)

    def join(self, gather: Callable[[np.ndarray], np.ndarray]) -> BoundParts:
        """The parts of the whole evaluation, from this process's: ``gather`` concatenates an
        array of every process in rank order (the identity in one process)."""
        joined: dict[str, Any] = {
            k: None if getattr(self, k) is None else gather(getattr(self, k))
            for k in self.PER_IMAGE
        }
        if joined["indices"] is not None:
            joined["indices"] = joined["indices"].astype(np.int64)  # a gather may pass floats
        return dataclasses.replace(self, **joined)

    @classmethod
    def concat(cls, parts: list[BoundParts]) -> BoundParts:
        """The parts of several shards (already in image order) as one; the scalar fields and
        the seconds are the first's and the sums of all."""
        first = parts[0]
        joined: dict[str, Any] = {
            k: None if getattr(first, k) is None else np.concatenate([getattr(p, k) for p in parts])
            for k in cls.PER_IMAGE
        }
        seconds: dict[str, Any] = {
            k: None if getattr(first, k) is None else sum(getattr(p, k) or 0.0 for p in parts)
            for k in ("seconds_full", "seconds_mc")
        }
        return dataclasses.replace(first, **joined, **seconds)

    def summary(self) -> dict[str, Any]:
        """The averages over the images: see :func:`bits_per_dim`."""
        n = self.num_images
        result: dict[str, Any] = {
            "num_images": n,
            "T": self.T,
            "seed": self.seed,
            "num_draws": self.num_draws,
            "mc_timesteps": self.mc_timesteps,
            "bpd_full": None,
            "bpd_full_stderr": None,
            "prior_bpd": None,
            "terms_bpd": None,
            "x0_mse": None,
            "bpd_mc": None,
            "bpd_mc_stderr": None,
            "bpd_mc_interval": None,
            "mc_dof": None,
            "mc_exact_timesteps": None,
            "mc_calls_per_image": None,
            "seconds_full": self.seconds_full,
            "seconds_mc": self.seconds_mc,
        }
        if self.total is not None:
            terms_sum, mse_sum = self.terms_sum, self.mse_sum
            # the full pass makes all four
            assert self.prior is not None and terms_sum is not None and mse_sum is not None
            result["bpd_full"], result["bpd_full_stderr"] = mean_and_stderr(self.total)
            result["prior_bpd"] = float(self.prior.mean())
            result["terms_bpd"] = terms_sum / n
            result["x0_mse"] = mse_sum / n
        if self.mc_estimate is not None:
            mean, var = float(self.mc_estimate.mean()), self.mc_var
            assert var is not None  # the estimate comes with its variance
            se = math.sqrt(var.sum()) / n
            # Welch-Satterthwaite: the images' variance estimates, mc_groups d.o.f. each
            dof = var.sum() ** 2 / ((var**2).sum() / self.mc_groups) if var.sum() > 0 else math.inf
            half = float(special.stdtrit(dof, 0.975)) * se if se > 0 else 0.0  # Student t
            result["bpd_mc"], result["bpd_mc_stderr"] = mean, se
            result["bpd_mc_interval"] = [mean - half, mean + half]
            result["mc_dof"] = float(dof)
            result["mc_exact_timesteps"] = list(self.mc_exact)
            drawn = self.num_draws if len(self.mc_exact) < self.T else 0
            result["mc_calls_per_image"] = len(self.mc_exact) + drawn
        return result


def bound_parts(
    denoiser: Callable[[Any, Any], Any],
    diffusion: Diffusion,
    images_uint8: np.ndarray,
    *,
    full: bool = True,
    num_draws: int = 16,
    batch_size: int = 64,
    seed: int = 0,
    progress: bool = True,
    timestep_probs: np.ndarray | None = None,
    indices: Any = None,
    dtype: Any = np.float32,
    xp: Any = None,
    device: Any = None,
) -> BoundParts:
    """The per-image pieces of :func:`bits_per_dim`, not yet averaged.

    Parameters
    ----------
    denoiser : callable
        ``(x_t, t) -> model_output`` on arrays of namespace ``xp``, with ``t`` the timestep indices
        of the model's own schedule (``diffusion.schedule``).
    diffusion : Diffusion
        The model's settings: schedule, prediction, variance, decoder, clipping, image shape.
    images_uint8 : numpy.ndarray
        ``uint8 [N, C, H, W]`` with ``(C, H, W) == diffusion.image_shape``.
    full : bool
        Compute the full bound (all T terms per image: T denoiser calls per batch).
    num_draws : int
        Timesteps per image of the Monte-Carlo estimate (≥ 2), or 0 to skip it.
    batch_size : int
        Images per denoiser call.
    seed : int
        Seed of the bound's noise; image i's noise depends on (seed, i) only, so results do not
        depend on ``batch_size``. The trainer's periodic evaluation uses seed 0 too.
    progress : bool
        Show a tqdm progress bar (on stderr).
    timestep_probs : array_like [T], optional
        Proposal of the Monte-Carlo estimate's timesteps (positive, summing to 1; see
        :func:`importance_timestep_probs`); default the schedule's envelope
        (:func:`refdiff.mc_plan`). Either way it is unbiased. With the full pass, the estimate
        reads its terms from it (:func:`refdiff.mc_estimate_from_terms`: no more calls).
    indices : array_like of int [N], optional
        The global index of each image (its noise depends on (seed, index)); default 0 … N-1.
        A process evaluating a shard of a larger set passes its images' indices.
    dtype : floating dtype
        The dtype of the data given to the bound (float32, as the models are trained).
    xp, device : optional
        The array namespace (and device) the denoiser takes; default: ``denoiser.xp`` when the
        denoiser has one (the ONNX runtime does), else NumPy.

    Returns
    -------
    BoundParts
        The per-image bound, its per-timestep sums and the Monte-Carlo estimate (float64 NumPy).
    """
    images = check_uint8_images(images_uint8, "images")
    shape = tuple(diffusion.image_shape)
    if tuple(images.shape[1:]) != shape:
        raise ValueError(
            f"the model takes images of shape (C, H, W) = {shape}, but the images have shape "
            f"{tuple(images.shape[1:])}"
        )
    n = images.shape[0]
    if n < 1:
        raise ValueError("need at least one image")
    if (
        isinstance(num_draws, bool)
        or not isinstance(num_draws, int)
        or num_draws == 1
        or num_draws < 0
    ):
        raise ValueError(f"num_draws must be 0 (skip) or an int >= 2, got {num_draws!r}")
    if not full and num_draws == 0:
        raise ValueError("nothing to compute: full=False and num_draws=0")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    index = np.arange(n, dtype=np.int64) if indices is None else np.asarray(indices)
    if index.shape != (n,) or index.dtype.kind not in "iu":
        raise ValueError(
            f"indices must be {n} integers, one per image, got {index.dtype} {index.shape}"
        )
    if xp is None:
        xp = getattr(denoiser, "xp", None)
    if xp is None:
        import array_api_compat.numpy as xp
    tqdm = require("tqdm", "eval", "progress bars").tqdm

    T = diffusion.num_timesteps
    x_all = to_model_range(images, dtype)
    starts = range(0, n, batch_size)
    plan = (
        mc_plan(diffusion.schedule, num_draws, timestep_probs, diffusion.data_range)
        if num_draws
        else None
    )
    mc_calls = 0 if plan is None else plan.exact.size + (num_draws if plan.tail.size else 0)
    # with the full pass, the estimate reads its terms from it (the same x_t): no extra calls
    total = len(starts) * (T if full else mc_calls)
    bar = tqdm(total=total, desc="bits/dim", unit="call", disable=not progress, leave=False)

    def tick(*_: Any) -> None:
        bar.update(1)

    def arr(a: np.ndarray) -> Any:
        return xp.asarray(a) if device is None else xp.asarray(a, device=device)

    def batches() -> Iterator[tuple[Any, Any]]:
        for i in starts:
            x = arr(x_all[i : i + batch_size])
            yield x, arr(index[i : i + x.shape[0]].astype(np.int64))

    parts = BoundParts(
        T=T,
        seed=seed,
        num_draws=num_draws,
        mc_timesteps="schedule" if timestep_probs is None else "importance",
        indices=index.astype(np.int64),
    )
    try:
        est, var, mc = [], [], None
        if full:
            t0 = time.perf_counter()
            totals, priors, terms, mses = [], [], [], []
            for x, idx in batches():
                res = diffusion.bound(denoiser, x, seed=seed, sample_indices=idx, progress=tick)
                totals.append(to_host(res.total_bpd).astype(np.float64))
                priors.append(to_host(res.prior_bpd).astype(np.float64))
                terms.append(to_host(res.terms_bpd).astype(np.float64))
                mses.append(to_host(res.x0_mse).astype(np.float64))
                if num_draws:
                    mc = mc_estimate_from_terms(
                        diffusion.schedule,
                        res.terms_bpd,
                        res.prior_bpd,
                        num_draws=num_draws,
                        timestep_probs=timestep_probs,
                        data_range=diffusion.data_range,
                        seed=seed,
                        sample_indices=idx,
                    )
                    est.append(to_host(mc.estimate_bpd).astype(np.float64))
                    var.append(to_host(mc.stderr_bpd).astype(np.float64) ** 2)
            parts.total, parts.prior = np.concatenate(totals), np.concatenate(priors)
            parts.terms, parts.mse = np.concatenate(terms), np.concatenate(mses)
            parts.seconds_full = time.perf_counter() - t0
        elif num_draws:
            t0 = time.perf_counter()
            for x, idx in batches():
                mc = diffusion.bound_mc(
                    denoiser,
                    x,
                    num_draws=num_draws,
                    timestep_probs=timestep_probs,
                    seed=seed,
                    sample_indices=idx,
                    progress=tick,
                )
                est.append(to_host(mc.estimate_bpd).astype(np.float64))
                var.append(to_host(mc.stderr_bpd).astype(np.float64) ** 2)
            parts.seconds_mc = time.perf_counter() - t0
        if mc is not None:
            parts.mc_estimate, parts.mc_var = np.concatenate(est), np.concatenate(var)
            parts.mc_groups, parts.mc_exact = mc.groups, mc.exact_timesteps
    finally:
        bar.close()
    return parts


def importance_timestep_probs(
    denoiser: Callable[[Any, Any], Any],
    diffusion: Diffusion,
    pilot_uint8: np.ndarray,
    *,
    uniform_share: float = 0.1,
    seed: int = 1,
    dtype: Any = np.float32,
    xp: Any = None,
    device: Any = None,
    progress: bool = False,
) -> np.ndarray:
    """A timestep distribution for the Monte-Carlo bound, from a pilot run of the full bound.

    The variance of L_t / p(t) is smallest for p(t) ∝ √E[L_t²] (the rule of improved DDPM's
    loss-second-moment sampler). The second moments are measured on a few pilot images, which
    should not be the images evaluated (training images, say), so that p stays independent of
    them and the estimate unbiased; a ``uniform_share`` of uniform probability is mixed in so that
    no timestep is starved. Costs T denoiser calls on the pilot batch.

    Parameters
    ----------
    denoiser : callable
        ``(x_t, t) -> model_output`` on arrays of namespace ``xp``.
    diffusion : Diffusion
        The model's settings.
    pilot_uint8 : numpy.ndarray
        ``uint8 [P, C, H, W]`` pilot images (not the ones to be evaluated).
    uniform_share : float
        The share of uniform probability mixed in, in (0, 1].
    seed : int
        Seed of the pilot's bound noise.
    dtype : floating dtype
        The dtype of the data given to the bound.
    xp, device : optional
        The array namespace (and device) the denoiser takes; default ``denoiser.xp`` or NumPy.
    progress : bool
        Show a tqdm bar over the pilot's T calls (on stderr).

    Returns
    -------
    numpy.ndarray
        float64 [T], positive, summing to 1: ``timestep_probs`` of :func:`bits_per_dim`.
    """
    pilot = check_uint8_images(pilot_uint8, "pilot images")
    if tuple(pilot.shape[1:]) != tuple(diffusion.image_shape) or pilot.shape[0] < 1:
        raise ValueError(
            f"need at least one pilot image of shape {tuple(diffusion.image_shape)}, got "
            f"{tuple(pilot.shape)}"
        )
    if not 0.0 < float(uniform_share) <= 1.0:
        raise ValueError(f"uniform_share must lie in (0, 1], got {uniform_share!r}")
    if xp is None:
        xp = getattr(denoiser, "xp", None)
    if xp is None:
        import array_api_compat.numpy as xp
    x = to_model_range(pilot, dtype)
    x = xp.asarray(x) if device is None else xp.asarray(x, device=device)
    tqdm = require("tqdm", "eval", "progress bars").tqdm
    T = diffusion.num_timesteps
    with tqdm(total=T, desc="pilot", unit="call", disable=not progress, leave=False) as bar:
        res = diffusion.bound(denoiser, x, seed=seed, progress=lambda *_: bar.update(1))
    terms = to_host(res.terms_bpd).astype(np.float64)  # [B, T]
    rms = np.sqrt(np.mean(np.clip(terms, 0.0, None) ** 2, axis=0))
    shaped = rms / rms.sum() if rms.sum() > 0 else np.full(T, 1.0 / T)
    probs = (1.0 - uniform_share) * shaped + uniform_share / T
    return probs / probs.sum()
