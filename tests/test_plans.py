"""Samplers as data: every plan-based sampler's tables, printed for a small schedule, and its loop
against an independent float64 reference written the way the papers state each method (DDPM and
DDIM through the core's posterior, the solvers in λ with their h and r, 3M by quadrature), to
1e-12. Plans as values: saved, loaded, compared; bad plans refused.
"""

from __future__ import annotations

import math

import array_api_compat.numpy as npx
import numpy as np
import pytest
from scipy import integrate

import refdiff as rd
from refdiff.noise import PRIOR_STEP, standard_normal

BASE = rd.get_schedule("linear", 60)
SHAPE = (3, 2, 2, 2)
SEED = 5
IDX = np.arange(SHAPE[0], dtype=np.int64)
MIX = rd.GaussianMixture.gaussian(np.full(8, 0.3), 0.6)


def _denoiser(prediction: str, variance: str):
    inner = MIX.denoiser(BASE, prediction)

    def den(x, t):
        out = inner(x.reshape(x.shape[0], -1), t).reshape(x.shape)
        if rd.Variance.parse(variance).learned:
            out = np.concatenate([out, np.tanh(0.4 * x + 0.1)], axis=1)
        return out

    return den


def _noise(step):
    return standard_normal(SEED, IDX, step, SHAPE[1:], xp=npx, dtype=np.float64)


# -- the references ---------------------------------------------------------------------------


def _ref_ancestral(sched, den, prediction, variance, clip, eta=None):
    """DDPM (eta None) through rd.p_mean_variance, or DDIM eq. 12 with ε̂ from its x̂_0."""
    x = _noise(PRIOR_STEP)
    for t in range(sched.num_timesteps - 1, -1, -1):
        tt = np.full(SHAPE[0], t, dtype=np.int64)
        out = den(x, sched.timestep_map[tt])
        p = rd.p_mean_variance(
            sched, out, x, t, prediction=prediction, variance=variance, clip_denoised=clip
        )
        if eta is None:
            x = p.mean + (np.exp(0.5 * p.log_variance) * _noise(t) if t > 0 else 0.0)
            continue
        a, a_prev = sched.alphas_cumprod[t], sched.alphas_cumprod_prev[t]
        s = eta * math.sqrt((1 - a_prev) / (1 - a) * (1 - a / a_prev))
        eps = rd.eps_from_x0(sched, x, t, p.pred_x0)
        x = math.sqrt(a_prev) * p.pred_x0 + math.sqrt(1 - a_prev - s * s) * eps
        if t > 0 and s > 0:
            x = x + s * _noise(t)
    return x


def _nodes(sched):
    idx = np.arange(sched.num_timesteps - 1, -1, -1)
    acp = np.append(sched.alphas_cumprod[idx], 1.0)
    return idx, np.sqrt(acp), np.sqrt(1 - acp)


def _x0(sched, den, x, t, prediction, clip):
    out = den(x, np.full(SHAPE[0], sched.timestep_map[t], dtype=np.int64))[:, : SHAPE[1]]
    a, s = math.sqrt(sched.alphas_cumprod[t]), math.sqrt(1 - sched.alphas_cumprod[t])
    x0 = {"epsilon": (x - s * out) / a, "v": a * x - s * out, "x0": out}[prediction]
    return np.clip(x0, -1, 1) if clip else x0


def _ref_dpmpp(sched, den, prediction, clip, order, eta=0.0, lower_order_final=True):
    """DPM-Solver++ in λ: 1st order, Lu et al.'s 2M (Algorithm 2, midpoint), the SDE with η, and
    3M as the exact integral of the quadratic through the last three x̂_0, by quadrature."""
    idx, alpha, sigma = _nodes(sched)
    N = len(idx)
    with np.errstate(divide="ignore"):
        lam = np.log(alpha) - np.log(sigma)
    x, hist = _noise(PRIOR_STEP), []
    for k, t in enumerate(idx):
        d = _x0(sched, den, x, t, prediction, clip)
        hist.insert(0, d)
        h = lam[k + 1] - lam[k]
        p = min(order, k + 1)
        if k == N - 1:
            p = 1
        elif lower_order_final and N < 15 and k == N - 2:
            p = min(p, 2)
        if eta:
            decay = math.exp(-eta * h) * sigma[k + 1] / sigma[k]
            phi = -alpha[k + 1] * math.expm1(-(1 + eta) * h)
            noise = sigma[k + 1] * math.sqrt(-math.expm1(-2 * eta * h))
        else:
            decay, phi, noise = sigma[k + 1] / sigma[k], -alpha[k + 1] * math.expm1(-h), 0.0
        if p == 1:
            new = decay * x + phi * d
        elif order == 2:
            r = (lam[k] - lam[k - 1]) / h
            new = decay * x + phi * ((1 + 1 / (2 * r)) * d - hist[1] / (2 * r))
        else:  # exact integral of the interpolating polynomial through p nodes, in u = λ - λ_k
            us = [lam[k - j] - lam[k] for j in range(p)]
            weights = [alpha[k + 1] * _lagrange_integral(us, j, h) for j in range(p)]
            new = decay * x + sum(w * hist[j] for j, w in enumerate(weights))
        if noise:
            new = new + noise * _noise(t)
        x = new
    return x


