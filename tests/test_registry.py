"""The sampler registry: every sampler with every option it declares runs from `refdiff sample` and
from Diffusion.sample and the option reaches it; the entries agree with the functions' signatures;
a name is looked up once per call; the documented call forms of ``xp=``; the argument checks."""

from __future__ import annotations

import argparse
import inspect

import array_api_compat.numpy as npx
import numpy as np
import pytest
from conftest import read_npz
from tiny_model import shared_export

import refdiff as rd
from refdiff._checks import check_bool, check_int, check_number
from refdiff.commands import sample as sample_cli
from refdiff.samplers import SamplerSettings

SHARED = list(SamplerSettings.__annotations__)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    pytest.importorskip("onnxruntime")
    from refdiff.runtime import OnnxDenoiser

    return OnnxDenoiser(shared_export(tmp_path_factory))


def _other_value(opt: rd.Option):
    """A valid value of ``opt`` other than its default."""
    if opt.kind is bool:
        return not opt.default
    return opt.default + 0.5 if opt.maximum is None else (opt.default + opt.maximum) / 2


def _cases():
    for name, spec in rd.SAMPLERS.items():
        yield name, None
        for opt in spec.options:
            yield name, opt.name


@pytest.mark.parametrize(("name", "option"), list(_cases()))
def test_every_sampler_and_option_runs_from_the_cli_and_the_api(tiny, tmp_path, name, option):
    spec = rd.SAMPLERS[name]
    d = tiny.diffusion
    options = (
        {}
        if option is None
        else {
            option: _other_value(
                spec.option_names and next(o for o in spec.options if o.name == option)
            )
        }
    )
    kw = {"sampler": name, "steps": 4, "seed": 2, "sample_indices": np.arange(3)}
    got = d.sample(tiny, 3, **kw, **options)
    assert got.shape == (3, *d.image_shape) and np.isfinite(got).all()
    if option is not None:  # the option reached the sampler: it changes the samples
        default = d.sample(tiny, 3, **kw)
        assert np.abs(got - default).max() > 1e-4, f"{name} ignored {option}"
    flags = []
    for key, value in options.items():
        flag = "--" + key.replace("_", "-")
        flags += (
            [flag, str(value)]
            if not isinstance(value, bool)
            else [flag if value else "--no-" + flag[2:]]
        )
    out = tmp_path / "s.png"
    argv = [str(tiny.path), "--n", "3", "--sampler", name, "--steps", "4", "--seed", "2"]
    parser = argparse.ArgumentParser(prog="refdiff")
    sample_cli.add_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["sample", *argv, *flags, "--out", str(out), "--no-progress"])
    assert args.func(args) == 0
    saved = read_npz(out.with_suffix(".npz"))
    np.testing.assert_array_equal(saved["images"], rd.runtime.to_uint8(got))
    assert str(saved["sampler"]) == name


def test_entries_agree_with_the_functions():
    for name, spec in rd.SAMPLERS.items():
        params = inspect.signature(spec.function).parameters
        assert list(params)[:3] == ["schedule", "denoiser", "shape"], name
        own = [p for p in params if p not in ("schedule", "denoiser", "shape", *SHARED)]
        assert own == list(spec.option_names), name
        for opt in spec.options:
            assert params[opt.name].default == opt.default, (name, opt.name)
        assert set(SHARED) <= set(params), name  # the shared settings show in the signature
        assert spec.function.__doc__ and spec.reference
        assert (spec.plan is None) == (name == "heun")
        for steps in (1, 2, 7):
            calls = spec.network_calls(steps)
            assert spec.steps_for_calls(calls) == steps
        assert spec.network_calls(5) == (9 if name == "heun" else 5)


def test_options_are_checked_by_their_entry():
    ddim = rd.SAMPLERS["ddim"]
    assert ddim.check_options({}) == {"eta": 0.0}
    assert ddim.check_options({"eta": np.float32(0.5)}) == {"eta": 0.5}
    with pytest.raises(ValueError, match=r"option 'eta' must be >= 0.0, got -0.1"):
        ddim.check_options({"eta": -0.1})
    with pytest.raises(TypeError, match="option 'eta' must be a number, got str"):
        ddim.check_options({"eta": "0.5"})
    with pytest.raises(TypeError, match=r"'ddim' sampler takes no option 'etta' \(it takes: eta\)"):
        ddim.check_options({"etta": 0.5})
    with pytest.raises(TypeError, match="must be true or false"):
        rd.SAMPLERS["dpmpp_3m"].check_options({"lower_order_final": 1})
    with pytest.raises(ValueError, match="exactly one of a plan and a loop"):
        rd.SamplerSpec("x", rd.ddpm_sample, "x", "x", None, stochastic=False)


def test_the_default_sampler_and_steps(tiny):
    d = tiny.diffusion  # T = 50
    choice = d.choose_sampler()
    spec = rd.SAMPLERS[rd.DEFAULT_SAMPLER]
    assert choice.spec is spec and choice.steps == min(spec.default_steps, 50)
    assert d.choose_sampler("ddpm").steps == 50  # DDPM: all T
    small = rd.Diffusion(rd.get_schedule("cosine", 6), image_shape=(1, 2, 2))
    assert small.choose_sampler("ddim").steps == 6  # at most T
    assert choice.describe().startswith(f"{rd.DEFAULT_SAMPLER}, {choice.steps} steps (even")
    with pytest.raises(TypeError, match="comes whole"):
        d.choose_sampler(choice, steps=3)


