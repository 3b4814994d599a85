"""Tests of refdiff.timesteps: the uniform and loss-second-moment timestep samplers (NumPy only)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from refdiff.timestep_sampling import (
    LossSecondMomentSampler,
    UniformSampler,
    make_timestep_sampler,
)


def warmed(T: int, history: int = 3, seed: int = 0) -> LossSecondMomentSampler:
    """A loss-second-moment sampler whose every timestep has a full history."""
    s = LossSecondMomentSampler(T, history=history, uniform_prob=0.01)
    rng = np.random.default_rng(seed)
    for _ in range(history):
        t = np.arange(T)
        s.update(t, rng.uniform(0.1, 5.0, T) * (1 + t))
    assert s.warmed_up
    return s


@pytest.mark.parametrize("sampler", [UniformSampler(7), warmed(7)])
def test_probs_are_a_distribution(sampler):
    p = sampler.probs()
    assert p.dtype == np.float64 and p.shape == (7,)
    assert np.all(p > 0)
    assert p.sum() == pytest.approx(1.0, abs=1e-12)


@settings(max_examples=30)
@given(
    T=st.integers(1, 40),
    losses_seed=st.integers(0, 2**32 - 1),
    history=st.integers(1, 4),
)
def test_weights_make_the_estimate_unbiased(T, losses_seed, history):
    """E_p[w(t) L_t] = Σ_t p(t) L_t / (T p(t)) = mean_t L_t, exactly by summation."""
    rng = np.random.default_rng(losses_seed)
    sampler = LossSecondMomentSampler(T, history=history, uniform_prob=0.05)
    for _ in range(history):
        sampler.update(np.arange(T), rng.uniform(0.0, 10.0, T))
    L = rng.uniform(0.0, 3.0, T)
    for s in (UniformSampler(T), sampler):
        p = s.probs()
        w = 1.0 / (T * p)
        assert np.sum(p * w * L) == pytest.approx(L.mean(), rel=1e-12, abs=1e-12)


def test_sample_returns_the_weights_of_the_drawn_timesteps():
    s = warmed(10)
    t, w = s.sample(1000, np.random.default_rng(1))
    assert t.dtype == np.int64 and w.dtype == np.float64 and t.shape == w.shape == (1000,)
    assert t.min() >= 0 and t.max() < 10
    np.testing.assert_array_equal(w, 1.0 / (10 * s.probs()[t]))
    # The Monte-Carlo estimate with weights approaches the uniform mean (a loose statistical check).
    L = np.linspace(1.0, 3.0, 10)
    t, w = s.sample(200_000, np.random.default_rng(2))
    assert np.mean(w * L[t]) == pytest.approx(L.mean(), rel=0.01)


def test_uniform_before_warm_up_and_second_moment_after():
    s = LossSecondMomentSampler(4, history=2, uniform_prob=0.001)
    s.update(np.array([0, 1, 2, 3, 0, 1, 2]), np.array([1.0, 1, 1, 1, 1, 1, 1]))
    assert not s.warmed_up
    np.testing.assert_array_equal(s.probs(), np.full(4, 0.25))
    s.update(np.array([3]), np.array([9.0]))  # t=3 history [1, 9]
    assert s.warmed_up
    w = np.array([1.0, 1.0, 1.0, np.sqrt((1 + 81) / 2)])
    want = w / w.sum() * 0.999 + 0.001 / 4
    np.testing.assert_allclose(s.probs(), want, rtol=1e-14)


def test_history_keeps_the_latest_losses():
    s = LossSecondMomentSampler(1, history=2, uniform_prob=1.0)
    s.update(np.array([0, 0, 0]), np.array([1.0, 2.0, 3.0]))
    assert s.state_dict()["losses"] == [[2.0, 3.0]]


def test_the_generator_advances_the_same_way_whatever_the_state():
    """All processes of a run must stay in step: one draw per call, warmed up or not."""
    a, b = np.random.default_rng(5), np.random.default_rng(5)
    UniformSampler(10).sample(16, a)
    warmed(10).sample(16, b)
    assert a.random() == b.random()


@pytest.mark.parametrize("sampler", [UniformSampler(6), warmed(6, history=2)])
def test_state_round_trip_through_json(sampler):
    state = json.loads(json.dumps(sampler.state_dict()))
    other = make_timestep_sampler(
        state["kind"],
        6,
        **({"history": 2, "uniform_prob": 0.01} if state["kind"] != "uniform" else {}),
    )
    other.load_state_dict(state)
    np.testing.assert_array_equal(other.probs(), sampler.probs())
    assert other.state_dict() == sampler.state_dict()
    r1, r2 = np.random.default_rng(3), np.random.default_rng(3)
    for x, y in zip(sampler.sample(50, r1), other.sample(50, r2), strict=True):
        np.testing.assert_array_equal(x, y)


def test_state_of_another_sampler_is_refused():
    with pytest.raises(ValueError, match="uniform"):
        LossSecondMomentSampler(6).load_state_dict(UniformSampler(6).state_dict())
    with pytest.raises(ValueError, match="T = 5"):
        UniformSampler(6).load_state_dict(UniformSampler(5).state_dict())
    with pytest.raises(ValueError, match="history"):
        LossSecondMomentSampler(6, history=3).load_state_dict(
            LossSecondMomentSampler(6, history=2).state_dict()
        )


def test_bad_arguments():
    with pytest.raises(ValueError, match="unknown timestep sampler"):
        make_timestep_sampler("nope", 10)
    with pytest.raises(ValueError, match="num_timesteps"):
        UniformSampler(0)
    with pytest.raises(ValueError, match="uniform_prob"):
        LossSecondMomentSampler(10, uniform_prob=0.0)
    with pytest.raises(ValueError, match=r"\[0, 9\]"):
        LossSecondMomentSampler(10).update(np.array([10]), np.array([1.0]))
    with pytest.raises(ValueError, match="finite"):
        LossSecondMomentSampler(10).update(np.array([1]), np.array([np.nan]))
    with pytest.raises(TypeError, match="Generator"):
        UniformSampler(10).sample(4, np.random.RandomState(0))
