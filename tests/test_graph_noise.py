"""refdiff.graph.noise: Philox words and Gaussians as ONNX nodes equal refdiff.noise under
onnxruntime's CPU provider: the 32-bit words bit for bit, the float64 Gaussians to a few ulp, the
float32 values exactly; per sample, whatever the batch; inside a Loop body with the step from a
table."""

from __future__ import annotations

import array_api_compat.numpy as xp
import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from refdiff.graph import GraphBuilder, philox_words, standard_normal  # noqa: E402
from refdiff.noise import PRIOR_STEP, philox4x32  # noqa: E402
from refdiff.noise import standard_normal as np_standard_normal  # noqa: E402

SEEDS = [0, 1, 2**32 + 5, 2**63 - 1]
INDICES = np.array([0, 1, 7, 2**32 - 1, 2**32, 2**32 + 3, 2**40 + 17, 2**62 + 5], np.int64)
STEPS = [0, 1, 999, PRIOR_STEP]
#: float64 Gaussians: onnxruntime's log, sin and cos are not NumPy's; a few ulp of |z| <= 6
F64_ATOL = 1e-14


def _inputs(g):
    return (
        g.input("seed", np.int64, ()),
        g.input("indices", np.int64, ("batch",)),
        g.input("step", np.int64, ()),
    )


def _feeds(seed, indices, step):
    return {
        "seed": np.array(seed, np.int64),
        "indices": np.asarray(indices, np.int64),
        "step": np.array(step, np.int64),
    }


def _session(g):
    model = g.to_model()
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])


def _noise_session(shape):
    g = GraphBuilder("noise")
    seed, indices, step = _inputs(g)
    z64 = standard_normal(g, seed, indices, step, shape, dtype=np.float64)
    z32 = standard_normal(g, seed, indices, step, shape)
    # plain names for the outputs: the noise's own values are named under "noise/"
    g.output(z64, "z", dtype=np.float64, shape=("batch", *shape))
    g.output(z32, "normal", dtype=np.float32, shape=("batch", *shape))
    return _session(g)


def _reference_words(seed, indices, step, n_quads):
    quad = np.broadcast_to(np.arange(n_quads, dtype=np.int64), (len(indices), n_quads))
    idx = np.asarray(indices, np.int64)[:, None]
    counter = (quad, quad * 0 + step, (idx & 0xFFFFFFFF) + quad * 0, (idx >> 32) + quad * 0)
    return np.stack(philox4x32(counter, (seed & 0xFFFFFFFF, seed >> 32), xp), axis=-1)


def test_words_equal_philox4x32_bit_for_bit():
    g = GraphBuilder("words")
    seed, indices, step = _inputs(g)
    g.output(philox_words(g, seed, indices, step, 3), "words", dtype=np.int64, shape=("b", 3, 4))
    sess = _session(g)
    for s in SEEDS:
        for t in STEPS:
            (words,) = sess.run(None, _feeds(s, INDICES, t))
            np.testing.assert_array_equal(words, _reference_words(s, INDICES, t, 3))
            assert words.min() >= 0 and words.max() < 2**32


@pytest.mark.parametrize("shape", [(1, 5, 3), (3, 2, 2), (1, 1, 1), (2, 3, 3)])
def test_normals_equal_standard_normal(shape):
    """Per-sample sizes 15, 12, 1, 18: odd, a multiple of 4, one value, even but not of 4."""
    sess = _noise_session(shape)
    for s in SEEDS:
        for t in STEPS:
            z64, z32 = sess.run(None, _feeds(s, INDICES, t))
            want = np_standard_normal(s, INDICES, t, shape, xp=xp)
            assert z64.shape == z32.shape == (len(INDICES), *shape)
            np.testing.assert_allclose(z64, want, rtol=0, atol=F64_ATOL)
            np.testing.assert_array_equal(z32, want.astype(np.float32))


