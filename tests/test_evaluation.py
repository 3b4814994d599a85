"""refdiff.evaluation: the digits classifier, the Fréchet distance and its scale, the memorisation
check, bits/dim through the bound, the toy-mixture checks, and ``refdiff eval`` with its errors.

Likelihoods are checked against the analytic oracle (no trained model needed); the CLI runs on a
hand-made ONNX graph and, where PyTorch is installed, on a micro checkpoint.
"""

from __future__ import annotations

import importlib.util
import json
import math
import re
import warnings
from pathlib import Path

import numpy as np
import pytest
import scipy.linalg
from blocking import run_blocked

import refdiff as rd
from refdiff import Diffusion, GaussianMixture, toy_mixture
from refdiff._io import to_jsonable
from refdiff.data import load_digits
from refdiff.evaluation import (
    bits_per_dim,
    digits_classifier,
    digits_sample_quality,
    frechet_distance,
    frechet_distance_gaussians,
    importance_timestep_probs,
    memorisation_report,
    nearest_neighbour_distances,
    toy_bound_gap,
    toy_mixture_report,
    train_digits_classifier,
)

LN2 = math.log(2.0)


@pytest.fixture(scope="module")
def digits():
    return load_digits("train"), load_digits("test")


# ---- the classifier -------------------------------------------------------------------------


def test_classifier_is_accurate_and_deterministic(digits):
    _, test = digits
    clf = digits_classifier()
    assert clf is digits_classifier()  # fitted once per process
    assert clf.test_accuracy > 0.95
    assert clf.accuracy(test.images, test.labels) == clf.test_accuracy
    again = train_digits_classifier()  # a second, independent fit
    np.testing.assert_array_equal(again.features(test.images), clf.features(test.images))
    f = clf.features(test.images[:5])
    p = clf.predict_proba(test.images[:5])
    assert f.shape == (5, clf.num_features) and f.dtype == np.float64
    assert p.shape == (5, 10)
    np.testing.assert_allclose(p.sum(axis=1), 1.0, rtol=1e-12)


def test_classifier_refuses_other_images():
    clf = digits_classifier()
    with pytest.raises(TypeError, match="uint8"):
        clf.features(np.zeros((2, 1, 8, 8), np.float32))
    with pytest.raises(ValueError, match=r"\[N, 1, 8, 8\].*\(2, 3, 8, 8\)"):
        clf.features(np.zeros((2, 3, 8, 8), np.uint8))


# ---- Fréchet distance -----------------------------------------------------------------------


def test_frechet_closed_form_for_diagonal_gaussians():
    mu1, mu2 = np.array([0.0, 1.0, -2.0]), np.array([0.5, 1.0, 0.0])
    s1, s2 = np.array([1.0, 0.5, 2.0]), np.array([0.3, 0.5, 1.0])
    want = np.sum((mu1 - mu2) ** 2) + np.sum((s1 - s2) ** 2)
    got = frechet_distance_gaussians(mu1, np.diag(s1**2), mu2, np.diag(s2**2))
    assert got == pytest.approx(want, rel=1e-12)
    # Estimated from samples, it converges to the same value.
    rng = np.random.default_rng(0)
    a = mu1 + s1 * rng.standard_normal((40000, 3))
    b = mu2 + s2 * rng.standard_normal((40000, 3))
    assert frechet_distance(a, b) == pytest.approx(want, rel=0.02)


def test_frechet_matches_scipy_sqrtm_on_full_covariances():
    rng = np.random.default_rng(1)
    for d in (1, 4, 16):
        m1, m2 = rng.standard_normal((2, d, d))
        c1, c2 = m1 @ m1.T + 0.1 * np.eye(d), m2 @ m2.T + 0.1 * np.eye(d)
        mu1, mu2 = rng.standard_normal((2, d))
        covmean = scipy.linalg.sqrtm(c1 @ c2).real
        want = np.sum((mu1 - mu2) ** 2) + np.trace(c1) + np.trace(c2) - 2 * np.trace(covmean)
        got = frechet_distance_gaussians(mu1, c1, mu2, c2)
        assert got == pytest.approx(want, rel=1e-8, abs=1e-10)
        assert frechet_distance_gaussians(mu2, c2, mu1, c1) == pytest.approx(got, rel=1e-8)


