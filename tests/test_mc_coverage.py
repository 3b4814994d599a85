"""The Monte-Carlo bound's error bar covers the full bound at its stated rate.

With a few uniform timesteps the estimate once missed the full bound by 8 bits/dim while its
standard error claimed 0.2: on 8-bit images the decoder L_0 and the first KL terms carry most of
the bound, and two uniform draws almost never hit them. Here, many independent replicates of an
evaluation (each N images with their own noise and timestep draws, told apart by their sample
indices) are run through the estimator, and the share of replicates whose 95 % interval
(``bits_per_dim``'s ``bpd_mc_interval``) holds the full bound of the same seed is counted:

- *uniform-noise images*: 8-bit images of independent uniform pixels, scored with the exact
  denoiser of the Gaussian with their mean and variance (what a network learns of such images: on
  8x8 images and T = 1000, a tiny U-Net trained 300 steps on them has a full bound of 9.14
  bits/dim, this denoiser 9.07), with the discretized decoder and the linear schedule;
- *the analytic oracle*: the 2-D ring of 8 Gaussians (``refdiff.toy_mixture("ring8")``) with its
  exact denoiser and learned variance, continuous decoder, where the decoder term is large and
  negative and the per-point terms are far noisier than an image's.

The fast tests (in ``make test``) run 64 replicates on 4x4 images with T = 200; the `slow` ones
400 replicates of the 8x8 images with T = 1000, for 2, 4 and 16 draws.
"""

from __future__ import annotations

import functools

import numpy as np
import pytest

import refdiff as rd
from refdiff.evaluation.likelihood import BoundParts

NOMINAL = 0.95


def _replicated(data: np.ndarray, reps: int) -> tuple[np.ndarray, np.ndarray]:
    """``reps`` copies of ``data`` [N, ...], with sample indices telling every copy apart."""
    n = data.shape[0]
    return np.concatenate([data] * reps), np.arange(reps * n, dtype=np.int64)


def _uniform_noise_case(n: int, T: int, side: int):
    s = rd.get_schedule("linear", T)
    images = np.random.default_rng(0).integers(0, 256, (n, 1, side, side))
    x = images / 127.5 - 1.0
    flat = rd.GaussianMixture.gaussian(np.zeros(side * side), float(x.std())).denoiser(s)

    def denoiser(x_t, t):
        return flat(x_t.reshape(x_t.shape[0], -1), t).reshape(x_t.shape)

    return s, denoiser, x, {"decoder": "discretized"}


def _oracle_case(n: int, T: int, side: int = 0):
    s = rd.get_schedule("linear", T)
    ring = rd.toy_mixture("ring8")
    den = ring.denoiser(s, "epsilon", "learned")
    return s, den, ring.sample(n, 0), {"decoder": "gaussian", "variance": "learned"}


CASES = {"uniform-noise images": _uniform_noise_case, "oracle": _oracle_case}


@functools.cache
def _full_bound(case: str, n: int, reps: int, T: int, side: int) -> np.ndarray:
    """The full bound of every replicate's images, [reps * n] (shared by the numbers of draws)."""
    s, den, data, settings = CASES[case](n, T, side)
    x, idx = _replicated(data, reps)
    return np.asarray(rd.variational_bound(s, den, x, sample_indices=idx, **settings).total_bpd)


def _coverage(
    case: str, n: int, reps: int, draws: int, T: int, side: int = 0
) -> tuple[float, float, float]:
    """(share of replicates whose interval holds the full bound, mean half-width, the bound)."""
    s, den, data, settings = CASES[case](n, T, side)
    x, idx = _replicated(data, reps)
    full = _full_bound(case, n, reps, T, side)
    mc = rd.variational_bound_mc(s, den, x, num_draws=draws, sample_indices=idx, **settings)
    hits, widths = 0, []
    for r in range(reps):
        part = slice(r * n, (r + 1) * n)
        summary = BoundParts(
            T=T,
            seed=0,
            num_draws=draws,
            mc_timesteps="schedule",
            mc_estimate=np.asarray(mc.estimate_bpd[part], dtype=np.float64),
            mc_var=np.asarray(mc.stderr_bpd[part], dtype=np.float64) ** 2,
            mc_groups=mc.groups,
            mc_exact=mc.exact_timesteps,
        ).summary()
        lo, hi = summary["bpd_mc_interval"]
        hits += lo <= full[part].mean() <= hi
        widths.append((hi - lo) / 2)
    return hits / reps, float(np.mean(widths)), float(full.mean())


def test_uniform_noise_images_are_covered_with_two_draws():
    """The issue's case: two draws per image, 16 uniform-noise images (the old estimator gave
    1.04 ± 0.20 where the full bound was about 9)."""
    share, half, bound = _coverage("uniform-noise images", n=16, reps=64, draws=2, T=200, side=4)
    assert bound > 8
    # 64 replicates: 0.95 - 0.85 is 3.7 binomial standard errors
    assert share >= 0.85, share
    assert half < 0.2 * bound  # an interval, not the whole axis (measured: 0.10 of it)


def test_the_oracle_is_covered():
    share, half, _ = _coverage("oracle", n=32, reps=64, draws=4, T=200)
    assert share >= 0.85, share
    assert half < 1.0  # measured: 0.65


@pytest.mark.slow
@pytest.mark.parametrize("draws", [2, 4, 16])
@pytest.mark.parametrize("case", sorted(CASES))
def test_coverage_over_many_replicates(case, draws):
    """400 replicates, T = 1000: the share covered is 0.95 or more, less at most 2 binomial
    standard errors (0.022); docs/evaluation.md quotes the shares measured."""
    n = 16 if case == "uniform-noise images" else 32
    share, half, bound = _coverage(case, n=n, reps=400, draws=draws, T=1000, side=8)
    print(
        f"{case}, {draws} draws: covered {share:.3f}, mean half-width {half:.3f}, bound {bound:.3f}"
    )
    assert share >= NOMINAL - 2 * np.sqrt(NOMINAL * (1 - NOMINAL) / 400), share
