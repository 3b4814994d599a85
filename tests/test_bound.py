"""The variational bound against the analytic oracle: it is a bound, and it is tight when exact."""

from __future__ import annotations

import math

import numpy as np
import pytest
from conftest import assert_close

import refdiff as rd
from refdiff import GaussianMixture, get_schedule

LN2 = math.log(2)


@pytest.fixture(scope="module")
def gauss():
    oracle = GaussianMixture.gaussian([0.3, -0.2], 0.2)
    x0 = oracle.sample(512, np.random.default_rng(0))
    return oracle, x0


def _exact_nll_bpd(oracle, x0):
    return oracle.nll(x0) / (oracle.dim * LN2)


def test_bound_equals_nll_with_exact_reverse_process(gauss):
    """Gaussian data + exact mean and exact reverse variance: p_θ is the true reverse process, so
    E[bound] = NLL + KL(q(x_T) ‖ N(0, I)) exactly; checked within Monte-Carlo error."""
    oracle, x0 = gauss
    s = get_schedule("linear", 1000)
    res = rd.variational_bound(
        s, oracle.denoiser(s, "epsilon", "learned"), x0, variance="learned", decoder="gaussian"
    )
    diff = res.total_bpd - _exact_nll_bpd(oracle, x0)
    prior_gap = oracle.prior_mismatch_kl(s) / (oracle.dim * LN2)
    se = diff.std(ddof=1) / math.sqrt(len(diff))
    assert abs(diff.mean() - prior_gap) < 4 * se + 1e-9
    assert se < 0.05  # the test has power
    np.testing.assert_allclose(res.total_bpd, res.prior_bpd + res.terms_bpd.sum(1), rtol=1e-12)
    assert res.terms_bpd.shape == (512, 1000) and res.x0_mse.shape == (512, 1000)


@pytest.mark.parametrize("variance", ["fixed_small", "fixed_large"])
@pytest.mark.parametrize("name", ["linear", "cosine"])
def test_bound_is_at_least_the_nll(gauss, variance, name):
    oracle, x0 = gauss
    s = get_schedule(name, 200)
    res = rd.variational_bound(s, oracle.denoiser(s), x0, variance=variance, decoder="gaussian")
    diff = res.total_bpd - _exact_nll_bpd(oracle, x0)
    se = diff.std(ddof=1) / math.sqrt(len(diff))
    assert diff.mean() > -4 * se
    assert np.all(res.terms_bpd[:, 1:] >= 0)  # KL terms


def test_bound_of_a_mixture_is_at_least_its_nll():
    oracle = GaussianMixture(np.array([0.3, 0.7]), np.array([[-0.5], [0.5]]), np.array([0.15, 0.1]))
    x0 = oracle.sample(400, np.random.default_rng(1))
    s = get_schedule("cosine", 300)
    res = rd.variational_bound(
        s, oracle.denoiser(s, "epsilon", "learned"), x0, variance="learned", decoder="gaussian"
    )
    diff = res.total_bpd - oracle.nll(x0) / LN2
    se = diff.std(ddof=1) / math.sqrt(len(diff))
    assert diff.mean() > -4 * se


def test_monte_carlo_estimate_is_unbiased(gauss):
    """The estimate is unbiased for the full bound of the same seed (the same x_t per t): over the
    examples, their mean differs from it by a few of its own standard errors at most."""
    oracle, x0 = gauss
    x0 = x0[:128]
    s = get_schedule("cosine", 100)
    den = oracle.denoiser(s)
    full = rd.variational_bound(s, den, x0, decoder="gaussian").total_bpd
    for probs in (None, np.linspace(1, 5, 100) / np.linspace(1, 5, 100).sum()):
        mc = rd.variational_bound_mc(
            s, den, x0, num_draws=8, timestep_probs=probs, decoder="gaussian"
        )
        assert mc.estimate_bpd.shape == (128,) and np.all(mc.stderr_bpd > 0)
        assert mc.exact_timesteps[:2] == (0, 1) and mc.groups == 4
        z = (mc.estimate_bpd.mean() - full.mean()) / (np.sqrt((mc.stderr_bpd**2).sum()) / 128)
        assert abs(z) < 4


@pytest.mark.parametrize("num_draws", [2, 5, 16])
def test_the_estimate_from_the_full_bounds_terms_is_the_same_estimate(gauss, num_draws):
    """The evaluation reads the estimate from the full pass when it makes one: the same x_t per
    t, hence the same numbers as the network calls of variational_bound_mc."""
    oracle, x0 = gauss
    s = get_schedule("cosine", 200)
    den = oracle.denoiser(s)
    idx = np.arange(100, 100 + x0.shape[0])
    full = rd.variational_bound(s, den, x0, decoder="gaussian", seed=3, sample_indices=idx)
    mc = rd.variational_bound_mc(
        s, den, x0, num_draws=num_draws, decoder="gaussian", seed=3, sample_indices=idx
    )
    read = rd.mc_estimate_from_terms(
        s, full.terms_bpd, full.prior_bpd, num_draws=num_draws, seed=3, sample_indices=idx
    )
    assert_close(read.estimate_bpd, mc.estimate_bpd, rtol=1e-12)
    assert_close(read.stderr_bpd, mc.stderr_bpd, rtol=1e-9, atol=1e-12)
    assert read.exact_timesteps == mc.exact_timesteps and read.groups == mc.groups
    with pytest.raises(ValueError, match=r"terms_bpd must be \[B, T=200\]"):
        rd.mc_estimate_from_terms(s, full.terms_bpd[:, :10], full.prior_bpd)