def test_frechet_of_a_set_with_itself_is_zero_even_when_singular():
    rng = np.random.default_rng(2)
    a = rng.standard_normal((500, 8))
    assert frechet_distance(a, a) == pytest.approx(0.0, abs=1e-9)
    few = rng.standard_normal((5, 20))  # fewer samples than features: singular covariances
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fd = frechet_distance(few, rng.standard_normal((7, 20)))
    assert np.isfinite(fd) and fd > 0
    assert frechet_distance(few, few) == pytest.approx(0.0, abs=1e-9)


@pytest.mark.parametrize(
    ("a", "b", "message"),
    [
        (np.zeros((1, 3)), np.zeros((5, 3)), "feats_a has 1 sample"),
        (np.zeros((5, 3)), np.zeros((0, 3)), "feats_b has 0 sample"),
        (np.zeros((5, 3)), np.zeros((5, 4)), "feats_a has 3 features, feats_b 4"),
        (np.zeros(5), np.zeros((5, 1)), r"feature matrix \[N, F\]"),
        (np.full((3, 2), np.nan), np.zeros((3, 2)), "NaN"),
    ],
)
def test_frechet_bad_input(a, b, message):
    with pytest.raises(ValueError, match=message):
        frechet_distance(a, b)


# ---- memorisation and sample quality --------------------------------------------------------


def test_nearest_neighbour_distances_in_unit_pixels():
    ref = np.zeros((2, 1, 8, 8), np.uint8)
    ref[1, 0, 0, 0] = 255
    q = np.zeros((3, 1, 8, 8), np.uint8)
    q[1, 0, 0, 0] = 255  # a copy of ref[1]
    q[2, 0, :2, :2] = 255  # two white pixels more than ref[1]... nearest is ref[1]: sqrt(3)
    d = nearest_neighbour_distances(q, ref, chunk=2)
    np.testing.assert_allclose(d, [0.0, 0.0, math.sqrt(3)], atol=1e-12)
    with pytest.raises(ValueError, match=r"\(1, 8, 8\).*\(1, 4, 4\)"):
        nearest_neighbour_distances(q, np.zeros((1, 1, 4, 4), np.uint8))


def test_memorisation_report_flags_copies(digits):
    train, test = digits
    copies = memorisation_report(train.images[:100], train=train.images, heldout=test.images)
    assert copies["nn_exact_copies"] == 100 and copies["nn_train_dist_mean"] == 0.0
    assert copies["nn_share_below_heldout_p5"] == 1.0
    fresh = memorisation_report(test.images, train=train.images, heldout=test.images)
    assert fresh["nn_train_dist_mean"] == pytest.approx(fresh["heldout_nn_train_dist_mean"])
    assert 0.02 < fresh["nn_share_below_heldout_p5"] < 0.08


def test_sample_quality_scale(digits):
    """Real images score near the floor, the baseline's samples at the ceiling, a collapsed
    model (one class only) far above the floor with a coverage of 1/10."""
    train, test = digits
    rng = np.random.default_rng(5)
    real = train.images[rng.choice(len(train.images), 300, replace=False)]
    q = digits_sample_quality(real, train=train, test=test)
    assert 0 < q["fd_floor"] < 0.2 * q["fd_ceiling"]
    assert q["fd"] < 2 * q["fd_floor"] and abs(q["fd_relative"]) < 0.1
    assert q["class_coverage"] == 1.0 and q["confidence"] > 0.9
    assert sum(q["class_histogram"]) == 300 and q["num_samples"] == 300
    assert q["classifier_test_accuracy"] > 0.95
    assert q["nn_exact_copies"] == 300  # training images are copies of training images
    json.dumps(to_jsonable(q))

    from refdiff.baseline import IndependentPixelModel

    noise = IndependentPixelModel().fit(train.images).sample(300, seed=0)
    qb = digits_sample_quality(noise, train=train, test=test)
    assert qb["fd"] == pytest.approx(qb["fd_ceiling"]) and qb["fd_relative"] == pytest.approx(1.0)
    assert qb["nn_exact_copies"] == 0

    zeros = train.images[train.labels == 0]
    qz = digits_sample_quality(zeros, train=train, test=test)
    assert qz["class_coverage"] == pytest.approx(0.1)
    assert qz["fd"] > 5 * qz["fd_floor"]