def _lagrange_integral(us: list[float], j: int, h: float) -> float:
    """∫_0^h e^{u-h} ℓ_j(u) du by quadrature, ℓ_j the Lagrange basis polynomial of node j."""

    def basis(u: float) -> float:
        return math.prod((u - us[m]) / (us[j] - us[m]) for m in range(len(us)) if m != j)

    value, _ = integrate.quad(lambda u: math.exp(u - h) * basis(u), 0, h, epsabs=0, epsrel=1e-13)
    return value


def _ref_heun(sched, den, prediction, clip):
    """Karras et al. Algorithm 1 (S_churn = 0) in x̃ = x/α and σ̃ = σ/α."""
    idx, alpha, sigma = _nodes(sched)
    sig_t = sigma / alpha
    xt = _noise(PRIOR_STEP) / alpha[0]
    for k, t in enumerate(idx):
        d = _x0(sched, den, xt * alpha[k], t, prediction, clip)
        slope = (xt - d) / sig_t[k]
        x_next = xt + (sig_t[k + 1] - sig_t[k]) * slope
        if sig_t[k + 1] > 0:
            d2 = _x0(sched, den, x_next * alpha[k + 1], idx[k + 1], prediction, clip)
            slope2 = (x_next - d2) / sig_t[k + 1]
            x_next = xt + (sig_t[k + 1] - sig_t[k]) * (slope + slope2) / 2
        xt = x_next
    return xt  # α = 1 at the end


CASES = [
    ("ddpm", {}, "epsilon", "fixed_small", True),
    ("ddpm", {}, "v", "fixed_large", False),
    ("ddpm", {}, "v", "learned_range", True),
    ("ddpm", {}, "x0", "learned", False),
    ("ddim", {"eta": 0.0}, "epsilon", "fixed_small", True),
    ("ddim", {"eta": 0.6}, "v", "learned_range", False),
    ("euler", {}, "x0", "fixed_small", True),
    ("dpmpp_2m", {}, "epsilon", "fixed_small", False),
    ("dpmpp_3m", {}, "v", "fixed_small", True),
    ("dpmpp_3m", {"lower_order_final": False}, "epsilon", "fixed_small", False),
    ("dpmpp_2m_sde", {}, "v", "fixed_small", True),
    ("dpmpp_2m_sde", {"eta": 0.4}, "epsilon", "fixed_small", False),
    ("heun", {}, "v", "fixed_small", True),
]


@pytest.mark.parametrize(("name", "options", "prediction", "variance", "clip"), CASES)
@pytest.mark.parametrize("steps", [8, 20])
def test_each_sampler_equals_its_reference(name, options, prediction, variance, clip, steps):
    """Each sampler's loop equals its reference written from the paper, in float64, to 1e-12."""
    sched = BASE.respace(rd.select_timesteps(BASE, steps, "even"))
    den = _denoiser(prediction, variance)
    got = rd.sample(
        name,
        sched,
        den,
        SHAPE,
        prediction=prediction,
        variance=variance,
        clip_denoised=clip,
        seed=SEED,
        dtype=np.float64,
        **options,
    )
    if name in ("ddpm", "ddim"):
        want = _ref_ancestral(sched, den, prediction, variance, clip, options.get("eta"))
    elif name == "heun":
        want = _ref_heun(sched, den, prediction, clip)
    else:
        order = {"euler": 1, "dpmpp_2m": 2, "dpmpp_3m": 3, "dpmpp_2m_sde": 2}[name]
        eta = options.get("eta", 1.0) if name == "dpmpp_2m_sde" else 0.0
        lof = options.get("lower_order_final", True)
        want = _ref_dpmpp(sched, den, prediction, clip, order, eta, lof)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-12)
    assert np.abs(want).max() > 0.1  # a sample, not zeros


