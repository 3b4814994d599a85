"""Reverse process: parameterisation round trips, p_mean_variance identities, bad input."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import assert_close
from hypothesis import given
from hypothesis import strategies as st

import refdiff as rd
from refdiff import Prediction, Variance, get_schedule

SCHED = get_schedule("linear", 100)
ZT = get_schedule("cosine", 100, zero_terminal_snr=True)


def _data(seed=0, shape=(3, 2, 4, 4)):
    rng = np.random.default_rng(seed)
    return rng.uniform(-1, 1, shape), rng.standard_normal(shape)


@given(t=st.integers(0, 99), seed=st.integers(0, 2**16))
def test_parameterisation_round_trips(t, seed):
    x0, eps = _data(seed)
    xt = rd.q_sample(SCHED, x0, t, eps)
    np.testing.assert_allclose(rd.x0_from_eps(SCHED, xt, t, eps), x0, rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(rd.eps_from_x0(SCHED, xt, t, x0), eps, rtol=1e-7, atol=1e-7)
    v = rd.v_from_x0_eps(SCHED, x0, t, eps)
    np.testing.assert_allclose(rd.x0_from_v(SCHED, xt, t, v), x0, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(rd.eps_from_v(SCHED, xt, t, v), eps, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("prediction", list(Prediction))
@pytest.mark.parametrize("variance", [Variance.FIXED_SMALL, Variance.FIXED_LARGE])
def test_p_mean_with_truth_is_posterior_mean(prediction, variance):
    x0, eps = _data(1)
    t = np.array([0, 1, 50, 99])[:3]
    xt = rd.q_sample(SCHED, x0, t, eps)
    truth = {
        Prediction.EPSILON: eps,
        Prediction.X0: x0,
        Prediction.V: rd.v_from_x0_eps(SCHED, x0, t, eps),
    }[prediction]
    p = rd.p_mean_variance(SCHED, truth, xt, t, prediction=prediction, variance=variance)
    post = rd.q_posterior_mean_variance(SCHED, x0, xt, t)
    np.testing.assert_allclose(p.mean, post.mean, rtol=1e-8, atol=1e-8)
    np.testing.assert_allclose(p.pred_x0, x0, rtol=1e-8, atol=1e-8)
    np.testing.assert_allclose(p.pred_eps, eps, rtol=1e-6, atol=1e-6)


def test_variance_types():
    x0, eps = _data(2)
    t = np.array([0, 10, 99])
    xt = rd.q_sample(SCHED, x0, t, eps)
    small = rd.p_mean_variance(SCHED, eps, xt, t, variance="fixed_small")
    large = rd.p_mean_variance(SCHED, eps, xt, t, variance="fixed_large")
    np.testing.assert_allclose(small.variance[:, 0, 0, 0], SCHED.posterior_variance_clipped[t])
    np.testing.assert_allclose(large.variance[1:, 0, 0, 0], SCHED.betas[t[1:]])
    assert large.variance[0, 0, 0, 0] == SCHED.posterior_variance[1]
    np.testing.assert_allclose(np.exp(small.log_variance), small.variance, rtol=1e-12)
    # learned: log σ² read from the second half of the channels
    logvar = np.full_like(eps, -3.0)
    learned = rd.p_mean_variance(SCHED, np.concatenate([eps, logvar], 1), xt, t, variance="learned")
    np.testing.assert_allclose(learned.log_variance, logvar)
    # learned_range: v = ±1 gives log β̃ (clipped) and log β
    for v, table in ((-1.0, SCHED.posterior_log_variance_clipped), (1.0, SCHED.log_betas)):
        out = np.concatenate([eps, np.full_like(eps, v)], 1)
        lr = rd.p_mean_variance(SCHED, out, xt, t, variance="learned_range")
        np.testing.assert_allclose(lr.log_variance[:, 0, 0, 0], table[t], rtol=1e-12)
        np.testing.assert_allclose(lr.mean, small.mean, rtol=1e-12)


def test_clipping():
    x0, eps = _data(3)
    t = np.array([90, 90, 90])
    xt = rd.q_sample(SCHED, x0, t, eps)
    wild = eps * 50
    p = rd.p_mean_variance(SCHED, wild, xt, t, clip_denoised=True)
    assert p.pred_x0.max() <= 1 and p.pred_x0.min() >= -1
    # the returned ε is consistent with the clipped x̂_0
    np.testing.assert_allclose(rd.x0_from_eps(SCHED, xt, t, p.pred_eps), p.pred_x0, atol=1e-9)
    p2 = rd.p_mean_variance(SCHED, wild, xt, t, clip_denoised=True, data_range=(-0.5, 0.5))
    assert p2.pred_x0.max() <= 0.5


def test_zero_terminal_snr_with_eps_is_an_error():
    x = np.zeros((2, 1, 2, 2))
    with pytest.raises(ValueError, match="zero-terminal-SNR"):
        rd.p_mean_variance(ZT, x, x, 99, prediction="epsilon")
    with pytest.raises(ValueError, match="zero-terminal-SNR"):
        rd.x0_from_eps(ZT, x, 99, x)
    # v and x0 are fine at the last step
    for pred in ("v", "x0"):
        p = rd.p_mean_variance(ZT, x + 0.5, x + 0.1, 99, prediction=pred)
        assert np.all(np.isfinite(p.mean)) and np.all(np.isfinite(p.pred_eps))
    # and ε is fine elsewhere
    assert np.all(np.isfinite(rd.p_mean_variance(ZT, x, x, 98).mean))


def test_bad_input():
    x = np.zeros((2, 3, 4, 4))
    with pytest.raises(ValueError, match="needs 6 output channels for 3 data channels"):
        rd.p_mean_variance(SCHED, x, x, 5, variance="learned")
    with pytest.raises(ValueError, match="needs 3 output channels"):
        rd.p_mean_variance(SCHED, np.zeros((2, 6, 4, 4)), x, 5, variance="fixed_small")
    with pytest.raises(ValueError, match="unknown prediction 'noise'"):
        rd.p_mean_variance(SCHED, x, x, 5, prediction="noise")
    with pytest.raises(ValueError, match="unknown variance 'big'"):
        rd.p_mean_variance(SCHED, x, x, 5, variance="big")
    with pytest.raises(ValueError, match="timestep 100 is out of range"):
        rd.p_mean_variance(SCHED, x, x, 100)
    with pytest.raises(ValueError, match="timestep -1 is out of range"):
        rd.p_mean_variance(SCHED, x, x, np.array([3, -1]))
    with pytest.raises(TypeError, match="integer"):
        rd.p_mean_variance(SCHED, x, x, np.array([3.0, 1.0]))
    with pytest.raises(TypeError, match="integer"):
        rd.q_sample(SCHED, x, 2.5, x)
    with pytest.raises(TypeError, match="integer"):
        rd.q_sample(SCHED, x, True, x)
    with pytest.raises(ValueError, match=r"shape \[2\]"):
        rd.q_sample(SCHED, x, np.array([1, 2, 3]), x)
    with pytest.raises(ValueError, match="shape mismatch"):
        rd.q_sample(SCHED, x, 1, np.zeros((2, 3, 4, 5)))
    with pytest.raises(ValueError, match="does not match"):
        rd.p_mean_variance(SCHED, np.zeros((3, 3, 4, 4)), x, 1)
    with pytest.raises(TypeError, match="real floating"):
        rd.q_sample(SCHED, np.zeros((2, 3), dtype=np.int64), 1, np.zeros((2, 3), dtype=np.int64))
    with pytest.raises(TypeError, match="dtype"):
        rd.p_mean_variance(SCHED, x.astype(np.float32), x, 1)


def test_mixed_backends_and_devices_are_errors():
    import array_api_strict as strict

    x = np.zeros((2, 3))
    with pytest.raises(TypeError, match="different backends"):
        rd.q_sample(SCHED, x, 1, strict.asarray(x))
    with pytest.raises(TypeError, match="backend"):
        rd.q_sample(SCHED, x, strict.asarray([1, 2]), x)
    a = strict.asarray(x)
    b = strict.asarray(x, device=strict.Device("device1"))
    with pytest.raises(ValueError, match="different devices"):
        rd.q_sample(SCHED, a, 1, b)
    with pytest.raises(ValueError, match="different devices"):
        rd.q_sample(SCHED, a, strict.asarray([1, 1], device=strict.Device("device1")), a)


@pytest.mark.parametrize("prediction", ["epsilon", "x0", "v"])
def test_backends_agree(xp, prediction):
    x0_np, eps_np = _data(4)
    t_np = np.array([0, 40, 99])
    xt_np = rd.q_sample(SCHED, x0_np, t_np, eps_np)
    out_np = np.concatenate([eps_np, np.tanh(eps_np)], axis=1)
    ref = rd.p_mean_variance(
        SCHED,
        out_np,
        xt_np,
        t_np,
        prediction=prediction,
        variance="learned_range",
        clip_denoised=False,
    )
    got = rd.p_mean_variance(
        SCHED,
        xp.asarray(out_np, dtype=xp.float32),
        xp.asarray(xt_np, dtype=xp.float32),
        xp.asarray(t_np),
        prediction=prediction,
        variance="learned_range",
        clip_denoised=False,
    )
    for a, b in zip(got, ref, strict=True):
        assert_close(a, b, xp=xp, rtol=2e-4, atol=2e-4)
        assert a.dtype == xp.float32
