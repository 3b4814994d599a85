"""The sampler in the file: a generator graph under onnxruntime equals refdiff's Python sampler on
the same denoiser and seed, for every sampler with a plan, every parameterisation, variance type
and step spacing, on the exact Gaussian denoiser written as a graph and on small random U-Nets;
its step file equals it step by step; its inputs override the noise; bad input is refused."""

from __future__ import annotations

import json

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from conftest import read_npz  # noqa: E402
from tiny_model import shared_export  # noqa: E402

import refdiff as rd  # noqa: E402
from refdiff.graph.denoisers import gaussian_denoiser  # noqa: E402
from refdiff.graph.generator import build_generator, build_step, save_model  # noqa: E402
from refdiff.onnx_contract import METADATA_KEY, read_metadata_props  # noqa: E402
from refdiff.runtime import OnnxDenoiser  # noqa: E402
from refdiff.runtime.generator import OnnxGenerator, OnnxStepper  # noqa: E402

PLANNED = [n for n, s in rd.SAMPLERS.items() if s.plan is not None]
SHAPE = (2, 3, 4)
IDX = np.array([0, 3, 2**33 + 1])


def _files(tmp_path, denoiser_proto, choice, layout="loop"):
    den = save_model(denoiser_proto, tmp_path / "den.onnx")
    gen = save_model(build_generator(denoiser_proto, choice, layout=layout), tmp_path / "gen.onnx")
    return OnnxDenoiser(den), OnnxGenerator(gen)


def _python(den, choice, seed, idx=IDX, **kw):
    d = den.diffusion
    return np.asarray(
        d.sample(
            den,
            len(idx),
            sampler=choice,
            seed=seed,
            sample_indices=np.asarray(idx),
            xp=den.xp,
            **kw,
        )
    )


def _oracle(prediction="v", variance="fixed_small", T=40, zero_snr=False, clip=True, shape=SHAPE):
    sched = rd.get_schedule("cosine", T, zero_terminal_snr=zero_snr)
    d = rd.Diffusion(
        sched, prediction=prediction, variance=variance, image_shape=shape, clip_denoised=clip
    )
    return d, gaussian_denoiser(
        d, 0.1, 0.6, variance_output=0.3 if variance == "learned_range" else -3.0
    )


@pytest.mark.parametrize("name", PLANNED)
@pytest.mark.parametrize("prediction", ["epsilon", "x0", "v"])
@pytest.mark.parametrize("spacing", ["even", "logsnr", "karras"])
def test_generator_equals_the_python_sampler(tmp_path, name, prediction, spacing):
    d, proto = _oracle(prediction)
    choice = d.choose_sampler(name, 6, spacing)
    den, gen = _files(tmp_path, proto, choice)
    samples, images = gen.run(7, IDX)
    want = _python(den, choice, 7)
    np.testing.assert_allclose(samples, want, rtol=0, atol=2e-6)
    np.testing.assert_array_equal(images, rd.runtime.to_uint8(want))


@pytest.mark.parametrize(
    ("variance", "prediction", "zero_snr", "clip"),
    [
        ("fixed_large", "epsilon", False, True),
        ("learned", "x0", False, False),
        ("learned_range", "v", False, True),
        ("learned_range", "v", True, False),
    ],
)
def test_ddpm_variances_and_zero_terminal_snr(tmp_path, variance, prediction, zero_snr, clip):
    d, proto = _oracle(prediction, variance, zero_snr=zero_snr, clip=clip)
    for name in ("ddpm", "dpmpp_2m_sde"):
        choice = d.choose_sampler(name, 8)
        (tmp_path / name).mkdir()
        den, gen = _files(tmp_path / name, proto, choice)
        np.testing.assert_allclose(gen.run(1, IDX)[0], _python(den, choice, 1), rtol=0, atol=1e-5)


def test_unrolled_and_step_file_equal_the_loop(tmp_path):
    d, proto = _oracle("epsilon", "learned_range")
    choice = d.choose_sampler("dpmpp_3m", 7, lower_order_final=False)
    _, loop = _files(tmp_path, proto, choice, "loop")
    unrolled = OnnxGenerator(
        save_model(build_generator(proto, choice, layout="unrolled"), tmp_path / "u.onnx")
    )
    stepper = OnnxStepper(save_model(build_step(proto, choice), tmp_path / "s.onnx"))
    a = loop.run(3, IDX)[0]
    np.testing.assert_array_equal(unrolled.run(3, IDX)[0], a)
    x, hist = stepper.start(3, IDX)
    np.testing.assert_array_equal(
        x, rd.standard_normal(3, IDX, rd.noise.PRIOR_STEP, SHAPE, xp=np, dtype=np.float32)
    )
    for k in range(choice.steps):
        x, hist, x0 = stepper.step(k, 3, IDX, x, hist)
        assert hist.shape == (3, len(IDX), *SHAPE)
        np.testing.assert_array_equal(hist[0], x0)
    np.testing.assert_array_equal(x, a)