def test_sample_quality_bad_input(digits):
    train, test = digits
    with pytest.raises(ValueError, match=r"\(1, 8, 8\).*samples have shape \(3, 8, 8\)"):
        digits_sample_quality(np.zeros((4, 3, 8, 8), np.uint8), train=train, test=test)
    with pytest.raises(ValueError, match="at least 2 samples"):
        digits_sample_quality(train.images[:1], train=train, test=test)
    with pytest.raises(TypeError, match="uint8"):
        digits_sample_quality(train.images.astype(np.float32), train=train, test=test)


# ---- bits/dim through the bound -------------------------------------------------------------


def _gaussian_images(n=40, seed=0):
    """8-bit 2x2 'images' from a Gaussian, and the oracle of that Gaussian (in model range)."""
    rng = np.random.default_rng(seed)
    mean = np.array([0.2, -0.3, 0.5, 0.0])
    x = np.clip(mean + 0.2 * rng.standard_normal((n, 4)), -1, 1)
    images = np.rint((x + 1) * 127.5).astype(np.uint8).reshape(n, 1, 2, 2)
    return images, GaussianMixture.gaussian(mean, 0.2)


def _toy_diffusion(T=40, **kw):
    return Diffusion(schedule={"name": "cosine", "params": {}, "T": T}, image_shape=(1, 2, 2), **kw)


def test_bits_per_dim_matches_the_core_and_ignores_batching():
    images, oracle = _gaussian_images()
    cfg = _toy_diffusion(clip_denoised=False)
    den = oracle.denoiser(cfg.schedule)
    a = bits_per_dim(den, cfg, images, num_draws=8, batch_size=64, progress=False, dtype=np.float64)
    b = bits_per_dim(den, cfg, images, num_draws=8, batch_size=7, progress=True, dtype=np.float64)
    for key in ("bpd_full", "bpd_full_stderr", "bpd_mc", "bpd_mc_stderr", "prior_bpd"):
        assert a[key] == pytest.approx(b[key], rel=1e-12), key
    direct = rd.variational_bound(
        cfg.schedule, den, rd.data.to_model_range(images, np.float64), clip_denoised=False
    )
    assert a["bpd_full"] == pytest.approx(float(direct.total_bpd.mean()), rel=1e-12)
    np.testing.assert_allclose(a["terms_bpd"], direct.terms_bpd.mean(axis=0), rtol=1e-12)
    assert a["terms_bpd"].shape == (40,) and a["x0_mse"].shape == (40,)
    assert a["prior_bpd"] + a["terms_bpd"].sum() == pytest.approx(a["bpd_full"], rel=1e-12)
    # The Monte-Carlo estimate agrees with the full bound within its noise.
    z = (a["bpd_mc"] - a["bpd_full"]) / a["bpd_mc_stderr"]
    assert abs(z) < 4
    assert a["num_images"] == 40 and a["T"] == 40 and a["seconds_full"] > 0
    json.dumps(to_jsonable(a))


def test_importance_sampled_estimate_is_unbiased_and_less_noisy():
    images, oracle = _gaussian_images(n=64)
    pilot, _ = _gaussian_images(n=16, seed=9)  # other images than the evaluated ones
    cfg = _toy_diffusion(T=50, clip_denoised=False)
    den = oracle.denoiser(cfg.schedule)
    probs = importance_timestep_probs(den, cfg, pilot, dtype=np.float64)
    assert probs.shape == (50,) and np.all(probs > 0) and probs.sum() == pytest.approx(1.0)
    kw = {"num_draws": 8, "progress": False, "dtype": np.float64}
    schedule = bits_per_dim(den, cfg, images, **kw)
    imp = bits_per_dim(den, cfg, images, timestep_probs=probs, **kw)
    assert imp["mc_timesteps"] == "importance" and schedule["mc_timesteps"] == "schedule"
    # both unbiased for the full bound of the seed; the pilot's p(t), fitted to these terms, is
    # no noisier than the schedule's envelope (0.042 vs 0.045 here)
    for got in (imp, schedule):
        assert abs(got["bpd_mc"] - got["bpd_full"]) < 4 * got["bpd_mc_stderr"]
    assert imp["bpd_mc_stderr"] < 1.2 * schedule["bpd_mc_stderr"]
    with pytest.raises(ValueError, match="pilot image"):
        importance_timestep_probs(den, cfg, images.reshape(64, 1, 4, 1))


