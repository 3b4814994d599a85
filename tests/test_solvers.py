"""The ODE and multistep solvers against the truth: their order of convergence on the exact
probability-flow ODE of Gaussian data, identities with DDIM and DDPM, the step spacings, backends,
zero terminal SNR, bad inputs, and conformance with diffusers' DPM-Solver++ (when installed).

The mixture-law tests (KS + binomial) of every sampler are in tests/test_samplers.py.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from conftest import assert_close, to_numpy

import refdiff as rd
from refdiff import GaussianMixture, Schedule, get_schedule, select_timesteps

SOLVERS = ("euler", "heun", "dpmpp_2m", "dpmpp_3m")
ALL_NEW = (*SOLVERS, "dpmpp_2m_sde")


# -- order of convergence on the exact probability-flow ODE -------------------------------------

# A fine schedule whose log-SNR runs linearly from +8 to -12 (about a linear T = 1000 schedule's
# range) over 4001 training indices: the Karras steps, snapped to the nearest index, are then
# within 0.0025 in log-SNR of their targets, so the meshes at N, 2N, 4N steps are one smooth
# family and the errors show the solvers' order, not the rounding of the mesh to integers.
_LOG_SNR = np.linspace(8.0, -12.0, 4001)
_ACP = 1.0 / (1.0 + np.exp(-_LOG_SNR))
FINE = Schedule(1.0 - _ACP / np.append(1.0, _ACP[:-1]))
GAUSS = GaussianMixture.gaussian(np.full(4, 0.3), 1.0)  # data N(0.3, I)


def _exact_solution(x_T: np.ndarray, schedule: Schedule) -> np.ndarray:
    """Where the probability-flow ODE takes x_T at the last index to index 0 (closed form), then
    the exact x̂_0 there: every solver's last step, into σ = 0, returns x̂_0 at index 0."""
    acp = schedule.alphas_cumprod
    x_0 = GAUSS.probability_flow(x_T, acp[-1], acp[0])
    return GAUSS.predict(schedule, x_0, np.zeros(len(x_0), dtype=np.int64), "x0")


def _error(sampler: str, steps: int, spacing: str = "karras") -> float:
    s = FINE.respace(select_timesteps(FINE, steps, spacing))
    x_T = rd.standard_normal(0, np.arange(8), rd.noise.PRIOR_STEP, (4,), xp=np, dtype=np.float64)
    x = rd.sample(sampler, s, GAUSS.denoiser(FINE), (8, 4), x_T=x_T, clip_denoised=False)
    return float(np.max(np.abs(x - _exact_solution(x_T, FINE))))


@pytest.mark.parametrize(
    "sampler, order, steps",
    [
        ("euler", 1, (65, 129, 257)),
        ("heun", 2, (33, 65, 129)),
        ("dpmpp_2m", 2, (33, 65, 129)),
        ("dpmpp_3m", 3, (65, 129, 257)),
    ],
)
def test_solvers_converge_at_their_order(sampler, order, steps):
    """Errors at N, 2N, 4N steps (N - 1 intervals doubling) against the closed-form solution in
    float64: each log2 error ratio is the order within 0.15 (measured: Euler 0.98, 0.99; Heun
    2.06, 2.03; 2M 2.10, 2.06; 3M 3.05, 3.03; with Lu et al.'s published third-order multistep
    coefficients 3M would give 1.68, 1.87 and fail)."""
    errors = [_error(sampler, n) for n in steps]
    slopes = -np.diff(np.log2(errors))
    assert np.all(np.abs(slopes - order) < 0.15), (sampler, errors, slopes)


def test_every_parameterisation_gives_the_same_samples():
    """ε, x0 and v denoisers are one model: the same samples to rounding."""
    s = FINE.respace(select_timesteps(FINE, 12, "logsnr"))
    x_T = rd.standard_normal(1, np.arange(8), rd.noise.PRIOR_STEP, (4,), xp=np, dtype=np.float64)
    for sampler in ALL_NEW:
        out = {
            p: rd.sample(
                sampler,
                s,
                GAUSS.denoiser(FINE, p),
                (8, 4),
                x_T=x_T,
                prediction=p,
                clip_denoised=False,
            )
            for p in ("epsilon", "x0", "v")
        }
        np.testing.assert_allclose(out["x0"], out["epsilon"], rtol=0, atol=1e-9)
        np.testing.assert_allclose(out["v"], out["epsilon"], rtol=0, atol=1e-9)


