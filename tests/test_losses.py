"""KL, decoders and training losses: exact identities, tails, autograd."""

from __future__ import annotations

import math

import numpy as np
import pytest
from conftest import assert_close
from hypothesis import given
from hypothesis import strategies as st
from scipy import special, stats

import refdiff as rd
from refdiff import get_schedule

finite = dict(allow_nan=False, allow_infinity=False, allow_subnormal=False)
LEVELS = np.linspace(-1, 1, 256)


@given(
    m1=st.floats(-5, 5, **finite),
    m2=st.floats(-5, 5, **finite),
    l1=st.floats(-8, 3, **finite),
    l2=st.floats(-8, 3, **finite),
)
def test_kl_nonnegative_zero_at_equality(m1, m2, l1, l2):
    kl = rd.normal_kl(np.array(m1), np.array(l1), np.array(m2), np.array(l2))
    assert kl >= -1e-12
    assert rd.normal_kl(np.array(m1), np.array(l1), np.array(m1), np.array(l1)) == 0.0
    # equals the textbook formula for the two distributions (scipy)
    s1, s2 = math.exp(0.5 * l1), math.exp(0.5 * l2)
    ref = math.log(s2 / s1) + (s1**2 + (m1 - m2) ** 2) / (2 * s2**2) - 0.5
    assert math.isclose(float(kl), ref, rel_tol=1e-9, abs_tol=1e-9)


def test_kl_matches_monte_carlo():
    rng = np.random.default_rng(0)
    n = 200_000
    m1, l1, m2, l2 = 0.3, -0.5, -0.2, 0.4
    x = m1 + math.exp(0.5 * l1) * rng.standard_normal(n)
    log_ratio = stats.norm.logpdf(x, m1, math.exp(0.5 * l1)) - stats.norm.logpdf(
        x, m2, math.exp(0.5 * l2)
    )
    kl = float(rd.normal_kl(np.array(m1), np.array(l1), np.array(m2), np.array(l2)))
    assert abs(log_ratio.mean() - kl) < 5 * log_ratio.std() / math.sqrt(n)


@given(mean=st.floats(-3, 3, **finite), log_scale=st.floats(-9, 2, **finite))
def test_discretized_bins_sum_to_one(mean, log_scale):
    x = LEVELS.copy()
    ll = rd.discretized_gaussian_log_likelihood(
        x, means=np.full(256, mean), log_scales=np.full(256, log_scale)
    )
    assert np.all(ll <= 0) and np.all(np.isfinite(ll))
    assert math.isclose(special.logsumexp(ll), 0.0, abs_tol=1e-10)


@given(
    mean=st.floats(-3, 3, **finite),
    log_scale=st.floats(-9, 2, **finite),
    num_bins=st.integers(2, 300),
    lo=st.floats(-2, 1, **finite),
    width=st.floats(0.1, 4, **finite),
)
def test_discretized_bins_sum_to_one_for_any_levels_and_range(mean, log_scale, num_bins, lo, width):
    """The probabilities of ``num_bins`` levels of any data range sum to 1 (16-level data once
    summed to 0.106 because the levels were always taken to be 256 in [-1, 1])."""
    x = np.linspace(lo, lo + width, num_bins)
    ll = rd.discretized_gaussian_log_likelihood(
        x,
        means=np.full(num_bins, mean),
        log_scales=np.full(num_bins, log_scale),
        num_bins=num_bins,
        data_range=(lo, lo + width),
    )
    assert np.all(ll <= 1e-12) and np.all(np.isfinite(ll))
    assert math.isclose(special.logsumexp(ll), 0.0, abs_tol=1e-9)


def test_the_bound_uses_the_settings_levels_and_range():
    """Through the settings, the decoder term of the bound sums to 1 over the data's own levels,
    and x̂_0 is clipped to the data's range (as the samplers clip it)."""
    for num_bins, data_range in ((16, (-1.0, 1.0)), (256, (0.0, 1.0)), (5, (-2.0, 3.0))):
        d = rd.Diffusion(
            get_schedule("cosine", 20),
            prediction="x0",
            image_shape=(1, 1, 1),
            data_range=data_range,
            num_bins=num_bins,
        )
        levels = np.linspace(*data_range, num_bins).reshape(num_bins, 1, 1, 1)
        x_t = np.full_like(levels, 0.2)
        out = np.full_like(levels, data_range[1] + 7.0)  # predicts far outside the range
        p = d.p_mean_variance(out, x_t, 0)
        assert np.all(p.pred_x0 == data_range[1])  # clipped to the range
        nll = rd.vb_term(
            d.schedule,
            out,
            levels,
            x_t,
            0,
            prediction="x0",
            clip_denoised=True,
            data_range=data_range,
            num_bins=num_bins,
        ).nats
        assert math.isclose(special.logsumexp(-nll), 0.0, abs_tol=1e-9), (num_bins, data_range)