def test_samples_do_not_depend_on_the_batch(tmp_path):
    d, proto = _oracle()
    choice = d.choose_sampler("dpmpp_2m_sde", 5)
    _, gen = _files(tmp_path, proto, choice)
    together = gen.run(11, [4, 9, 2])[0]
    for j, i in enumerate([4, 9, 2]):
        np.testing.assert_array_equal(gen.run(11, [i])[0][0], together[j])
    whole = gen.sample_images(10, seed=11, batch_size=4)
    parts = [gen.sample_images(10, seed=11, shard=(k, 3), batch_size=3) for k in range(3)]
    np.testing.assert_array_equal(np.concatenate(parts), whole)


def test_inputs_override_x_T_and_the_noise(tmp_path):
    d, proto = _oracle()
    choice = d.choose_sampler("ddpm", 5)
    den, gen = _files(tmp_path, proto, choice)
    rng = np.random.default_rng(0)
    x_T = rng.standard_normal((len(IDX), *SHAPE)).astype(np.float32)
    np.testing.assert_allclose(
        gen.run(2, IDX, x_T=x_T)[0], _python(den, choice, 2, x_T=x_T), atol=2e-6
    )
    plan = d.plan(choice)
    # the noise the graph draws itself, passed in: the same samples
    own = np.stack(
        [
            rd.standard_normal(2, IDX, int(s), SHAPE, xp=np, dtype=np.float32)
            for s in plan.step_index
        ]
    )
    np.testing.assert_array_equal(gen.run(2, IDX, noise=own)[0], gen.run(2, IDX)[0])
    other = rng.standard_normal(own.shape).astype(np.float32)
    table = {int(s): other[k] for k, s in enumerate(plan.step_index)}
    want = _python(
        den,
        choice,
        2,
        noise=lambda step, shape: (
            table[step]
            if step in table
            else rd.standard_normal(2, IDX, step, SHAPE, xp=np, dtype=np.float32)
        ),
    )
    np.testing.assert_allclose(gen.run(2, IDX, noise=other)[0], want, atol=2e-6)


def test_the_file_says_what_it_is(tmp_path):
    d, proto = _oracle("x0")
    choice = d.choose_sampler("ddim", 4, "logsnr", eta=0.5)
    _files(tmp_path, proto, choice)
    meta = json.loads(read_metadata_props(tmp_path / "gen.onnx")[METADATA_KEY])
    assert meta["kind"] == "generator" and meta["graph"] == "loop"
    assert meta["sampler"] == {
        "sampler": "ddim",
        "steps": 4,
        "spacing": "logsnr",
        "options": {"eta": 0.5},
    }
    assert rd.Plan.from_dict(meta["plan"]).same_as(d.plan(choice))
    assert rd.Diffusion.from_dict(meta["diffusion"]) == d
    assert meta["refdiff_version"] == rd.__version__
    with pytest.raises(ValueError, match=r"is a refdiff generator file .* not a denoiser"):
        OnnxDenoiser(tmp_path / "gen.onnx")
    with pytest.raises(ValueError, match="not a refdiff generator file"):
        OnnxGenerator(tmp_path / "den.onnx")


def test_bad_input_is_refused(tmp_path, monkeypatch):
    d, proto = _oracle()
    choice = d.choose_sampler("dpmpp_2m", 4)
    _, gen = _files(tmp_path, proto, choice)
    for seed, error in ((-1, ValueError), (2**63, ValueError), (1.5, TypeError)):
        with pytest.raises(error, match="seed"):
            gen.run(seed, IDX)
    for idx, error, words in (
        ([], ValueError, "non-empty"),
        ([-2, 1], ValueError, ">= 0"),
        ([0.5], TypeError, "integers"),
    ):
        with pytest.raises(error, match=words):
            gen.run(0, idx)
    with pytest.raises(ValueError, match="takes no noise input"):
        gen.run(0, IDX, noise=np.zeros((4, 3, *SHAPE), np.float32))
    with pytest.raises(ValueError, match=r"x_T must have shape \[3, 2, 3, 4\]"):
        gen.run(0, IDX, x_T=np.zeros((2, *SHAPE), np.float32))
    import refdiff.runtime.generator as rg

    monkeypatch.setattr(rg, "available_memory", lambda: 10_000)
    with pytest.raises(MemoryError, match="use at most"):
        gen.run(0, np.arange(1000))
    with pytest.raises(ValueError, match="has no plan"):
        build_generator(proto, d.choose_sampler("heun", 4))
    with pytest.raises(ValueError, match="cannot sample with 41 steps"):
        d.choose_sampler("dpmpp_2m", 41)
    with pytest.raises(ValueError, match="layout must be one of"):
        build_generator(proto, choice, layout="scan")