# -- identities with the ancestral samplers ------------------------------------------------------

MIX = GaussianMixture(np.array([0.3, 0.7]), np.array([[-0.5], [0.5]]), np.array([0.12, 0.12]))


@pytest.mark.parametrize("prediction", ["epsilon", "v"])
def test_euler_is_ddim_with_eta_zero(prediction):
    """Euler's step in Karras' variables, written in x, is DDIM's (η = 0) update, clipping and
    all."""
    base = get_schedule("cosine", 200)
    s = base.respace(select_timesteps(base, 15, "karras"))
    den = MIX.denoiser(base, prediction)
    kw = {"prediction": prediction, "seed": 3, "dtype": np.float64, "clip_denoised": True}
    a = rd.sample("euler", s, den, (64, 1), **kw)
    b = rd.sample("ddim", s, den, (64, 1), eta=0.0, **kw)
    np.testing.assert_allclose(a, b, rtol=0, atol=1e-12)


def test_first_order_sde_step_is_ddpm():
    """At first order (its first step, and every step of a 2-step run) DPM-Solver++(2M) SDE is
    ancestral sampling with the posterior variance β̃ and the same counter-based noise."""
    base = get_schedule("linear", 100)
    den = MIX.denoiser(base)
    for steps in (2, 10):
        s = base.respace(select_timesteps(base, steps))
        first, out = {}, {}
        for name in ("dpmpp_2m_sde", "ddpm"):

            def keep(i, t, x, x0, name=name, first=first):
                if i == 0:
                    first[name] = np.array(x)

            out[name] = rd.sample(
                name, s, den, (32, 1), seed=5, dtype=np.float64, clip_denoised=False, callback=keep
            )
        np.testing.assert_allclose(first["dpmpp_2m_sde"], first["ddpm"], rtol=0, atol=1e-12)
        if steps == 2:
            np.testing.assert_allclose(out["dpmpp_2m_sde"], out["ddpm"], rtol=0, atol=1e-12)
        else:  # the second-order steps differ
            assert np.abs(out["dpmpp_2m_sde"] - out["ddpm"]).max() > 1e-3


def test_heun_calls_the_model_2n_minus_1_times():
    base = get_schedule("cosine", 100)
    for zero_snr, prediction in ((False, "epsilon"), (True, "v")):
        b = get_schedule("cosine", 100, zero_terminal_snr=True) if zero_snr else base
        s = b.respace(select_timesteps(b, 8))
        calls = []
        den = MIX.denoiser(b, prediction)

        def counted(x, t, den=den, calls=calls):
            calls.append(1)
            return den(x, t)

        rd.sample("heun", s, counted, (4, 1), prediction=prediction)
        assert len(calls) == rd.network_calls("heun", 8, zero_terminal_snr=zero_snr)
        assert len(calls) == (14 if zero_snr else 15)


# -- step spacings -------------------------------------------------------------------------------


@pytest.mark.parametrize("spacing", ["even", "logsnr", "karras"])
@pytest.mark.parametrize("zero_snr", [False, True])
def test_spacings_pick_distinct_training_indices(spacing, zero_snr):
    base = get_schedule("linear", 200, zero_terminal_snr=zero_snr)
    for n in (1, 2, 3, 10, 50, 199, 200):
        k = select_timesteps(base, n, spacing)
        assert k.dtype == np.int64 and k.shape == (n,)
        assert np.all(np.diff(k) > 0) and k[-1] == 199
        if n > 1:
            assert k[0] == 0


def test_spacings_hit_their_targets_on_a_fine_schedule():
    """Uniform in log-SNR / Karras' σ^(1/ρ), to within the grid's resolution."""
    ls = FINE.log_snr
    k = select_timesteps(FINE, 21, "logsnr")
    np.testing.assert_allclose(ls[k], np.linspace(ls[0], ls[-1], 21), atol=0.003)
    k = select_timesteps(FINE, 21, "karras")
    sigma = np.exp(-0.5 * ls)
    rho = 7.0
    want = np.linspace(sigma[0] ** (1 / rho), sigma[-1] ** (1 / rho), 21) ** rho
    np.testing.assert_allclose(np.log(sigma[k]), np.log(want), atol=0.003)