@given(mean=st.floats(-1.5, 1.5, **finite), log_scale=st.floats(-4, 1, **finite))
def test_discretized_agrees_with_float64_cdf_differences(mean, log_scale):
    x = LEVELS.copy()
    s = math.exp(log_scale)
    edges_hi = np.append(x[:-1] + 1 / 255, np.inf)
    edges_lo = np.append(-np.inf, x[1:] - 1 / 255)
    # mirrored tails for accuracy in the reference as well
    p = np.where(
        x > mean,
        stats.norm.sf(edges_lo, mean, s) - stats.norm.sf(edges_hi, mean, s),
        stats.norm.cdf(edges_hi, mean, s) - stats.norm.cdf(edges_lo, mean, s),
    )
    ll = rd.discretized_gaussian_log_likelihood(
        x, means=np.full(256, mean), log_scales=np.full(256, log_scale)
    )
    ok = p > 1e-250
    np.testing.assert_allclose(ll[ok], np.log(p[ok]), rtol=1e-8, atol=1e-10)


def test_discretized_far_tails_match_high_precision():
    """Sharp Gaussians far from the bin: log P is very negative but finite and exact (mpmath)."""
    mpmath = pytest.importorskip("mpmath")
    mpmath.mp.dps = 60
    x = np.array([0.5, -0.5, -1.0, 1.0, 0.0])
    mean = np.array([-0.5, 0.5, 0.9, -0.9, 0.0])
    scale = np.array([0.01, 0.02, 0.01, 0.01, 1e-4])
    ll = rd.discretized_gaussian_log_likelihood(x, means=mean, log_scales=np.log(scale))
    assert np.all(np.isfinite(ll))
    for i in range(len(x)):
        m, s = mpmath.mpf(mean[i]), mpmath.mpf(scale[i])
        lo = -mpmath.inf if x[i] == -1 else (mpmath.mpf(x[i]) - mpmath.mpf(1) / 255 - m) / s
        hi = mpmath.inf if x[i] == 1 else (mpmath.mpf(x[i]) + mpmath.mpf(1) / 255 - m) / s
        if x[i] > mean[i]:  # mirror, so that the difference is of two tiny numbers
            lo, hi = -hi, -lo
        ref = float(mpmath.log(mpmath.ncdf(hi) - mpmath.ncdf(lo)))
        assert math.isclose(ll[i], ref, rel_tol=1e-11, abs_tol=1e-12), (i, ll[i], ref)


def test_discretized_backends(xp):
    rng = np.random.default_rng(0)
    x = rng.choice(LEVELS, size=(4, 3, 2, 2))
    mean = rng.uniform(-1, 1, x.shape)
    ls = rng.uniform(-6, 0, x.shape)
    ref = rd.discretized_gaussian_log_likelihood(x, means=mean, log_scales=ls)
    for dtype, rtol in ((xp.float64, 1e-10), (xp.float32, 1e-4)):
        got = rd.discretized_gaussian_log_likelihood(
            xp.asarray(x, dtype=dtype),
            means=xp.asarray(mean, dtype=dtype),
            log_scales=xp.asarray(ls, dtype=dtype),
        )
        assert got.dtype == dtype
        assert_close(got, ref, xp=xp, rtol=rtol, atol=rtol)


def test_continuous_gaussian():
    x = np.array([0.1, -2.0])
    ll = rd.continuous_gaussian_log_likelihood(
        x, means=np.array([0.0, 1.0]), log_scales=np.array([0.0, -1.0])
    )
    np.testing.assert_allclose(
        ll, stats.norm.logpdf(x, [0.0, 1.0], np.exp([0.0, -1.0])), rtol=1e-12
    )


def test_prior_kl():
    s = get_schedule("linear", 1000)
    x0 = np.array([[0.5, -1.0]])
    a = s.alphas_cumprod[-1]
    ref = sum(
        float(
            rd.normal_kl(
                np.array(math.sqrt(a) * v), np.array(math.log(1 - a)), np.array(0.0), np.array(0.0)
            )
        )
        for v in (0.5, -1.0)
    )
    assert math.isclose(float(rd.prior_kl(s, x0)[0]), ref, rel_tol=1e-12)
    zt = get_schedule("cosine", 100, zero_terminal_snr=True)
    assert float(rd.prior_kl(zt, x0)[0]) == 0.0


def test_bad_decoder_input():
    with pytest.raises(ValueError, match="shapes differ"):
        rd.discretized_gaussian_log_likelihood(
            np.zeros(3), means=np.zeros(2), log_scales=np.zeros(3)
        )
    with pytest.raises(ValueError, match="num_bins"):
        rd.discretized_gaussian_log_likelihood(
            np.zeros(3), means=np.zeros(3), log_scales=np.zeros(3), num_bins=1
        )
