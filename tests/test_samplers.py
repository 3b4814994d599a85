"""Samplers driven by the exact oracle reproduce the data; determinism and batch independence."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import assert_close, to_numpy
from scipy import stats

import refdiff as rd
from refdiff import SAMPLERS, GaussianMixture, get_schedule, select_timesteps

MIX = GaussianMixture(np.array([0.3, 0.7]), np.array([[-0.5], [0.5]]), np.array([0.12, 0.12]))


def _mixture_cdf(x):
    return sum(
        w * stats.norm.cdf(x, m[0], s)
        for w, m, s in zip(MIX.weights, MIX.means, MIX.stds, strict=True)
    )


def _ks_pvalue(samples):
    return stats.kstest(samples.ravel(), _mixture_cdf).pvalue


@pytest.mark.parametrize(
    "sampler, steps, kw",
    [
        ("ddpm", None, {"variance": "learned"}),
        ("ddpm", 100, {"variance": "learned"}),
        ("ddim", 50, {"eta": 0.0}),
        ("ddim", 100, {"eta": 1.0}),
        ("euler", 100, {"spacing": "logsnr"}),
        ("heun", 50, {"spacing": "logsnr"}),
        ("dpmpp_2m", 50, {"spacing": "logsnr"}),
        ("dpmpp_3m", 30, {"spacing": "logsnr", "variance": "learned"}),
        ("dpmpp_2m_sde", 50, {"spacing": "logsnr"}),
    ],
)
def test_oracle_driven_samplers_reproduce_the_mixture(sampler, steps, kw):
    """Kolmogorov-Smirnov against the true mixture CDF (n = 3000 samples: sensitive to a 0.03
    CDF error) and the mixture weight by a binomial z-test. The solvers on steps uniform in
    log-SNR (the narrow modes make the last, low-noise steps the hard ones)."""
    base = get_schedule("cosine", 1000)
    kw = dict(kw)
    spacing = kw.pop("spacing", "even")
    s = base if steps is None else base.respace(select_timesteps(base, steps, spacing))
    variance = kw.pop("variance", "fixed_small")
    den = MIX.denoiser(s, "epsilon", variance if variance == "learned" else "fixed_small")

    def mapped(x, t):  # the oracle evaluates at the respaced index's ᾱ
        return den(x, np.searchsorted(s.timestep_map, t))

    x = rd.sample(
        sampler,
        s,
        mapped,
        (3000, 1),
        variance=variance,
        dtype=np.float64,
        clip_denoised=False,
        **kw,
    )
    assert _ks_pvalue(x) > 1e-3
    frac = (x < 0).mean()
    assert abs(frac - 0.3) < 5 * np.sqrt(0.3 * 0.7 / 3000)


def test_ddim_eta0_is_deterministic_and_sample_independent_of_batch():
    s = get_schedule("cosine", 200).respace(select_timesteps(get_schedule("cosine", 200), 20))
    den = MIX.denoiser(s)

    def mapped(x, t):
        return den(x, np.searchsorted(s.timestep_map, t))

    a = rd.ddim_sample(s, mapped, (64, 1), seed=7, dtype=np.float64)
    b = rd.ddim_sample(s, mapped, (64, 1), seed=7, dtype=np.float64)
    np.testing.assert_array_equal(a, b)
    # the same prior noise driven deterministically: the map x_T -> x_0 is a function
    xT = rd.standard_normal(7, np.arange(64), rd.noise.PRIOR_STEP, (1,), xp=np, dtype=np.float64)
    c = rd.ddim_sample(s, mapped, (64, 1), x_T=xT, seed=12345, dtype=np.float64)
    np.testing.assert_array_equal(a, c)


@pytest.mark.parametrize("sampler", ["ddpm", "ddim", "dpmpp_2m_sde"])
def test_sample_alone_equals_sample_in_batch(sampler):
    s = get_schedule("cosine", 60)
    den = MIX.denoiser(s)
    batch = rd.sample(
        sampler,
        s,
        den,
        (64, 1),
        seed=3,
        dtype=np.float64,
        **({"eta": 0.5} if sampler == "ddim" else {}),
    )
    for i in (0, 17, 63):
        alone = rd.sample(
            sampler,
            s,
            den,
            (1, 1),
            seed=3,
            sample_indices=np.array([i]),
            dtype=np.float64,
            **({"eta": 0.5} if sampler == "ddim" else {}),
        )
        np.testing.assert_array_equal(alone[0], batch[i])
    # shards of the batch reproduce it exactly
    shards = [
        rd.sample(
            sampler,
            s,
            den,
            (16, 1),
            seed=3,
            sample_indices=np.arange(k, 64, 4),
            dtype=np.float64,
            **({"eta": 0.5} if sampler == "ddim" else {}),
        )
        for k in range(4)
    ]
    merged = np.empty_like(batch)
    for k in range(4):
        merged[k::4] = shards[k]
    np.testing.assert_array_equal(merged, batch)


def test_samplers_backends_agree(xp):
    s = get_schedule("cosine", 30)
    oracle = GaussianMixture.gaussian(np.zeros(8), 0.3)

    def den(x, t):  # an image-shaped denoiser on any backend
        flat = oracle.predict(s, x, t, "epsilon")
        return flat

    shape = (3, 2, 2, 2)
    ref = rd.ddpm_sample(s, den, shape, seed=1, dtype=np.float64)
    got = rd.ddpm_sample(s, den, shape, seed=1, xp=xp, dtype=xp.float64)
    assert_close(got, ref, xp=xp, rtol=1e-9, atol=1e-12)
    got32 = rd.ddim_sample(s, den, shape, seed=1, xp=xp, dtype=xp.float32)
    assert got32.dtype == xp.float32
    ref32 = rd.ddim_sample(s, den, shape, seed=1, dtype=np.float64)
    np.testing.assert_allclose(to_numpy(got32), ref32, atol=1e-4)


def test_callback_and_trajectory():
    s = get_schedule("cosine", 10)
    seen = []
    rd.ddpm_sample(
        s, MIX.denoiser(s), (2, 1), callback=lambda i, t, x, x0: seen.append((i, t, x.shape))
    )
    assert [v[:2] for v in seen] == [(i, 9 - i) for i in range(10)]


def test_sampler_bad_input():
    s = get_schedule("cosine", 10)
    den = MIX.denoiser(s)
    with pytest.raises(ValueError, match="unknown sampler 'langevin'"):
        rd.sample("langevin", s, den, (2, 1))
    with pytest.raises(ValueError, match=r"batch size shape\[0\] must be >= 1, got 0"):
        rd.ddpm_sample(s, den, (0, 1))
    with pytest.raises(ValueError, match="eta"):
        rd.ddim_sample(s, den, (2, 1), eta=-1.0)
    with pytest.raises(ValueError, match="x_T has shape"):
        rd.ddpm_sample(s, den, (2, 1), x_T=np.zeros((3, 1)))
    with pytest.raises(ValueError, match="sample_indices"):
        rd.ddpm_sample(s, den, (2, 1), sample_indices=np.arange(3))
    zt = get_schedule("cosine", 10, zero_terminal_snr=True)
    with pytest.raises(ValueError, match="zero-terminal-SNR"):
        rd.ddpm_sample(zt, den, (2, 1), prediction="epsilon")
    with pytest.raises(TypeError, match="seed"):
        rd.ddpm_sample(s, den, (2, 1), seed=1.5)


def test_zero_terminal_snr_sampling_with_v():
    s = get_schedule("cosine", 100, zero_terminal_snr=True)
    den = MIX.denoiser(s, "v")
    x = rd.ddim_sample(s, den, (500, 1), prediction="v", dtype=np.float64, clip_denoised=False)
    assert np.all(np.isfinite(x))
    assert abs((x < 0).mean() - 0.3) < 0.1


@pytest.mark.parametrize("sampler", sorted(SAMPLERS))
def test_samplers_follow_the_dtype_and_device_of_x_T(sampler):
    """A given x_T sets the namespace, dtype and device of the noise and the result; an explicit
    setting that contradicts it is an error, not a silent cast or copy."""
    strict = pytest.importorskip("array_api_strict")
    s = get_schedule("cosine", 10)
    opts = {"eta": 1.0} if sampler == "ddim" else {}
    x64 = np.random.default_rng(0).standard_normal((3, 1))
    out = rd.sample(sampler, s, MIX.denoiser(s), (3, 1), x_T=x64, **opts)
    assert out.dtype == np.float64  # the noise was drawn in float64 too
    want = rd.sample(sampler, s, MIX.denoiser(s), (3, 1), x_T=x64, dtype=np.float64, **opts)
    np.testing.assert_array_equal(out, want)
    other = strict.Device("device1")
    xt = strict.asarray(x64, device=other)
    got = rd.sample(sampler, s, MIX.denoiser(s), (3, 1), x_T=xt, **opts)
    assert got.device == other and got.dtype == strict.float64
    with pytest.raises(TypeError, match="x_T has dtype float64 but dtype="):
        rd.sample(sampler, s, MIX.denoiser(s), (3, 1), x_T=x64, dtype=np.float32, **opts)
    with pytest.raises(ValueError, match="x_T lives on"):
        rd.sample(
            sampler, s, MIX.denoiser(s), (3, 1), x_T=xt, device=strict.Device("CPU_DEVICE"), **opts
        )


@pytest.mark.parametrize("sampler", sorted(SAMPLERS))
def test_diverging_sampler_names_the_step(sampler):
    s = get_schedule("cosine", 10)

    def den(x, t):  # finite until timestep index 6, then NaN
        return np.where(t[:, None] <= 6, np.nan, 0.1 * x)

    # Heun's step 2 (from index 7) already calls the model at index 6 for its trapezoid
    step, t = (2, 7) if sampler == "heun" else (3, 6)
    with pytest.raises(FloatingPointError, match=rf"from step {step} \(timestep index {t}\)"):
        rd.sample(sampler, s, den, (2, 1), clip_denoised=False)