def test_diffusion_sample_uses_the_spacing():
    d = rd.Diffusion(get_schedule("cosine", 100), prediction="v", image_shape=(1, 2, 2))
    den = GaussianMixture.gaussian(np.zeros(4), 0.5).denoiser(d.schedule, "v")

    def image_den(x, t):
        return np.reshape(den(np.reshape(x, (x.shape[0], 4)), t), x.shape)

    got = d.sample(image_den, 3, sampler="dpmpp_2m", steps=9, spacing="karras", dtype=np.float64)
    s = d.schedule.respace(select_timesteps(d.schedule, 9, "karras"))
    want = rd.dpmpp_2m_sample(s, image_den, (3, 1, 2, 2), prediction="v", dtype=np.float64)
    np.testing.assert_array_equal(got, want)
    assert d.sampling_schedule(9, "karras") is d.sampling_schedule(9, "karras")
    assert d.sampling_schedule(None, "karras") is d.schedule


# -- backends, zero terminal SNR, bad inputs -----------------------------------------------------


@pytest.mark.parametrize("sampler", ALL_NEW)
def test_solvers_backends_agree(xp, sampler):
    base = get_schedule("cosine", 40)
    s = base.respace(select_timesteps(base, 8, "logsnr"))
    oracle = GaussianMixture.gaussian(np.zeros(8), 0.3)

    def den(x, t):
        return oracle.predict(base, x, t, "epsilon")

    shape = (3, 2, 2, 2)
    ref = rd.sample(sampler, s, den, shape, seed=1, dtype=np.float64)
    got = rd.sample(sampler, s, den, shape, seed=1, xp=xp, dtype=xp.float64)
    assert_close(got, ref, xp=xp, rtol=1e-9, atol=1e-12)
    got32 = rd.sample(sampler, s, den, shape, seed=1, xp=xp, dtype=xp.float32)
    assert got32.dtype == xp.float32
    np.testing.assert_allclose(to_numpy(got32), ref, atol=1e-4)


@pytest.mark.parametrize("sampler", ALL_NEW)
@pytest.mark.parametrize("prediction", ["v", "x0"])
def test_zero_terminal_snr_starts_from_pure_noise(sampler, prediction):
    """σ = ∞ at the first step: finite samples with the mixture's weights, and a first step
    x_1 = σ_1 x_T + α_1 x̂_0 (the Euler step's limit; fresh noise instead of x_T for the SDE)."""
    base = get_schedule("cosine", 100, zero_terminal_snr=True)
    s = base.respace(select_timesteps(base, 20, "logsnr"))
    den = MIX.denoiser(base, prediction)
    first = []
    x = rd.sample(
        sampler,
        s,
        den,
        (1000, 1),
        prediction=prediction,
        dtype=np.float64,
        clip_denoised=False,
        callback=lambda i, t, x, x0: first.append((x, x0)) if i == 0 else None,
    )
    assert np.all(np.isfinite(x))
    assert abs((x < 0).mean() - 0.3) < 5 * np.sqrt(0.3 * 0.7 / 1000)
    x_T = rd.standard_normal(0, np.arange(1000), rd.noise.PRIOR_STEP, (1,), xp=np, dtype=np.float64)
    a1 = math.sqrt(s.alphas_cumprod[-2])
    x1, x0 = first[0]
    if sampler != "dpmpp_2m_sde":
        np.testing.assert_allclose(x1, math.sqrt(1 - a1**2) * x_T + a1 * x0, atol=1e-12)


def test_solver_bad_inputs():
    s = get_schedule("cosine", 10)
    den = MIX.denoiser(s)
    with pytest.raises(TypeError, match=r"dpmpp_2m_sample\(\) got an unexpected keyword argument 'eta'"):
        rd.sample("dpmpp_2m", s, den, (2, 1), eta=0.5)
    with pytest.raises(ValueError, match="unknown spacing 'cosine'"):
        select_timesteps(s, 5, "cosine")
    with pytest.raises(ValueError, match="cannot take 11 steps"):
        select_timesteps(s, 11, "karras")
    with pytest.raises(TypeError, match="must be an int"):
        select_timesteps(s, 2.5, "logsnr")
    with pytest.raises(ValueError, match="rho must be a finite number > 0, got -1"):
        select_timesteps(s, 5, "karras", rho=-1)
    zt = get_schedule("cosine", 10, zero_terminal_snr=True)
    for name in ALL_NEW:
        with pytest.raises(ValueError, match="zero-terminal-SNR"):
            rd.sample(name, zt, den, (2, 1), prediction="epsilon")
    with pytest.raises(ValueError, match="unknown prediction 'eps'"):
        rd.sample("heun", s, den, (2, 1), prediction="eps")
    with pytest.raises(ValueError, match="steps must be >= 1, got 0"):
        rd.network_calls("heun", 0)
    d = rd.Diffusion(s, image_shape=(1, 1, 1))
    with pytest.raises(ValueError, match="unknown spacing 'uniform'"):
        d.sample(den, 2, sampler="euler", steps=5, spacing="uniform")