def test_bits_per_dim_parts():
    images, oracle = _gaussian_images(n=6)
    cfg = _toy_diffusion(T=10)
    den = oracle.denoiser(cfg.schedule)
    mc_only = bits_per_dim(den, cfg, images, full=False, num_draws=4, progress=False)
    assert mc_only["bpd_full"] is None and mc_only["terms_bpd"] is None
    assert np.isfinite(mc_only["bpd_mc"])
    full_only = bits_per_dim(den, cfg, images, num_draws=0, progress=False)
    assert full_only["bpd_mc"] is None and np.isfinite(full_only["bpd_full"])


# refdiff.bound.variational_bound_mc slices its uniforms ([:, 0]) into a non-contiguous tensor,
# for which torch.searchsorted warns; a core issue, reported, not this module's.
@pytest.mark.filterwarnings("ignore:torch.searchsorted.*non-contiguous:UserWarning")
def test_bits_per_dim_with_a_torch_denoiser():
    """A PyTorch-backed denoiser: wrapped to NumPy by the caller, or driven in torch (xp=)."""
    torch = pytest.importorskip("torch")
    import array_api_compat.torch as xpt

    images, oracle = _gaussian_images(n=8)
    cfg = _toy_diffusion(T=10)
    sched = cfg.schedule
    den = oracle.denoiser(sched)

    def wrapped(x, t):  # NumPy in and out, torch inside
        return den(torch.from_numpy(x), torch.from_numpy(t)).numpy()

    ref = bits_per_dim(den, cfg, images, num_draws=2, progress=False)
    via_numpy = bits_per_dim(wrapped, cfg, images, num_draws=2, progress=False)
    in_torch = bits_per_dim(den, cfg, images, num_draws=2, progress=False, xp=xpt)
    for got in (via_numpy, in_torch):
        assert got["bpd_full"] == pytest.approx(ref["bpd_full"], rel=1e-5)
        assert got["bpd_mc"] == pytest.approx(ref["bpd_mc"], rel=1e-5)


def test_bits_per_dim_bad_input():
    images, oracle = _gaussian_images(n=4)
    cfg = _toy_diffusion(T=5)
    den = oracle.denoiser(cfg.schedule)
    with pytest.raises(ValueError, match=r"\(1, 2, 2\).*\(1, 4, 1\)"):
        bits_per_dim(den, cfg, images.reshape(4, 1, 4, 1), progress=False)
    with pytest.raises(ValueError, match="num_draws"):
        bits_per_dim(den, cfg, images, num_draws=1, progress=False)
    with pytest.raises(ValueError, match="nothing to compute"):
        bits_per_dim(den, cfg, images, full=False, num_draws=0, progress=False)
    with pytest.raises(TypeError, match="uint8"):
        bits_per_dim(den, cfg, images.astype(np.float32), progress=False)


# ---- Gaussian-mixture toys ------------------------------------------------------------------


def test_toy_report_of_true_samples_collapsed_ones_and_blurred_ones():
    mix = toy_mixture("ring8")
    true = mix.sample(4000, seed=3)
    r = toy_mixture_report(true, mix)
    assert abs(r["nll_excess"]) < 4 * r["nll_excess_stderr"]
    assert r["min_share_ratio"] > 0.8 and sum(r["component_shares"]) == pytest.approx(1.0)
    # A model that drops seven of the eight modes: the shares show it (its NLL alone would not).
    one_mode = mix.means[0] + mix.stds[0] * np.random.default_rng(4).standard_normal((500, 2))
    assert toy_mixture_report(one_mode, mix)["min_share_ratio"] == 0.0
    # A blurred model spills into low-density regions: positive excess NLL.
    blurred = true + 0.05 * np.random.default_rng(5).standard_normal(true.shape)
    rb = toy_mixture_report(blurred, mix)
    assert rb["nll_excess"] > 10 * rb["nll_excess_stderr"]
    json.dumps(to_jsonable(rb))
    with pytest.raises(ValueError, match="2-dimensional, the samples have 3"):
        toy_mixture_report(np.zeros((5, 3)), mix)
    with pytest.raises(ValueError, match="NaN"):
        toy_mixture_report(np.full((5, 2), np.nan), mix)


