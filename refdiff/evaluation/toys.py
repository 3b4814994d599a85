"""Exact checks on Gaussian-mixture toys, whose density is known in closed form.

- :func:`toy_mixture_report`: samples scored by the exact data density;
- :func:`toy_bound_gap`: the full bound against the exact NLL (how loose the bound is).

NumPy only: no torch.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np

from .._array import to_host
from .._checks import check_int
from ..oracle import GaussianMixture
from ..settings import Diffusion
from ._arrays import mean_and_stderr

__all__ = ["toy_bound_gap", "toy_mixture_report"]

LN2 = math.log(2.0)


def _mixture(mixture: Any) -> GaussianMixture:
    if not isinstance(mixture, GaussianMixture):
        raise TypeError(f"mixture must be a refdiff.GaussianMixture, got {type(mixture).__name__}")
    return mixture


def toy_mixture_report(
    samples: Any, mixture: Any, *, n_reference: int | None = None, seed: int = 12345
) -> dict[str, Any]:
    """Samples of a model trained on a Gaussian-mixture toy, scored by the exact data density.

    Parameters
    ----------
    samples : array_like [N, D] (or [N, ...] with D values per sample)
        Generated points, N ≥ 2.
    mixture : refdiff.GaussianMixture
        The true data distribution.
    n_reference : int, optional
        Fresh true samples for the entropy estimate (default: max(N, 10000)).
    seed : int
        Seed of those true samples.

    Returns
    -------
    dict (nats per sample unless stated)
        ``nll``, ``nll_stderr``: exact -log q(x) of the samples under the true density q.
        ``entropy``, ``entropy_stderr``: the same for true samples (a Monte-Carlo estimate of
        H(q)). ``nll_excess`` = nll - entropy, with ``nll_excess_stderr``: about 0 when the
        samples follow q; positive when they spill into low-density regions. It is *not* a
        divergence: samples squeezed onto the modes score below H(q) (negative excess), which
        ``component_shares`` (the share of samples whose most probable component is k, next to
        ``component_weights``) and ``min_share_ratio`` (min_k share_k / w_k: 0 if a mode is
        missed) reveal.
    """
    oracle = _mixture(mixture)
    x = np.asarray(to_host(samples), dtype=np.float64)
    if x.ndim < 2:
        raise ValueError(f"samples must have shape [N, D], got {x.shape}")
    x = x.reshape(x.shape[0], -1)
    if x.shape[1] != oracle.dim:
        raise ValueError(
            f"the mixture is {oracle.dim}-dimensional, the samples have {x.shape[1]} values each"
        )
    if x.shape[0] < 2:
        raise ValueError(f"need at least 2 samples, got {x.shape[0]}")
    if not np.isfinite(x).all():
        raise ValueError(f"{int(np.count_nonzero(~np.isfinite(x)))} sample values are NaN/inf")
    n_ref = max(x.shape[0], 10000) if n_reference is None else int(n_reference)
    if n_ref < 2:
        raise ValueError(f"n_reference must be >= 2, got {n_reference!r}")
    ref = oracle.sample(n_ref, seed)
    nll, nll_se = mean_and_stderr(oracle.nll(x))
    ent, ent_se = mean_and_stderr(oracle.nll(ref))

    # The most probable component of each sample (the responsibilities' argmax).
    logp = (
        np.log(oracle.weights)[None, :]
        - 0.5 * ((x[:, None, :] - oracle.means[None]) ** 2).sum(-1) / oracle.stds**2
        - oracle.dim * np.log(oracle.stds)[None, :]
    )
    shares = np.bincount(np.argmax(logp, axis=1), minlength=oracle.weights.shape[0]) / x.shape[0]
    return {
        "num_samples": int(x.shape[0]),
        "dim": oracle.dim,
        "nll": nll,
        "nll_stderr": nll_se,
        "entropy": ent,
        "entropy_stderr": ent_se,
        "nll_excess": nll - ent,
        "nll_excess_stderr": math.hypot(nll_se, ent_se),
        "component_shares": shares.tolist(),
        "component_weights": oracle.weights.tolist(),
        "min_share_ratio": float(np.min(shares / oracle.weights)),
        "num_reference": n_ref,
    }


def toy_bound_gap(
    denoiser: Callable[[Any, Any], Any],
    diffusion: Diffusion,
    mixture: Any,
    n: int,
    *,
    seed: int = 0,
    batch_size: int = 4096,
) -> dict[str, Any]:
    """How loose is the variational bound? The full bound vs the exact NLL on toy data.

    Draws ``n`` true points x_0 from ``mixture``, computes the full bound with the continuous
    Gaussian decoder (``decoder="gaussian"``: the toys are real-valued) and the exact -log q(x_0),
    and reports their difference. The bound is ≥ the NLL in expectation (Jensen), so the gap is
    ≥ 0 up to its standard error; it is the sum of KL(q(x_T) ‖ N(0, I)) and the reverse process's
    mismatch with the true one. The exact denoiser of :class:`refdiff.GaussianMixture` with
    its exact variance leaves only the prior term for a single Gaussian.

    Parameters
    ----------
    denoiser : callable
        ``(x_t, t) -> model_output`` on NumPy arrays shaped ``[B, *diffusion.image_shape]``.
    diffusion : Diffusion
        Its ``image_shape`` must hold D values (e.g. (D, 1, 1)); its decoder is ignored.
    mixture : refdiff.GaussianMixture
        The data distribution.
    n : int
        Points, ≥ 2.
    seed : int
        Seed of the points and of the bound's noise.
    batch_size : int
        Points per denoiser call.

    Returns
    -------
    dict
        ``bound``, ``nll``, ``gap`` (means, nats per point), ``gap_stderr``, and ``gap_bpd`` (the
        gap in bits per dimension), ``prior_bpd``.
    """
    oracle = _mixture(mixture)
    n = check_int(n, "n", minimum=2)
    shape = tuple(diffusion.image_shape)
    if math.prod(shape) != oracle.dim:
        raise ValueError(
            f"the model's image_shape {shape} holds {math.prod(shape)} values, the mixture is "
            f"{oracle.dim}-dimensional"
        )
    x0 = oracle.sample(n, seed)
    # the toys are real-valued: the continuous Gaussian decoder, whatever the settings say
    continuous = diffusion.replace(decoder="gaussian")
    bound, prior = [], []
    for i in range(0, n, batch_size):
        chunk = x0[i : i + batch_size]
        res = continuous.bound(
            denoiser,
            chunk.reshape(chunk.shape[0], *shape),
            seed=seed,
            sample_indices=np.arange(i, i + chunk.shape[0], dtype=np.int64),
        )
        bound.append(np.asarray(res.total_bpd, dtype=np.float64))
        prior.append(np.asarray(res.prior_bpd, dtype=np.float64))
    bound_nats = np.concatenate(bound) * oracle.dim * LN2
    nll = oracle.nll(x0)
    gap, gap_se = mean_and_stderr(bound_nats - nll)
    return {
        "num_points": n,
        "dim": oracle.dim,
        "bound": float(bound_nats.mean()),
        "nll": float(nll.mean()),
        "gap": gap,
        "gap_stderr": gap_se,
        "gap_bpd": gap / (oracle.dim * LN2),
        "prior_bpd": float(np.concatenate(prior).mean()),
    }
