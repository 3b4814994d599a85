"""The Gaussian-mixture data: sampling by (seed, index), presets, density and score, noising,
validation."""

from __future__ import annotations

import numpy as np
import pytest

from refdiff import GaussianMixture, toy_mixture


@pytest.mark.parametrize("name", ["ring8", "bimodal1d"])
def test_mixture_samples_depend_only_on_seed_and_index(name):
    mix = toy_mixture(name)
    np.testing.assert_array_equal(mix.sample(10, 7)[:5], mix.sample(5, 7))
    big = mix.sample(2500, 7)  # crosses the internal block boundaries
    np.testing.assert_array_equal(big[:1500], mix.sample(1500, 7))
    np.testing.assert_array_equal(big[:1], mix.sample(1, 7))
    assert big.dtype == np.float64 and big.shape == (2500, mix.dim)
    assert not np.array_equal(mix.sample(5, 8), mix.sample(5, 7))
    assert mix.sample(0, 7).shape == (0, mix.dim)


def test_mixture_presets():
    ring = toy_mixture("ring8")
    assert ring.dim == 2 and len(ring.weights) == 8
    np.testing.assert_allclose(np.linalg.norm(ring.means, axis=1), 0.7)
    x = ring.sample(4000, 0)
    np.testing.assert_allclose(np.linalg.norm(x, axis=1).mean(), 0.7, atol=0.01)

    bi = toy_mixture("bimodal1d")
    y = bi.sample(4000, 0)[:, 0]
    # Gaussians are unbounded; what matters is that mean +- 3 std stays inside [-1, 1].
    for mix in (ring, bi):
        assert (np.abs(mix.means) + 3 * mix.stds[:, None]).max() < 1
    # P(y > 0) = 0.3 P(N(-0.5, 0.15^2) > 0) + 0.7 P(N(0.5, 0.15^2) > 0) = 0.7 - 4e-4 * 0.4;
    # the binomial sd at n = 4000 is 0.0072, so 5 sd is 0.036.
    assert abs(np.mean(y > 0) - 0.7) < 0.036
    with pytest.raises(ValueError, match=r"known: \['bimodal1d', 'ring8'\]"):
        toy_mixture("moons")


def test_mixture_density_score_and_noising():
    mix = toy_mixture("bimodal1d")
    grid = np.linspace(-3, 3, 6001)[:, None]
    density = np.exp(mix.log_prob(grid))
    np.testing.assert_allclose(np.sum(density) * (grid[1, 0] - grid[0, 0]), 1.0, rtol=1e-6)
    pts = np.array([[-0.7], [0.0], [0.31]])
    h = 1e-5
    finite_diff = (mix.log_prob(pts + h) - mix.log_prob(pts - h)) / (2 * h)
    np.testing.assert_allclose(mix.score(pts)[:, 0], finite_diff, rtol=1e-6)

    same = mix.noised(1.0)
    np.testing.assert_allclose(same.stds, mix.stds)
    noisy = toy_mixture("ring8").noised(0.25)
    np.testing.assert_allclose(noisy.means, 0.5 * toy_mixture("ring8").means)
    np.testing.assert_allclose(noisy.stds, np.sqrt(0.25 * 0.05**2 + 0.75))
    with pytest.raises(ValueError, match="alpha_bar"):
        mix.noised(0.0)


@pytest.mark.parametrize(
    ("weights", "means", "stds", "match"),
    [
        ([0.5, 0.6], [[0.0], [1.0]], [1.0, 1.0], "sum to 1"),
        ([1.5, -0.5], [[0.0], [1.0]], [1.0, 1.0], "positive"),
        ([0.5, 0.5], [[0.0], [1.0]], [1.0, 0.0], "stds must be positive"),
        ([0.5, 0.5], [0.0, 1.0], [1.0, 1.0], r"means must have shape \[2, D\]"),
        ([0.5, 0.5], [[0.0], [1.0]], [1.0], r"stds must have shape \[2\]"),
        ([1.0], [[np.nan]], [1.0], "finite"),
    ],
)
def test_mixture_validation(weights, means, stds, match):
    with pytest.raises(ValueError, match=match):
        GaussianMixture(weights, means, stds)


def test_mixture_arrays_are_read_only_copies():
    means = np.array([[0.0, 0.0]])
    mix = GaussianMixture([1.0], means, [0.1])
    means[0, 0] = 5.0
    assert mix.means[0, 0] == 0.0
    with pytest.raises(ValueError, match="read-only"):
        mix.means[0, 0] = 1.0


def test_probability_flow_solves_the_ode_and_composes():
    """The closed-form flow of a Gaussian satisfies the probability-flow ODE dx̃/dσ̃ = E[ε | x]
    (x̃ = x/√ᾱ, σ̃ = √((1-ᾱ)/ᾱ); central differences) and composes: a→b→c = a→c, b→a undoes a→b."""
    from refdiff import Schedule

    g = GaussianMixture.gaussian([0.3, -0.2, 0.5], 0.7)
    x = np.random.default_rng(0).standard_normal((16, 3))
    a = 0.4
    sigma = np.sqrt((1 - a) / a)
    h = 1e-4

    def at(sig):  # the flow from ᾱ = a to the ᾱ of σ̃ = sig, in Karras' scaled variable x/√ᾱ
        ab = 1.0 / (1.0 + sig**2)
        return g.probability_flow(x, a, ab) / np.sqrt(ab)

    slope = (at(sigma + h) - at(sigma - h)) / (2 * h)
    eps = g.predict(Schedule([1 - a]), x, np.zeros(16, dtype=np.int64), "epsilon")
    np.testing.assert_allclose(slope, eps, rtol=1e-7, atol=1e-8)
    b, c = 0.9, 0.05
    np.testing.assert_allclose(
        g.probability_flow(g.probability_flow(x, a, b), b, c), g.probability_flow(x, a, c)
    )
    np.testing.assert_allclose(g.probability_flow(g.probability_flow(x, a, b), b, a), x)
    with pytest.raises(ValueError, match="single Gaussian"):
        toy_mixture("ring8").probability_flow(np.zeros((1, 2)), 0.5, 0.6)
    with pytest.raises(ValueError, match=r"alpha_bar must lie in \(0, 1\], got 0.0"):
        g.probability_flow(x, 0.0, 0.5)