def test_toy_bound_gap_is_the_prior_term_for_the_exact_reverse_process():
    """Gaussian data, exact mean and variance: bound - NLL = KL(q(x_T) ‖ N(0, I)) in expectation."""
    oracle = GaussianMixture.gaussian([0.3, -0.2], 0.2)
    cfg = Diffusion(
        schedule={"name": "linear", "params": {}, "T": 200},
        variance="learned",
        image_shape=(2, 1, 1),
        clip_denoised=False,
    )
    den = oracle.denoiser(cfg.schedule, "epsilon", "learned")
    g = toy_bound_gap(den, cfg, oracle, 512)
    prior = oracle.prior_mismatch_kl(cfg.schedule)
    assert abs(g["gap"] - prior) < 4 * g["gap_stderr"] + 1e-9
    assert g["gap_stderr"] < 0.1  # nats per point: the test has power
    assert g["gap_bpd"] == pytest.approx(g["gap"] / (2 * LN2))


def test_toy_bound_gap_is_positive_for_a_mixture():
    mix = toy_mixture("bimodal1d")
    cfg = Diffusion(
        schedule={"name": "cosine", "params": {}, "T": 100},
        image_shape=(1, 1, 1),
        clip_denoised=False,
    )
    oracle = GaussianMixture(mix.weights, mix.means, mix.stds)
    g = toy_bound_gap(oracle.denoiser(cfg.schedule), cfg, mix, 400, batch_size=150)
    assert g["gap"] > -4 * g["gap_stderr"]
    assert g["bound"] == pytest.approx(g["nll"] + g["gap"])
    with pytest.raises(ValueError, match=r"\(2, 1, 1\) holds 2 values, the mixture is 1-dim"):
        toy_bound_gap(oracle.denoiser(cfg.schedule), _toy_cfg_2d(), mix, 10)


def _toy_cfg_2d():
    return Diffusion(schedule={"name": "cosine", "params": {}, "T": 5}, image_shape=(2, 1, 1))


# ---- refdiff eval ---------------------------------------------------------------------------


@pytest.fixture(autouse=True)
def _only_eval_command(monkeypatch):
    """`refdiff` with only the eval subcommand, so these tests do not depend on the others."""
    import refdiff.cli

    monkeypatch.setattr(refdiff.cli, "COMMANDS", {"eval": "refdiff.commands.eval"})


def _main(argv, capsys):
    from refdiff.cli import main

    rc = main(argv)
    out = capsys.readouterr()
    return rc, out.out, out.err


HAS_ONNX_RUNTIME = (
    all(importlib.util.find_spec(m) is not None for m in ("onnx", "onnxruntime"))
    and importlib.util.find_spec("refdiff.runtime") is not None
)
needs_onnx = pytest.mark.skipif(
    not HAS_ONNX_RUNTIME,
    reason="needs onnx and onnxruntime (extras 'torch' and 'onnx') and refdiff.runtime",
)


def _hand_made_onnx(path: Path, image_shape=(1, 8, 8), T=10) -> Path:
    """A refdiff-shaped ONNX model whose 'epsilon prediction' is its input: bad, but a model."""
    import onnx
    from onnx import TensorProto, helper

    from refdiff.onnx_contract import METADATA_KEY, ModelMetadata

    c, h, w = image_shape
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", c, h, w])
    t = helper.make_tensor_value_info("t", TensorProto.INT64, ["batch"])
    y = helper.make_tensor_value_info("model_output", TensorProto.FLOAT, ["batch", c, h, w])
    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["model_output"])], "g", [x, t], [y]
    )
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    diffusion = Diffusion(
        schedule={"name": "cosine", "params": {}, "T": T}, image_shape=image_shape
    )
    helper.set_model_props(proto, {METADATA_KEY: ModelMetadata(diffusion=diffusion).to_json()})
    onnx.save(proto, str(path))
    return path


@pytest.fixture(scope="module")
def onnx_model(tmp_path_factory):
    if not HAS_ONNX_RUNTIME:
        pytest.skip("needs onnx, onnxruntime and refdiff.runtime")
    return _hand_made_onnx(tmp_path_factory.mktemp("onnx") / "m.onnx")


def test_eval_help(capsys):
    with pytest.raises(SystemExit) as info:
        _main(["eval", "--help"], capsys)
    assert info.value.code == 0
    out = capsys.readouterr().out
    assert "MODEL" in out and "--samples" in out and "--mc-draws" in out