# -- conformance with diffusers ------------------------------------------------------------------


@pytest.mark.filterwarnings("ignore::DeprecationWarning:diffusers")  # theirs, with numpy 2
@pytest.mark.parametrize("prediction", ["epsilon", "v", "x0"])
@pytest.mark.parametrize("steps, spacing", [(5, "even"), (10, "logsnr"), (25, "karras")])
def test_dpmpp_2m_equals_diffusers(prediction, steps, spacing):
    """diffusers' DPMSolverMultistepScheduler (dpmsolver++, order 2, its defaults otherwise) on
    the same timesteps, the same model function: equal to float32 rounding. diffusers keeps ᾱ in
    float32 (relative error ~3e-7): on a schedule built from its own ᾱ the two agree to 1e-5, on
    refdiff's float64 ᾱ to 1e-4."""
    diffusers = pytest.importorskip("diffusers")
    torch = pytest.importorskip("torch")
    T = 1000
    base = get_schedule("linear", T)
    mix = GaussianMixture(np.array([0.3, 0.7]), np.array([[-0.5] * 4, [0.5] * 4]), [0.12, 0.12])
    kind = {"epsilon": "epsilon", "v": "v_prediction", "x0": "sample"}[prediction]
    scheduler = diffusers.DPMSolverMultistepScheduler(
        num_train_timesteps=T,
        trained_betas=base.betas,
        prediction_type=kind,
        algorithm_type="dpmsolver++",
        solver_order=2,
    )
    k = select_timesteps(base, steps, spacing)
    scheduler.set_timesteps(timesteps=[int(i) for i in k[::-1]])

    def den(x, t):  # the model function both sides call, in float32
        return np.asarray(mix.predict(base, x, t, prediction), dtype=np.float32)

    x_T = rd.standard_normal(0, np.arange(16), rd.noise.PRIOR_STEP, (4,), xp=np, dtype=np.float32)
    x = torch.from_numpy(x_T.copy())
    for t in scheduler.timesteps:
        out = torch.from_numpy(den(x.numpy(), np.full(16, int(t))))
        x = scheduler.step(out, t, x).prev_sample
    theirs = x.numpy()

    acp32 = scheduler.alphas_cumprod.double().numpy()  # diffusers' float32 ᾱ, as float64
    same_table = Schedule(1.0 - acp32 / np.append(1.0, acp32[:-1])).respace(k)
    kw = {"x_T": x_T, "prediction": prediction, "clip_denoised": False}
    ours_same_table = rd.dpmpp_2m_sample(same_table, den, (16, 4), **kw)
    ours = rd.dpmpp_2m_sample(base.respace(k), den, (16, 4), **kw)
    np.testing.assert_allclose(ours_same_table, theirs, rtol=0, atol=1e-5)
    np.testing.assert_allclose(ours, theirs, rtol=0, atol=1e-4)


def test_each_sampler_gets_its_recommended_spacing_by_default():
    """dpmpp_3m breaks down on evenly spaced steps; without a spacing it gets log-SNR steps."""
    from refdiff.samplers import recommended_spacing

    assert recommended_spacing("dpmpp_3m") == rd.Spacing.LOGSNR
    assert {recommended_spacing(n) for n in rd.SAMPLERS if n != "dpmpp_3m"} == {rd.Spacing.EVEN}
    with pytest.raises(ValueError, match="unknown sampler 'nope'"):
        recommended_spacing("nope")
    d = rd.Diffusion(get_schedule("cosine", 100), prediction="v", image_shape=(1, 1, 1))
    den = lambda x, t: 0.1 * x  # noqa: E731
    default = d.sample(den, 3, sampler="dpmpp_3m", steps=8)
    np.testing.assert_array_equal(
        default, d.sample(den, 3, sampler="dpmpp_3m", steps=8, spacing="logsnr")
    )
    assert not np.array_equal(
        default, d.sample(den, 3, sampler="dpmpp_3m", steps=8, spacing="even")
    )