def test_a_sampler_name_is_looked_up_once_per_call(tiny, monkeypatch):
    import refdiff.settings as settings

    calls = []
    real = settings.get_sampler

    def counted(sampler):
        calls.append(sampler)
        return real(sampler)

    monkeypatch.setattr(settings, "get_sampler", counted)
    rd.runtime.sample_images(tiny, 5, sampler="ddim", steps=3, batch_size=2, progress=False)
    assert calls == ["ddim"]


# -- xp= as users write it ---------------------------------------------------------------------


def _mixture_den(x, t):
    return rd.GaussianMixture.gaussian(np.zeros(2), 0.5).denoiser(S)(x, t)


S = rd.get_schedule("cosine", 20)


@pytest.mark.parametrize("name", list(rd.SAMPLERS))
def test_xp_numpy_with_a_numpy_x_T(name):
    """README's and docs/validate.md's call form: the plain numpy module as xp= beside NumPy x_T."""
    x_T = rd.standard_normal(0, np.arange(3), rd.noise.PRIOR_STEP, (2,), xp=np)
    want = rd.sample(name, S, _mixture_den, (3, 2), x_T=x_T)
    for xp in (np, npx):
        got = rd.sample(name, S, _mixture_den, (3, 2), x_T=x_T, xp=xp)
        np.testing.assert_array_equal(got, want)
    assert rd.sample(name, S, _mixture_den, (3, 2), xp=np).dtype == np.float32


def test_xp_torch_and_mixed_libraries():
    torch = pytest.importorskip("torch")
    x_T = torch.zeros((3, 2), dtype=torch.float64)
    inner = rd.GaussianMixture.gaussian(np.zeros(2), 0.5).denoiser(S)

    def den(x, t):
        return inner(x, t)

    got = rd.ddpm_sample(S, den, (3, 2), x_T=x_T, xp=torch)
    assert isinstance(got, torch.Tensor) and got.dtype == torch.float64
    z = rd.standard_normal(3, torch.arange(4), 7, (5,), xp=torch, dtype=torch.float32)
    np.testing.assert_array_equal(
        z.numpy(), rd.standard_normal(3, np.arange(4), 7, (5,), xp=np, dtype=np.float32)
    )
    with pytest.raises(TypeError, match=r"x_T is a array_api_compat\.torch array but xp is"):
        rd.ddpm_sample(S, den, (3, 2), x_T=x_T, xp=np)
    with pytest.raises(TypeError, match="xp must be an array namespace"):
        rd.ddpm_sample(S, den, (3, 2), xp="numpy")


# -- the argument checks -------------------------------------------------------------------------


def test_one_rule_for_integers_numbers_and_flags():
    assert check_int(np.int64(3), "n") == 3 and type(check_int(np.uint8(3), "n")) is int
    for bad in (True, 2.0, "2", None):
        with pytest.raises(TypeError, match="n must be an integer"):
            check_int(bad, "n")
    with pytest.raises(ValueError, match=r"n must be in \[1, 4\], got 5"):
        check_int(5, "n", minimum=1, maximum=4)
    with pytest.raises(ValueError, match="n must be >= 1, got 0"):
        check_int(0, "n", minimum=1)
    assert check_number(np.float32(0.5), "eta") == 0.5 and check_number(2, "eta") == 2.0
    for bad in (float("nan"), float("inf")):
        with pytest.raises(ValueError, match="finite"):
            check_number(bad, "eta")
    with pytest.raises(TypeError, match="eta must be a number, got bool"):
        check_number(True, "eta")
    assert check_bool(np.bool_(True), "flag") is True
    with pytest.raises(TypeError, match="flag must be true or false, got str 'false'"):
        check_bool("false", "flag")
    # the same rule at every door: NumPy integers are integers everywhere
    d = rd.Diffusion(S, image_shape=(1, 1, 1))
    assert d.sampling_schedule(np.int64(5)).num_timesteps == 5
    assert d.sample(_mixture_den_1, np.int64(2), sampler="euler", steps=np.int32(3)).shape == (
        2,
        1,
        1,
        1,
    )


def _mixture_den_1(x, t):
    inner = rd.GaussianMixture.gaussian(np.zeros(1), 0.5).denoiser(S)
    return inner(x.reshape(x.shape[0], 1), t).reshape(x.shape)


def test_clip_denoised_has_one_default():
    from refdiff._enums import DEFAULT_CLIP_DENOISED

    for func in (
        rd.p_mean_variance,
        rd.vb_term,
        rd.variational_bound,
        rd.variational_bound_mc,
        rd.ddpm_sample,
        rd.dpmpp_2m_sample,
    ):
        assert (
            inspect.signature(func).parameters["clip_denoised"].default is DEFAULT_CLIP_DENOISED
        ), func
    assert rd.Diffusion().clip_denoised is DEFAULT_CLIP_DENOISED
    assert "clip_denoised" not in inspect.signature(rd.training_losses).parameters
