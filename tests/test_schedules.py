"""Schedules: the float64 tables, their identities, respacing, and bad input."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from refdiff import (
    SCHEDULES,
    Schedule,
    get_schedule,
    make_betas,
    rescale_zero_terminal_snr,
    space_timesteps,
)

NAMES = sorted(SCHEDULES)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("T", [1, 2, 10, 1000])
def test_alphas_cumprod_strictly_decreasing_in_unit_interval(name, T):
    if name == "linear" and T <= 20:
        with pytest.raises(ValueError, match="exceed 1"):
            get_schedule(name, T)
        return
    s = get_schedule(name, T)
    acp = s.alphas_cumprod
    assert acp.dtype == np.float64 and acp.shape == (T,)
    assert np.all(acp > 0) and np.all(acp <= 1)
    assert np.all(np.diff(acp) < 0)
    # betas recovered from ᾱ
    prev = np.append(1.0, acp[:-1])
    np.testing.assert_allclose(1 - acp / prev, s.betas, rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("name", NAMES)
def test_zero_terminal_snr(name):
    s = get_schedule(name, 200, zero_terminal_snr=True)
    assert s.alphas_cumprod[-1] == 0.0 and s.betas[-1] == 1.0 and s.zero_terminal_snr
    assert np.all(s.alphas_cumprod[:-1] > 0) and np.all(np.diff(s.alphas_cumprod) < 0)
    base = get_schedule(name, 200)
    # Lin et al.: the first √ᾱ is kept
    assert math.isclose(s.sqrt_alphas_cumprod[0], base.sqrt_alphas_cumprod[0], rel_tol=1e-12)
    assert s.log_snr[-1] == -np.inf and np.all(np.isfinite(s.posterior_variance))


def test_tables_are_float64_and_read_only():
    s = get_schedule("cosine", 50)
    for name in (
        "betas",
        "alphas_cumprod",
        "posterior_variance",
        "posterior_mean_coef1",
        "log_snr",
    ):
        tab = getattr(s, name)
        assert tab.dtype == np.float64
        with pytest.raises(ValueError):
            tab[0] = 0.5
    with pytest.raises(AttributeError):
        s.betas = np.ones(3)  # frozen


def test_named_formulas():
    T = 1000
    lin = get_schedule("linear", T)
    np.testing.assert_allclose(lin.betas[[0, -1]], [1e-4, 0.02])
    cos = get_schedule("cosine", T)
    f = lambda t: math.cos((t / T + 0.008) / 1.008 * math.pi / 2) ** 2  # noqa: E731
    for t in (0, 10, 500):
        assert math.isclose(cos.alphas_cumprod[t], f(t + 1) / f(0), rel_tol=1e-12)
    assert cos.betas.max() <= 0.999
    sq = get_schedule("scaled_linear", T)
    np.testing.assert_allclose(np.sqrt(sq.betas[[0, -1]]), np.sqrt([0.00085, 0.012]))
    assert get_schedule("quadratic", T).betas[-1] == pytest.approx(0.02)
    # the two sigmoid schedules are different schedules
    assert not np.allclose(
        get_schedule("sigmoid_betas", T).alphas_cumprod,
        get_schedule("sigmoid_alphas_cumprod", T).alphas_cumprod,
    )
    np.testing.assert_array_equal(get_schedule("constant", 5, beta=0.1).betas, np.full(5, 0.1))


def test_posterior_tables_identities():
    s = get_schedule("linear", 100)
    b, acp, prev = s.betas, s.alphas_cumprod, s.alphas_cumprod_prev
    np.testing.assert_allclose(s.posterior_variance, b * (1 - prev) / (1 - acp), rtol=1e-14)
    assert s.posterior_variance[0] == 0.0
    assert s.posterior_log_variance_clipped[0] == s.posterior_log_variance_clipped[1]
    np.testing.assert_allclose(
        s.posterior_log_variance_clipped[1:], np.log(s.posterior_variance[1:]), rtol=1e-14
    )
    np.testing.assert_allclose(s.fixed_large_variance[1:], b[1:])
    assert s.fixed_large_variance[0] == s.posterior_variance[1]
    np.testing.assert_allclose(s.snr, acp / (1 - acp), rtol=1e-14)
    np.testing.assert_allclose(s.log_snr, np.log(s.snr), rtol=1e-12)


def test_respace_all_steps_reproduces_schedule():
    for name in NAMES:
        s = get_schedule(name, 300)
        r = s.respace(np.arange(300))
        np.testing.assert_allclose(r.betas, s.betas, rtol=1e-10, atol=1e-15)
        np.testing.assert_array_equal(r.timestep_map, np.arange(300))
        assert not r.is_respaced


@given(st.lists(st.integers(0, 199), min_size=1, max_size=60, unique=True))
def test_respace_keeps_marginals(steps):
    s = get_schedule("cosine", 200)
    k = np.sort(np.asarray(steps))
    r = s.respace(k)
    np.testing.assert_allclose(r.alphas_cumprod, s.alphas_cumprod[k], rtol=1e-12)
    np.testing.assert_array_equal(r.timestep_map, k)
    # respacing a respaced schedule composes the maps
    if len(k) > 2:
        rr = r.respace([0, len(k) - 1])
        np.testing.assert_array_equal(rr.timestep_map, k[[0, -1]])


def test_space_timesteps():
    np.testing.assert_array_equal(space_timesteps(10, 10), np.arange(10))
    k = space_timesteps(1000, 50)
    assert k[0] == 0 and k[-1] == 999 and len(np.unique(k)) == 50
    assert list(space_timesteps(1000, 1)) == [999]
    with pytest.raises(ValueError, match="1001 steps"):
        space_timesteps(1000, 1001)
    with pytest.raises(ValueError, match="the number of steps must be >= 1, got 0"):
        space_timesteps(1000, 0)


def test_zero_terminal_snr_respaced_keeps_zero():
    s = get_schedule("linear", 100, zero_terminal_snr=True)
    r = s.respace(space_timesteps(100, 10))
    assert r.zero_terminal_snr and r.betas[-1] == 1.0


def test_dict_round_trip():
    for s in (get_schedule("cosine", 50), get_schedule("linear", 40, zero_terminal_snr=True)):
        d = json.loads(json.dumps(s.to_dict()))
        s2 = Schedule.from_dict(d)
        np.testing.assert_array_equal(s2.betas, s.betas)
    c = Schedule(np.linspace(0.01, 0.2, 7))
    np.testing.assert_array_equal(Schedule.from_dict(c.to_dict()).betas, c.betas)
    with pytest.raises(ValueError, match="base schedules"):
        get_schedule("cosine", 10).respace([0, 5]).to_dict()


@pytest.mark.parametrize(
    "betas, match",
    [
        ([0.1, 0.0, 0.2], r"β\[1\] = 0\.0"),
        ([0.1, -0.5], r"β\[1\] = -0\.5"),
        ([0.1, 1.0, 0.2], r"β\[1\] = 1\.0"),
        ([0.1, 1.5], r"β\[1\] = 1\.5"),
        ([0.1, np.nan], "finite"),
        ([0.1, np.inf], "finite"),
        ([[0.1, 0.2]], "1-D"),
        ([], "T >= 1"),
    ],
)
def test_bad_betas(betas, match):
    with pytest.raises(ValueError, match=match):
        Schedule(np.asarray(betas, dtype=np.float64))


def test_bad_schedule_requests():
    with pytest.raises(ValueError, match="unknown schedule 'nope'"):
        get_schedule("nope", 10)
    with pytest.raises(ValueError, match="T must be >= 1, got 0"):
        get_schedule("linear", 0)
    with pytest.raises(TypeError, match="T must be an int"):
        get_schedule("linear", 10.0)
    with pytest.raises(ValueError, match="unknown"):
        get_schedule("cosine", 10, beta_start=0.1)
    with pytest.raises(TypeError, match="real numbers"):
        Schedule(np.array(["a", "b"]))
    s = get_schedule("cosine", 10)
    with pytest.raises(ValueError, match="out of range"):
        s.respace([0, 10])
    with pytest.raises(ValueError, match="strictly increasing"):
        s.respace([3, 3, 5])
    with pytest.raises(TypeError, match="integers"):
        s.respace([0.5, 1.0])
    with pytest.raises(ValueError, match="non-empty"):
        s.respace([])


def test_rescale_needs_decreasing():
    with pytest.raises(ValueError, match="decrease"):
        rescale_zero_terminal_snr(np.array([0.5]))
    out = rescale_zero_terminal_snr(get_schedule("cosine", 10).betas)
    assert out[-1] == 1.0


@pytest.mark.parametrize(
    ("name", "params", "match"),
    [
        (
            "linear",
            {"beta_start": -0.1},
            r"'linear' with beta_start=-0.1 and T = 100 gives β\[0\] = -0.1",
        ),
        ("linear", {"beta_end": 1.5}, r"gives β\[\d+\] = .*every β must lie in \(0, 1\)"),
        ("constant", {"beta": 0.0}, r"'constant' with beta=0.0 .* gives β\[0\] = 0.0"),
        ("scaled_linear", {"beta_start": float("nan")}, "nan"),
    ],
)
def test_make_betas_refuses_betas_outside_the_unit_interval(name, params, match):
    with pytest.raises(ValueError, match=match):
        make_betas(name, 100, **params)


def test_make_betas_refuses_non_numeric_parameters():
    with pytest.raises(TypeError, match=r"beta_start must be a number, got '0\.1'"):
        make_betas("linear", 100, beta_start="0.1")
