"""Forward process and posterior: exact identities on every backend."""

from __future__ import annotations

import math

import numpy as np
import pytest
from conftest import assert_close, to_numpy
from hypothesis import given
from hypothesis import strategies as st

import refdiff as rd
from refdiff import get_schedule

SCHED = get_schedule("cosine", 200)
finite = dict(allow_nan=False, allow_infinity=False, allow_subnormal=False)


def _normal_logpdf(x, mean, var):
    return -0.5 * (x - mean) ** 2 / var - 0.5 * np.log(2 * np.pi * var)


@given(t=st.integers(0, 199), x0=st.floats(-3, 3, **finite), var0=st.floats(0, 2, **finite))
def test_stepwise_composition_equals_closed_form(t, x0, var0):
    """Composing q(x_s | x_{s-1}) for s = 0..t (affine Gaussian maps, computed) gives q(x_t | x_0)."""
    m = np.array([x0])
    v = np.array([0.0])
    for s in range(t + 1):
        step = rd.q_step_mean_variance(SCHED, m, s)
        a = rd.q_step_mean_variance(SCHED, np.ones(1), s).mean  # the map's slope √(1-β)
        m, v = step.mean, a**2 * v + step.variance
    closed = rd.q_mean_variance(SCHED, np.array([x0]), t)
    np.testing.assert_allclose(m, closed.mean, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(v, closed.variance, rtol=1e-10)
    np.testing.assert_allclose(np.log(v), closed.log_variance, rtol=1e-10, atol=1e-12)


@given(s=st.integers(0, 198), dt=st.integers(1, 100), x0=st.floats(-3, 3, **finite))
def test_s_to_t_composes(s, dt, x0):
    t = min(s + dt, 199)
    qs = rd.q_mean_variance(SCHED, np.array([x0]), s)
    st_ = rd.q_s_to_t_mean_variance(SCHED, qs.mean, s, t)
    slope = rd.q_s_to_t_mean_variance(SCHED, np.ones(1), s, t).mean
    qt = rd.q_mean_variance(SCHED, np.array([x0]), t)
    np.testing.assert_allclose(st_.mean, qt.mean, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(slope**2 * qs.variance + st_.variance, qt.variance, rtol=1e-10)
    # one step is the stepwise kernel
    one = rd.q_s_to_t_mean_variance(SCHED, np.array([x0]), s, s + 1)
    np.testing.assert_allclose(one.variance, SCHED.betas[s + 1], rtol=1e-10)


def test_stepwise_sampling_matches_closed_form_statistically():
    """Iterated q_step_sample vs the closed form: a two-sided z-test on mean and variance."""
    n, t = 20000, 60
    rng = np.random.default_rng(0)
    x = np.full((n, 1), 0.7)
    for s in range(t + 1):
        x = rd.q_step_sample(SCHED, x, s, rng.standard_normal((n, 1)))
    q = rd.q_mean_variance(SCHED, np.full((1, 1), 0.7), t)
    mean, var = float(q.mean[0, 0]), float(q.variance[0, 0])
    z_mean = (x.mean() - mean) / math.sqrt(var / n)
    z_var = (x.var(ddof=1) - var) / (var * math.sqrt(2 / (n - 1)))
    assert abs(z_mean) < 5 and abs(z_var) < 5


@given(t=st.integers(1, 199), data=st.data())
def test_bayes_rule(t, data):
    """log q(x_{t-1}|x_t,x_0) + log q(x_t|x_0) = log q(x_t|x_{t-1}) + log q(x_{t-1}|x_0)."""
    x0, xt, xprev = (np.array([[data.draw(st.floats(-3, 3, **finite))]]) for _ in range(3))
    post = rd.q_posterior_mean_variance(SCHED, x0, xt, t)
    q_t = rd.q_mean_variance(SCHED, x0, t)
    q_step = rd.q_step_mean_variance(SCHED, xprev, t)
    q_prev = rd.q_mean_variance(SCHED, x0, t - 1)
    lhs = _normal_logpdf(xprev, post.mean, post.variance) + _normal_logpdf(
        xt, q_t.mean, q_t.variance
    )
    rhs = _normal_logpdf(xt, q_step.mean, q_step.variance) + _normal_logpdf(
        xprev, q_prev.mean, q_prev.variance
    )
    np.testing.assert_allclose(lhs, rhs, rtol=1e-9, atol=1e-9)


@given(t=st.integers(1, 199), x0=st.floats(-3, 3, **finite))
def test_posterior_averaged_over_xt_is_marginal(t, x0):
    """E_{x_t|x_0}[q(x_{t-1}|x_t,x_0)] = q(x_{t-1}|x_0): the mixture's moments, exactly."""
    x0a = np.array([x0])
    q_t = rd.q_mean_variance(SCHED, x0a, t)
    c1 = rd.q_posterior_mean_variance(SCHED, np.ones(1), np.zeros(1), t).mean  # coefficient of x_0
    c2 = rd.q_posterior_mean_variance(SCHED, np.zeros(1), np.ones(1), t).mean  # coefficient of x_t
    post_var = rd.q_posterior_mean_variance(SCHED, x0a, x0a, t).variance
    mean = c1 * x0a + c2 * q_t.mean
    var = post_var + c2**2 * q_t.variance
    q_prev = rd.q_mean_variance(SCHED, x0a, t - 1)
    np.testing.assert_allclose(mean, q_prev.mean, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(var, q_prev.variance, rtol=1e-10)


def test_posterior_at_t0_is_x0():
    x0 = np.array([[0.3, -0.4]])
    xt = np.array([[1.0, 2.0]])
    post = rd.q_posterior_mean_variance(SCHED, x0, xt, 0)
    np.testing.assert_allclose(post.mean, x0, rtol=1e-15)
    assert np.all(post.variance == 0)
    assert np.all(np.isfinite(post.log_variance))


@pytest.mark.parametrize("dtype_name", ["float32", "float64"])
def test_backends_agree_and_keep_type(xp, dtype_name):
    dtype = getattr(xp, dtype_name)
    rng = np.random.default_rng(1)
    x0_np = rng.uniform(-1, 1, (4, 3, 5, 5))
    eps_np = rng.standard_normal((4, 3, 5, 5))
    t_np = np.array([0, 7, 100, 199])
    x0 = xp.asarray(x0_np, dtype=dtype)
    eps = xp.asarray(eps_np, dtype=dtype)
    t = xp.asarray(t_np)
    xt = rd.q_sample(SCHED, x0, t, eps)
    ref = rd.q_sample(SCHED, x0_np, t_np, eps_np)
    assert_close(xt, ref, xp=xp)
    assert xt.dtype == dtype
    post = rd.q_posterior_mean_variance(SCHED, x0, xt, t)
    ref_post = rd.q_posterior_mean_variance(SCHED, x0_np, to_numpy(xt).astype(np.float64), t_np)
    assert_close(post.mean, ref_post.mean, xp=xp, atol=1e-6)
    assert_close(post.log_variance, ref_post.log_variance, xp=xp)
    for fn in (rd.q_mean_variance, rd.q_step_mean_variance):
        m = fn(SCHED, x0, t)
        r = fn(SCHED, x0_np, t_np)
        for a, b in zip(m, r, strict=True):
            assert_close(a, b, xp=xp)
    st_ = rd.q_s_to_t_mean_variance(
        SCHED, x0, xp.asarray([0, 1, 2, 3]), t + 1 - xp.astype(t == 199, t.dtype)
    )
    assert st_.mean.dtype == dtype


def test_float32_data_keeps_float64_tables():
    """Tables stay float64; only the gathered values are cast at the edge (no silent downcast)."""
    x0 = np.ones((2, 1), dtype=np.float32)
    out = rd.q_mean_variance(SCHED, x0, np.array([3, 150]))
    assert out.mean.dtype == np.float32
    np.testing.assert_array_equal(
        out.mean[:, 0], SCHED.sqrt_alphas_cumprod[[3, 150]].astype(np.float32)
    )
    assert SCHED.sqrt_alphas_cumprod.dtype == np.float64