@pytest.mark.parametrize("name", [n for n, s in rd.SAMPLERS.items() if s.plan is not None])
def test_plans_print_their_tables(name, capsys):
    """The tables of every plan on a 6-step schedule: one row per step, noisiest first, the model
    called at its training indices; printed (pytest -s shows them)."""
    d = rd.Diffusion(BASE, prediction="v", image_shape=(2, 2, 2))
    plan = d.plan(name, steps=6)
    text = plan.table()
    print(text)
    lines = text.splitlines()
    assert lines[0] == plan.describe() and len(lines) == 2 + 6
    assert list(plan.model_t) == sorted(plan.model_t, reverse=True) and plan.model_t[-1] == 0
    assert list(plan.step_index) == [5, 4, 3, 2, 1, 0]
    assert plan.stochastic == rd.SAMPLERS[name].stochastic
    # x̂_0 of the last step is the sample: the step into σ = 0 (or DDPM's t = 0) keeps only it
    np.testing.assert_allclose(plan.d_coef[-1, 0], 1.0, rtol=0, atol=1e-12)
    assert plan.x_coef[-1] == 0 and plan.noise_coef[-1] == 0


def test_plan_round_trips_and_compares(tmp_path):
    d = rd.Diffusion(BASE, variance="learned_range", image_shape=(1, 2, 2))
    plan = d.plan("ddpm", steps=7)
    again = rd.Plan.from_dict(plan.to_dict())
    assert again.same_as(plan) and again.learned_noise
    path = plan.save(tmp_path / "plan.npz")
    loaded = rd.Plan.load(path)
    assert loaded.same_as(plan)
    for name in ("x_coef", "d_coef", "noise_coef", "log_var_max"):
        np.testing.assert_array_equal(getattr(loaded, name), getattr(plan, name))
    other = d.plan("ddim", steps=7, eta=0.3)
    assert not other.same_as(plan)
    with pytest.raises(ValueError):
        plan.x_coef[0] = 1.0  # read-only


def test_bad_plans_are_refused():
    good = rd.Diffusion(BASE, image_shape=(1, 2, 2)).plan("dpmpp_2m", steps=5).to_dict()
    with pytest.raises(ValueError, match="non-finite value"):
        rd.Plan.from_dict({**good, "x_coef": [1.0, math.nan, 0, 0, 0]})
    with pytest.raises(ValueError, match="must have shape"):
        rd.Plan.from_dict({**good, "noise_coef": [0.0] * 4})
    with pytest.raises(ValueError, match="unknown plan format"):
        rd.Plan.from_dict({**good, "format": 99})
    with pytest.raises(ValueError, match="lacks"):
        rd.Plan.from_dict({k: v for k, v in good.items() if k != "model_t"})
    with pytest.raises(ValueError, match="needs a learned variance"):
        rd.Plan.from_dict({**good, "learned_noise": True})
    with pytest.raises(ValueError, match="has no plan"):
        rd.Diffusion(BASE, image_shape=(1, 2, 2)).plan("heun", steps=5)
    with pytest.raises(TypeError, match="plan must be a refdiff Plan"):
        rd.run_plan(good, _denoiser("epsilon", "fixed_small"), SHAPE)


def test_sde_without_noise_is_2m_and_lower_order_final_matters():
    sched = BASE.respace(rd.select_timesteps(BASE, 10, "even"))
    den = _denoiser("v", "fixed_small")
    kw = {"prediction": "v", "seed": 1, "dtype": np.float64}
    np.testing.assert_allclose(
        rd.dpmpp_2m_sde_sample(sched, den, SHAPE, eta=0.0, **kw),
        rd.dpmpp_2m_sample(sched, den, SHAPE, **kw),
        rtol=0,
        atol=1e-13,
    )
    on = rd.dpmpp_3m_sample(sched, den, SHAPE, **kw)
    off = rd.dpmpp_3m_sample(sched, den, SHAPE, lower_order_final=False, **kw)
    assert np.abs(on - off).max() > 1e-6  # below 15 steps the option changes the step before last