def test_eval_missing_model(tmp_path, capsys):
    rc, _, err = _main(["eval", str(tmp_path / "nope.onnx")], capsys)
    assert rc == 1 and "no such model" in err and "nope.onnx" in err


def test_eval_unfinished_run_folder(tmp_path, capsys):
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "config.json").write_text(json.dumps({"steps": 100}))
    rc, _, err = _main(["eval", str(run)], capsys)
    assert rc == 1
    assert "no checkpoint yet" in err and f"refdiff train --out {run} --resume" in err
    # a folder that is no run at all
    (tmp_path / "empty").mkdir()
    rc, _, err = _main(["eval", str(tmp_path / "empty")], capsys)
    assert rc == 1 and "not a model" in err
    rc, _, err = _main(["eval", __file__], capsys)
    assert rc == 1 and "is not a model refdiff can open" in err


@needs_onnx
def test_eval_onnx_model_end_to_end(onnx_model, tmp_path, capsys, digits):
    train, _ = digits
    samples = tmp_path / "samples.npz"
    np.savez(samples, images=train.images[:40], seed=np.uint64(0))
    report, plot = tmp_path / "out" / "report.json", tmp_path / "terms.png"
    argv = ["eval", str(onnx_model), "--n-images", "12", "--mc-draws", "2", "--batch-size", "5"]
    argv += ["--samples", str(samples), "--out", str(report), "--plot-terms", str(plot)]
    rc, out, err = _main([*argv, "--no-progress"], capsys)
    assert rc == 0, err
    r = json.loads(report.read_text())
    b = r["bits_per_dim"]
    assert r["model"]["kind"] == "onnx" and r["data"]["num_images"] == 12
    assert np.isfinite(b["bpd_full"]) and np.isfinite(b["bpd_mc"]) and len(b["terms_bpd"]) == 10
    assert np.isfinite(r["baseline"]["bpd"])
    q = r["sample_quality"]
    assert q["num_samples"] == 40 and q["nn_exact_copies"] == 40 and q["fd_ceiling"] > q["fd_floor"]
    assert "full bound" in out and "independent pixels" in out and "Fréchet distance" in out
    assert plot.is_file()


@needs_onnx
def test_eval_says_what_it_does_before_it_starts(onnx_model, capsys, monkeypatch):
    """`refdiff eval` on a large model printed nothing for minutes: the pilot of the importance
    proposal ran without a word or a bar, and the report's header came only at the end."""
    import refdiff.evaluation as ev

    real, seen = ev.evaluate, {}

    def spy(*args, **kwargs):
        seen["before"] = capsys.readouterr().out  # what the user had seen when it started
        return real(*args, **kwargs)

    monkeypatch.setattr(ev, "evaluate", spy)
    argv = ["eval", str(onnx_model), "--n-images", "12", "--mc-draws", "2"]
    rc, out, err = _main([*argv, "--mc-timesteps", "importance"], capsys)
    assert rc == 0, err
    before = seen["before"]
    assert f"{onnx_model}: onnx, T = 10" in before and "12 images" in before
    assert "pilot of the importance-sampled estimate" in out and "10 network calls" in out
    assert "full bound: 10 network calls per batch" in out and "Monte-Carlo estimate" in out
    assert "pilot" in err and "bits/dim" in err  # the tqdm bars, on stderr
    assert re.search(r"95 %: \d+\.\d+ \.\. \d+\.\d+", out)