def test_int64_bits_are_read_as_unsigned():
    """A seed in [2**63, 2**64) goes in as seed - 2**64 and draws that seed's noise; a negative
    index draws the counters of its unsigned bits (as the CUDA kernel of refdiff.fused does)."""
    sess = _noise_session((1, 2, 3))
    for s in (2**63, 2**64 - 1, 2**64 - 2**32 + 9):
        z64, _ = sess.run(None, _feeds(s - 2**64, INDICES, 5))
        want = np_standard_normal(s, INDICES, 5, (1, 2, 3), xp=xp)
        np.testing.assert_allclose(z64, want, rtol=0, atol=F64_ATOL)
    g = GraphBuilder("words")
    seed, indices, step = _inputs(g)
    g.output(philox_words(g, seed, indices, step, 2), "words", dtype=np.int64, shape=("b", 2, 4))
    (words,) = _session(g).run(None, _feeds(3, [-1, -(2**40)], 5))
    for row, unsigned in zip(words, (2**64 - 1, 2**64 - 2**40), strict=True):
        quad = np.arange(2, dtype=np.int64)
        lo, hi = unsigned % 2**32, unsigned // 2**32
        counter = (quad, quad * 0 + 5, quad * 0 + lo, quad * 0 + hi)
        want = np.stack(philox4x32(counter, (3, 0), xp), axis=-1)
        np.testing.assert_array_equal(row, want)


def test_a_sample_does_not_depend_on_its_batch():
    sess = _noise_session((1, 5, 3))
    _, batch = sess.run(None, _feeds(42, INDICES, 3))
    for i, index in enumerate(INDICES):
        _, alone = sess.run(None, _feeds(42, [index], 3))
        np.testing.assert_array_equal(alone[0], batch[i])
    _, flipped = sess.run(None, _feeds(42, INDICES[::-1], 3))
    np.testing.assert_array_equal(flipped, batch[::-1])
    assert len({batch[i].tobytes() for i in range(len(INDICES))}) == len(INDICES)


def test_noise_in_a_loop_body_with_the_step_from_a_table():
    """A Loop whose iteration k draws the noise of step table[k], the table an initializer as
    a generator's plan would hold it, x_T's PRIOR_STEP first."""
    table = [PRIOR_STEP, 40, 17, 0]
    shape = (2, 3, 3)
    g = GraphBuilder("loop")
    seed = g.input("seed", np.int64, ())
    indices = g.input("indices", np.int64, ("batch",))
    steps = g.const(table, np.int64, name="step_table")
    body = g.subgraph("body")
    i = body.input("i", np.int64, ())
    cond = body.input("cond", np.bool_, ())
    step = body.op("Gather", steps, i, name="step")
    body.output(cond, dtype=np.bool_)
    body.output(standard_normal(body, seed, indices, step, shape), dtype=np.float32)
    noise = g.op("Loop", g.const(len(table)), None, body=body)
    g.output(noise, "noise", dtype=np.float32, shape=(len(table), "batch", *shape))
    (got,) = _session(g).run(None, {"seed": np.array(9), "indices": INDICES})
    for k, t in enumerate(table):
        want = np_standard_normal(9, INDICES, t, shape, xp=xp, dtype=np.float32)
        np.testing.assert_array_equal(got[k], want)


def test_bad_arguments_get_clear_errors():
    g = GraphBuilder("errors")
    seed, indices, step = _inputs(g)
    with pytest.raises(TypeError, match="GraphBuilder"):
        standard_normal(object(), seed, indices, step, (1, 2, 2))
    with pytest.raises(ValueError, match="positive int, got 0"):
        standard_normal(g, seed, indices, step, (1, 0, 2))
    with pytest.raises(ValueError, match=r"positive int, got 2\.0"):
        standard_normal(g, seed, indices, step, (1, 2.0, 2))
    with pytest.raises(TypeError, match="sequence of positive ints"):
        standard_normal(g, seed, indices, step, 4)
    with pytest.raises(ValueError, match=r"dtype must be numpy\.float32 or numpy\.float64"):
        standard_normal(g, seed, indices, step, (1, 2, 2), dtype=np.float16)
    with pytest.raises(ValueError, match="got None"):
        standard_normal(g, seed, indices, step, (1, 2, 2), dtype=None)
    with pytest.raises(ValueError, match="step 'nope' is not visible"):
        standard_normal(g, seed, indices, "nope", (1, 2, 2))
    with pytest.raises(TypeError, match="seed must be a value name"):
        standard_normal(g, 3, indices, step, (1, 2, 2))
    with pytest.raises(ValueError, match="n_quads must be a positive int"):
        philox_words(g, seed, indices, step, 0)
    assert not g.to_graph().node  # nothing was added by the refused calls