def test_monte_carlo_plan():
    """L_0 and L_1 always exact; a term a draw would over-represent is exact too; the rest is
    drawn in proportion to the log-SNR step times σ(λ + log v); with a budget near T, the full
    pass."""
    s = get_schedule("linear", 1000)
    plan = rd.mc_plan(s, 16)
    assert plan.exact.tolist() == [0, 1] and plan.tail.tolist() == list(range(2, 1000))
    lam = s.log_snr
    want = (lam[1:-1] - lam[2:]) / (1 + np.exp(-lam[2:]))  # v = 1 for data in [-1, 1]
    assert_close(plan.tail_probs, want / want.sum(), rtol=1e-12)
    wide = rd.mc_plan(s, 16, data_range=(-2.0, 2.0)).tail_probs  # v = 4: more weight at low SNR
    assert wide[-1] > plan.tail_probs[-1] and wide[0] < plan.tail_probs[0]
    big = rd.mc_plan(s, 64)
    assert big.exact.size > 2 and 64 * big.tail_probs.max() < 1
    assert np.all(np.diff(big.exact) == 1)  # the smallest t, in order
    assert rd.mc_plan(get_schedule("cosine", 100), 64).tail.size == 0  # 64 draws + 7 exact >= T
    zsnr = get_schedule("linear", 100, zero_terminal_snr=True)
    assert 99 in rd.mc_plan(zsnr, 4).exact  # λ = -inf at the end: computed exactly
    with pytest.raises(ValueError, match="num_draws"):
        rd.mc_plan(s, 1)


def test_discretized_bound_on_8bit_data():
    """On 8-bit data the discretized decoder's bound is a bound on the discrete NLL: it is
    positive, and it is far below the 8 bits/dim of a uniform model for concentrated data."""
    rng = np.random.default_rng(2)
    levels = np.round(np.clip(rng.normal(0.2, 0.05, (64, 4)), -1, 1) * 127.5) / 127.5
    oracle = GaussianMixture.gaussian(np.full(4, 0.2), 0.05)
    s = get_schedule("cosine", 100)
    res = rd.variational_bound(s, oracle.denoiser(s), levels)
    assert np.all(res.total_bpd > 0) and res.total_bpd.mean() < 8


def test_bound_is_independent_of_batch_composition(gauss):
    oracle, x0 = gauss
    s = get_schedule("cosine", 50)
    den = oracle.denoiser(s)
    whole = rd.variational_bound(s, den, x0[:8], decoder="gaussian").total_bpd
    part = rd.variational_bound(
        s, den, x0[3:5], decoder="gaussian", sample_indices=np.arange(3, 5)
    ).total_bpd
    np.testing.assert_allclose(part, whole[3:5], rtol=1e-12)


def test_respaced_bound_calls_model_with_original_timesteps(gauss):
    oracle, x0 = gauss
    base = get_schedule("linear", 1000)
    r = base.respace(rd.space_timesteps(1000, 100))
    seen = []

    def den(x, t):
        seen.append(int(t[0]))
        return oracle.predict(r, x, t - t + np.searchsorted(r.timestep_map, t), "epsilon")

    res = rd.variational_bound(r, den, x0[:64], decoder="gaussian")
    assert sorted(set(seen)) == list(r.timestep_map)
    full = rd.variational_bound(base, oracle.denoiser(base), x0[:64], decoder="gaussian")
    # fewer steps give a looser bound on average, still above the NLL
    nll = _exact_nll_bpd(oracle, x0[:64]).mean()
    assert res.total_bpd.mean() > nll - 0.1 and full.total_bpd.mean() > nll - 0.1


def test_bound_backends(xp):
    oracle = GaussianMixture.gaussian([0.1, 0.0], 0.3)
    x0_np = oracle.sample(6, np.random.default_rng(3))
    s = get_schedule("cosine", 20)
    ref = rd.variational_bound(s, oracle.denoiser(s), x0_np, decoder="gaussian")
    got = rd.variational_bound(s, oracle.denoiser(s), xp.asarray(x0_np), decoder="gaussian")
    assert_close(got.total_bpd, ref.total_bpd, xp=xp, rtol=1e-9)


def test_bound_bad_input(gauss):
    oracle, x0 = gauss
    s = get_schedule("cosine", 10)
    with pytest.raises(ValueError, match=r"must lie in the data range \[-1.0, 1.0\]"):
        rd.variational_bound(s, oracle.denoiser(s), x0 * 10)
    with pytest.raises(ValueError, match="num_draws"):
        rd.variational_bound_mc(s, oracle.denoiser(s), x0, num_draws=1, decoder="gaussian")
    with pytest.raises(ValueError, match="sum to 1"):
        rd.variational_bound_mc(
            s, oracle.denoiser(s), x0, timestep_probs=np.full(10, 0.2), decoder="gaussian"
        )
    with pytest.raises(ValueError, match="positive"):
        rd.variational_bound_mc(
            s, oracle.denoiser(s), x0, timestep_probs=np.eye(10)[0], decoder="gaussian"
        )
    with pytest.raises(ValueError, match="needs 4 output channels"):
        rd.variational_bound(s, oracle.denoiser(s), x0, variance="learned", decoder="gaussian")