@needs_onnx
def test_eval_onnx_without_torch(onnx_model, tmp_path):
    """The ONNX path never imports torch: run `refdiff eval` where `import torch` fails (and
    import the classifier and the plots there too)."""
    proc = run_blocked(
        f"""
        import sys
        import refdiff.cli
        from refdiff.cli import main
        refdiff.cli.COMMANDS = {{"eval": "refdiff.commands.eval"}}
        rc = main(["eval", {str(onnx_model)!r}, "--n-images", "4", "--mc-draws", "2",
                   "--no-progress", "--out", {str(tmp_path / "r.json")!r}])
        import refdiff.evaluation.classifier, refdiff.plots  # torch-free too
        assert "torch" not in sys.modules and not BLOCKED_ATTEMPTS, BLOCKED_ATTEMPTS
        sys.exit(rc)
        """,
        tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    assert json.loads((tmp_path / "r.json").read_text())["bits_per_dim"]["bpd_full"] > 0


@needs_onnx
def test_eval_model_and_data_of_different_shapes(tmp_path, capsys):
    small = _hand_made_onnx(tmp_path / "small.onnx", image_shape=(1, 4, 4))
    rc, _, err = _main(["eval", str(small), "--data", "digits"], capsys)
    assert rc == 1 and "(1, 4, 4)" in err and "(1, 8, 8)" in err and "digits" in err


@needs_onnx
@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("empty", "is empty"),
        ("no-images", r"no 'images' array \(it holds \['x'\]\)"),
        ("zero-images", "holds no images"),
        ("wrong-shape", r"\(1, 4, 4\), the data 'digits' \(1, 8, 8\)"),
        ("float", "must be uint8 images"),
        ("not-npz", "not an .npz archive"),
    ],
)
def test_eval_bad_sample_files(onnx_model, tmp_path, capsys, content, message):
    path = tmp_path / "s.npz"
    if content == "empty":
        path.write_bytes(b"")
    elif content == "no-images":
        np.savez(path, x=np.zeros(3))
    elif content == "zero-images":
        np.savez(path, images=np.zeros((0, 1, 8, 8), np.uint8))
    elif content == "wrong-shape":
        np.savez(path, images=np.zeros((3, 1, 4, 4), np.uint8))
    elif content == "float":
        np.savez(path, images=np.zeros((3, 1, 8, 8), np.float32))
    else:
        path.write_bytes(b"this is not a zip archive")
    rc, _, err = _main(["eval", str(onnx_model), "--samples", str(path), "--no-progress"], capsys)
    assert rc == 1
    assert len(__import__("re").findall(message, err)) == 1, err
    rc, _, err = _main(["eval", str(onnx_model), "--samples", str(tmp_path / "x.npz")], capsys)
    assert rc == 1 and "no such sample file" in err


HAS_TRAINING = (
    importlib.util.find_spec("torch") is not None
    and importlib.util.find_spec("safetensors") is not None
    and importlib.util.find_spec("refdiff.training.checkpoint") is not None
)


@pytest.mark.skipif(not HAS_TRAINING, reason="needs torch, safetensors and refdiff.training")
def test_eval_run_folder_through_pytorch(tmp_path, capsys):
    import torch

    from refdiff.nn.unet import UNet
    from refdiff.runs.train_config import resolve_config
    from refdiff.training.checkpoint import save_checkpoint

    cfg = resolve_config(
        None,
        {
            "recipe": "none",
            "data": "digits",
            "unet": {"preset": "tiny", "base_channels": 8, "num_groups": 4, "num_res_blocks": 1},
            "diffusion": {"schedule": {"name": "cosine", "T": 10}},
            "steps": 20,
        },
    )
    torch.manual_seed(0)
    model = UNet(cfg.unet)
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text(cfg.to_json())
    save_checkpoint(
        run,
        10,
        model=model,
        ema=model,
        optimizer=torch.optim.Adam(model.parameters()),
        config=cfg,
        timestep_sampler={},
        numpy_rng=np.random.default_rng(0).bit_generator.state,
    )
    report = tmp_path / "r.json"
    argv = ["eval", str(run), "--n-images", "6", "--mc-draws", "2", "--mc-timesteps", "schedule"]
    argv.append("--no-progress")
    rc, out, err = _main([*argv, "--out", str(report)], capsys)
    assert rc == 0, err
    assert "step 10 of 20" in err  # an unfinished run with a checkpoint: evaluated, with a note
    r = json.loads(report.read_text())
    assert r["model"]["kind"] == "checkpoint" and r["model"]["step"] == 10
    assert np.isfinite(r["bits_per_dim"]["bpd_full"]) and "full bound" in out


# ---- quality against network calls -----------------------------------------------------------


def _digits_mixture_denoiser(train, T=20):
    """An exact denoiser for a mixture of the ten class means of the digits (std 0.2)."""
    imgs = train.images.reshape(len(train.images), 64).astype(np.float64) / 127.5 - 1.0
    means = np.stack([imgs[train.labels == k].mean(axis=0) for k in range(10)])
    mix = GaussianMixture(np.full(10, 0.1), means, np.full(10, 0.2))
    d = Diffusion(rd.get_schedule("cosine", T), image_shape=(1, 8, 8))

    def den(x, t):
        flat = mix.predict(d.schedule, np.reshape(x, (x.shape[0], 64)), t, "epsilon")
        return np.reshape(flat, x.shape)

    return den, d