@pytest.fixture(scope="module")
def tiny_unet(tmp_path_factory):
    return shared_export(tmp_path_factory), shared_export(tmp_path_factory, fp16=True)


@pytest.mark.parametrize("name", PLANNED)
@pytest.mark.parametrize("prediction", ["epsilon", "v"])
def test_on_a_random_unet(tmp_path, tiny_unet, name, prediction):
    """The tiny U-Net (random weights, learned_range variance), its metadata set to ε or v."""
    proto = onnx.load(str(tiny_unet[0]))
    meta = json.loads(proto.metadata_props[0].value)
    meta["diffusion"]["prediction"] = prediction
    proto.metadata_props[0].value = json.dumps(meta)
    d = rd.Diffusion.from_dict(meta["diffusion"])
    choice = d.choose_sampler(name, 5, "karras" if name == "dpmpp_2m" else None)
    den, gen = _files(tmp_path, proto, choice)
    samples = gen.run(5, IDX)[0]
    want = _python(den, choice, 5)
    tol = 2e-5 if d.variance.learned and name == "ddpm" else 2e-6  # exp of the variance: 1 ulp
    np.testing.assert_allclose(samples, want, rtol=0, atol=tol)


def test_fp16_generator_equals_the_loop_on_the_fp16_file(tmp_path, tiny_unet):
    """A float16 network rounds differently inside a generator graph under onnxruntime's
    ORT_ENABLE_ALL; refdiff opens float16 files with ORT_ENABLE_EXTENDED, where the generator
    and the loop around the fp16 file agree as float32 ones do."""
    import onnxruntime as ort

    proto = onnx.load(str(tiny_unet[1]))
    d = OnnxDenoiser(tiny_unet[1]).diffusion
    choice = d.choose_sampler("dpmpp_2m", 10)
    den, gen = _files(tmp_path, proto, choice)
    np.testing.assert_allclose(gen.run(0, IDX)[0], _python(den, choice, 0), rtol=0, atol=2e-6)
    assert gen.session.get_session_options().graph_optimization_level == (
        ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    )


def test_sample_and_check_commands(tmp_path, capsys):
    from refdiff.cli import main

    _, proto = _oracle(shape=(1, 3, 4))  # grey images: a PNG grid
    den = save_model(proto, tmp_path / "den.onnx")
    gen = tmp_path / "gen.onnx"
    assert (
        main(["export", str(den), "--out", str(gen), "--sampler", "dpmpp_2m", "--steps", "6"]) == 0
    )
    out = capsys.readouterr().out
    assert "PASS" in out and (tmp_path / "gen-step.onnx").is_file()
    a, b = tmp_path / "a.png", tmp_path / "b.png"
    assert main(["sample", str(gen), "--n", "5", "--out", str(a), "--no-progress"]) == 0
    argv = [
        "sample",
        str(den),
        "--n",
        "5",
        "--sampler",
        "dpmpp_2m",
        "--steps",
        "6",
        "--out",
        str(b),
    ]
    assert main([*argv, "--no-progress"]) == 0
    np.testing.assert_array_equal(
        read_npz(a.with_suffix(".npz"))["images"], read_npz(b.with_suffix(".npz"))["images"]
    )
    assert main(["check", str(gen), str(den)]) == 0
    assert "PASS" in capsys.readouterr().out
    assert main(["sample", str(gen), "--steps", "3", "--out", str(a)]) == 1
    assert "sampler is built in" in capsys.readouterr().err
    assert main(["eval", str(gen)]) == 1
    assert "no denoiser to score" in capsys.readouterr().err


def test_a_generator_is_built_and_run_without_torch(tmp_path):
    from blocking import run_blocked_json

    _, proto = _oracle(shape=(1, 3, 4))
    save_model(proto, tmp_path / "den.onnx")
    result = run_blocked_json(
        """
        import json, sys
        from refdiff.cli import main
        built = main(["export", "den.onnx", "--out", "gen.onnx", "--sampler", "ddim", "--steps",
                      "5", "--eta", "0.5"])
        sampled = main(["sample", "gen.onnx", "--n", "3", "--out", "s.png", "--no-progress"])
        print(json.dumps({"built": built, "sampled": sampled, "torch": "torch" in sys.modules,
                          "attempts": BLOCKED_ATTEMPTS}))
        """,
        tmp_path,
    )
    assert result == {"built": 0, "sampled": 0, "torch": False, "attempts": []}
