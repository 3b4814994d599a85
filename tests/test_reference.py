"""The reference vectors for ports (docs/ports.md), checked the way a port would use them: a
second implementation of docs/ports.md's pseudo-code, in plain Python and NumPy, that reads only
the files (no refdiff), must reproduce them."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from refdiff.graph.reference import write_reference_vectors  # noqa: E402

M32 = 0xFFFFFFFF


@pytest.fixture(scope="module")
def ref(tmp_path_factory):
    return write_reference_vectors(tmp_path_factory.mktemp("refvectors"))


def _philox(counter, key):
    """Philox4x32-10 on Python ints, as docs/ports.md states it."""
    c0, c1, c2, c3 = counter
    k0, k1 = key
    for r in range(10):
        if r:
            k0, k1 = (k0 + 0x9E3779B9) & M32, (k1 + 0xBB67AE85) & M32
        p0, p1 = 0xD2511F53 * c0, 0xCD9E8D57 * c2
        c0, c1, c2, c3 = (p1 >> 32) ^ c1 ^ k0, p1 & M32, (p0 >> 32) ^ c3 ^ k1, p0 & M32
    return c0, c1, c2, c3


def _normals(seed, index, step, n):
    count = n + n % 2
    words = [
        _philox((q, step, index & M32, index >> 32), (seed & M32, seed >> 32))
        for q in range(-(-count // 4))
    ]
    out = []
    for w in words:
        for a, b in ((w[0], w[1]), (w[2], w[3])):
            u1, u2 = (a + 0.5) / 2**32, (b + 0.5) / 2**32
            r, th = math.sqrt(-2.0 * math.log(u1)), 2.0 * math.pi * u2
            out += [r * math.cos(th), r * math.sin(th)]
    return words, np.array(out[:n])


def test_philox_words_and_normals(ref):
    for case in json.loads((ref / "philox.json").read_text())["cases"]:
        n = int(np.prod(case["shape"]))
        words, z = _normals(case["seed"], case["sample_index"], case["step"], n)
        assert [list(w) for w in words] == case["words"]
        np.testing.assert_allclose(z, case["normals_float64"], rtol=0, atol=1e-14)
        np.testing.assert_array_equal(z.astype(np.float32), np.float32(case["normals_float32"]))


def _gaussian(index, acp, x, t, prediction):
    m, s = index["gaussian"]["mean"], index["gaussian"]["std"]
    a = np.sqrt(acp[t]).reshape(-1, 1, 1, 1)
    b = np.sqrt(1 - acp[t]).reshape(-1, 1, 1, 1)
    v = a**2 * s**2 + b**2
    eps = b * (x - a * m) / v
    x0 = m + a * s**2 * (x - a * m) / v
    return {"epsilon": eps, "x0": x0, "v": a * eps - b * x0}[prediction]


def test_the_loop_of_the_docs_reproduces_every_trajectory(ref):
    index = json.loads((ref / "index.json").read_text())
    acp = np.load(ref / "schedules" / "cosine-40" / "alphas_cumprod.npy")
    shape = tuple(index["diffusion"]["image_shape"])
    n = int(np.prod(shape))
    checked = 0
    for path in sorted((ref / "trajectory").glob("*.json")):
        run = json.loads(path.read_text())
        plan = run["plan"]
        if plan is None:  # heun: no plan
            continue
        seed, idx = run["seed"], run["sample_indices"]

        def normals(step, seed=seed, idx=idx):
            return np.stack([_normals(seed, i, step, n)[1].reshape(shape) for i in idx])

        x = normals(2**32 - 1)
        # float64 Box-Muller agrees to rounding (docs/ports.md): libm's log/cos/sin may differ
        # by an ulp between NumPy builds (NumPy 1.26 here and there)
        np.testing.assert_allclose(x, run["float64"]["x_T"], rtol=0, atol=1e-14)
        history = []
        for k in range(len(plan["step_index"])):
            out = _gaussian(
                index, acp, x, np.full(len(idx), plan["model_t"][k]), plan["prediction"]
            )
            x0 = plan["pred_x"][k] * x + plan["pred_out"][k] * out
            if plan["clip"] is not None:
                x0 = np.clip(x0, *plan["clip"])
            terms = [x0, *history]
            x_new = plan["x_coef"][k] * x + sum(
                plan["d_coef"][k][j] * terms[j] for j in range(len(terms))
            )
            if plan["noise_coef"][k] != 0:
                x_new = x_new + plan["noise_coef"][k] * normals(plan["step_index"][k])
            history = [x0, *history][: len(plan["d_coef"][0]) - 1]
            x = x_new
            np.testing.assert_allclose(x, run["float64"]["x"][k], rtol=0, atol=1e-11)
            np.testing.assert_allclose(x0, run["float64"]["pred_x0"][k], rtol=0, atol=1e-11)
        f32 = np.asarray(run["float32"]["x"][-1])
        assert np.abs(f32 - x).max() < 1e-4  # the float32 run (the ONNX denoiser) agrees
        checked += 1
    assert checked == 6


def test_the_generator_file_gives_the_expected_images(ref):
    expected = json.loads((ref / "onnx" / "expected.json").read_text())
    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(str(ref / "onnx" / "generator.onnx"), options)
    feed = {
        "seed": np.asarray(expected["seed"], np.int64),
        "sample_indices": np.asarray(expected["sample_indices"], np.int64),
    }
    samples, images = session.run(["samples", "images"], feed)
    np.testing.assert_array_equal(images, np.load(ref / "onnx" / "expected-images.npy"))
    np.testing.assert_array_equal(samples, np.load(ref / "onnx" / "expected-samples.npy"))
    step = ort.InferenceSession(str(ref / "onnx" / "generator-step.onnx"), options)
    H = len(json.loads(session.get_modelmeta().custom_metadata_map["refdiff"])["plan"]["d_coef"][0])
    x = np.zeros_like(samples)
    hist = np.zeros((H, *samples.shape), np.float32)
    for k in range(-1, expected["sampler"]["steps"]):
        x, hist, _ = step.run(
            None, {**feed, "step": np.asarray(k, np.int64), "x": x, "history": hist}
        )
    np.testing.assert_array_equal(x, samples)