def test_quality_vs_steps_counts_calls_and_pairs_the_runs(digits):
    from refdiff.evaluation.steps import quality_vs_steps, steps_for_calls

    train, test = digits
    den, d = _digits_mixture_denoiser(train)
    kw = {"n": 24, "train": train, "test": test, "seed": 1}
    rows = quality_vs_steps(den, d, ["dpmpp_2m", "heun"], (4, 5), batch_size=10, **kw)
    assert [(r["sampler"], r["budget"], r["steps"], r["calls"]) for r in rows] == [
        ("dpmpp_2m", 4, 4, 4),
        ("dpmpp_2m", 5, 5, 5),
        ("heun", 4, 2, 3),
        ("heun", 5, 3, 5),
    ]
    assert steps_for_calls("heun", 1) == 1 and steps_for_calls("ddim", 7) == 7
    for r in rows:
        assert r["fd"] >= 0 and 0 < r["confidence"] <= 1 and r["spacing"] == "even"
    # the batch size bounds memory only: the same samples, the same scores
    again = quality_vs_steps(den, d, ["dpmpp_2m"], (5,), batch_size=24, **kw)
    assert again[0]["fd"] == pytest.approx(rows[1]["fd"], rel=1e-9)
    # repeats: the mean over seeds seed, seed + 1
    two = quality_vs_steps(den, d, ["dpmpp_2m"], (5,), repeats=2, **kw)
    other = quality_vs_steps(den, d, ["dpmpp_2m"], (5,), **{**kw, "seed": 2})
    assert two[0]["fd"] == pytest.approx((rows[1]["fd"] + other[0]["fd"]) / 2, rel=1e-9)
    assert two[0]["fd_std"] == pytest.approx(abs(rows[1]["fd"] - other[0]["fd"]) / 2**0.5)
    assert two[0]["repeats"] == 2 and rows[0]["fd_std"] == 0.0
    with pytest.raises(ValueError, match="repeats must be >= 1, got 0"):
        quality_vs_steps(den, d, ["dpmpp_2m"], (5,), repeats=0, **kw)
    karras = quality_vs_steps(den, d, ["dpmpp_2m"], (5,), spacing={"dpmpp_2m": "karras"}, **kw)
    assert karras[0]["spacing"] == "karras" and karras[0]["fd"] != rows[1]["fd"]
    with pytest.raises(ValueError, match="25 steps of 'ddim', more than the model's T = 20"):
        quality_vs_steps(den, d, ["ddim"], (25,), **kw)
    with pytest.raises(ValueError, match="unknown sampler 'plms'"):
        quality_vs_steps(den, d, ["plms"], (5,), **kw)
    with pytest.raises(ValueError, match="budget of network calls must be >= 1, got 0"):
        steps_for_calls("heun", 0)


def test_calls_to_match_and_the_table():
    from refdiff.evaluation.steps import calls_to_match, quality_table

    def row(sampler, budget, calls, fd):
        return {
            "sampler": sampler,
            "spacing": "even",
            "budget": budget,
            "calls": calls,
            "fd": fd,
            "confidence": 0.9,
        }

    rows = [
        row("ddpm", 10, 10, 1.0),
        row("ddpm", 200, 200, 0.5),
        row("heun", 10, 9, 0.54),
        row("heun", 200, 199, 0.4),
        row("ddim", 10, 10, 0.9),
        row("ddim", 200, 200, 0.6),
    ]
    assert calls_to_match(rows) == {"ddpm": 200, "heun": 9, "ddim": None}
    assert calls_to_match(rows, tolerance=0.25) == {"ddpm": 200, "heun": 9, "ddim": 200}
    table = quality_table(rows)
    assert "| heun (even) | 0.54 (0.90) [9] | 0.40 (0.90) [199] |" in table
    assert table.splitlines()[0] == "| sampler (spacing) | 10 calls | 200 calls |"
    with pytest.raises(ValueError, match="no run of 'ddpm' with 100 calls"):
        calls_to_match(rows, reference=("ddpm", 100))
