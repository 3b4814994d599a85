"""refdiff.graph.builder: names, constants, bodies, checked models, and a model embedded as a call
(in the main graph and in a Loop body) equal to the model file itself under onnxruntime."""

from __future__ import annotations

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
from onnx import TensorProto, helper  # noqa: E402

from refdiff.graph import OPSET, GraphBuilder  # noqa: E402


def session(model):
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])


def run(model, **feeds):
    return session(model).run(None, feeds)


def hand_model(opset: int = OPSET):
    """A small denoiser-shaped model made with onnx.helper: x [B, 2, 3, 3], t [B] ->
    model_output [B, 4, 3, 3] through a Conv with weights, an If whose branches read outer
    values, a Constant node and a local function; its value names are the ones a builder
    hands out first ("const", "x_1", "add"), to catch collisions."""
    rng = np.random.default_rng(3)
    w = helper.make_tensor("const", TensorProto.FLOAT, [4, 2, 1, 1], rng.standard_normal(8))
    then_b = helper.make_graph(
        [helper.make_node("Mul", ["add", "two"], ["then_out"])],
        "then",
        [],
        [helper.make_tensor_value_info("then_out", TensorProto.FLOAT, None)],
    )
    else_b = helper.make_graph(
        [helper.make_node("Sub", ["add", "x_1"], ["else_out"])],
        "else",
        [],
        [helper.make_tensor_value_info("else_out", TensorProto.FLOAT, None)],
    )
    twice = helper.make_function(
        "local",
        "Twice",
        ["a"],
        ["b"],
        [helper.make_node("Add", ["a", "a"], ["b"])],
        [helper.make_opsetid("", opset)],
    )
    nodes = [
        helper.make_node("Conv", ["x", "const"], ["conv"]),
        helper.make_node("Cast", ["t"], ["tf"], to=TensorProto.FLOAT),
        helper.make_node("Constant", [], ["shape4"], value_ints=[-1, 1, 1, 1]),
        helper.make_node("Reshape", ["tf", "shape4"], ["x_1"]),
        helper.make_node("Twice", ["x_1"], ["x_2"], domain="local"),
        helper.make_node("Add", ["conv", "x_2"], ["add"]),
        helper.make_node("Constant", [], ["two"], value_float=2.0),
        helper.make_node("ReduceMax", ["t"], ["tmax"], keepdims=0),
        helper.make_node("Constant", [], ["limit"], value_int=25),
        helper.make_node("Greater", ["tmax", "limit"], ["big"]),
        helper.make_node("If", ["big"], ["model_output"], then_branch=then_b, else_branch=else_b),
    ]
    graph = helper.make_graph(
        nodes,
        "hand",
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 2, 3, 3]),
            helper.make_tensor_value_info("t", TensorProto.INT64, ["batch"]),
        ],
        [helper.make_tensor_value_info("model_output", TensorProto.FLOAT, ["batch", 4, 3, 3])],
        [w],
    )
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", opset), helper.make_opsetid("local", 1)],
        functions=[twice],
        ir_version=8,
    )
    onnx.checker.check_model(model, full_check=True)
    return model


def test_names_are_unique_across_the_model_and_its_bodies():
    g = GraphBuilder("main")
    assert [g.fresh("v"), g.fresh("v"), g.fresh("v")] == ["v", "v_1", "v_2"]
    body = g.subgraph("body")
    assert body.fresh("v") == "v_3" and body.root is g
    x = g.input("x", np.float32, ("batch",))
    with pytest.raises(ValueError, match="'x' is already a value name"):
        body.input("x", np.float32)
    assert g.op("Neg", x) == "neg" and body.op("Neg", x) == "neg_1"


def test_scoped_names_leave_plain_names_to_the_caller():
    g = GraphBuilder("main")
    x = g.input("x", np.float32, ("b",))
    with g.scope("noise"):
        z = g.op("Neg", x, name="z")
        with g.scope("inner"):
            w = g.subgraph("body").fresh("w")
    assert (z, w) == ("noise/z", "noise/inner/w")
    assert g.op("Abs", z, name="z") == "z"  # the scope ended
    assert g.output(z, "noise_out", dtype=np.float32, shape=("b",)) == "noise_out"


def test_constants_are_exact_typed_and_shared():
    g = GraphBuilder()
    a, b = g.const(3), g.const(3, np.int64)
    assert a == b  # one initializer for equal constants
    assert g.const(3, np.float32) != a and g.const(3.0) != g.const(3.0, np.float32)
    assert g.const([1, 2], np.int64) != g.const([[1, 2]], np.int64)  # shapes differ
    half, true, f32 = g.const(0.5), g.const(True), g.const(np.float32(0.1))
    init = {t.name: onnx.numpy_helper.to_array(t) for t in g.to_graph().initializer}
    assert init[a].dtype == np.int64 and init[a].shape == ()
    assert init[half].dtype == np.float64 and init[true].dtype == np.bool_
    assert init[f32].dtype == np.float32
    for bad, dtype in ((2**63, np.int64), (0.5, np.int64), (-1, np.uint32), (300, np.uint8)):
        with pytest.raises(ValueError, match=r"does not fit|not exactly representable"):
            g.const(bad, dtype)
    with pytest.raises(ValueError, match="not exactly representable"):
        g.const("text")
    with pytest.raises(ValueError, match="does not fit"):
        g.const(2**64)


def test_model_is_checked_runs_and_carries_metadata():
    g = GraphBuilder("affine")
    x = g.input("x", np.float32, ("batch", 3))
    y = g.op("Add", g.op("Mul", x, g.const(2.0, np.float32)), g.const([1, 2, 3], np.float32))
    lo, _ = g.op("Split", y, g.const([1, 2]), axis=1, outputs=["lo", "hi"])
    g.output(y, "y", dtype=np.float32, shape=("batch", 3))
    g.output(lo, "lo", dtype=np.float32, shape=("batch", 1))
    g.output(x, "x_copy", dtype=np.float32, shape=("batch", 3))  # an input goes out via Identity
    model = g.to_model(metadata={"refdiff": '{"a": 1}'}, doc_string="test")
    assert [(o.domain, o.version) for o in model.opset_import] == [("", OPSET)]
    assert {p.key: p.value for p in model.metadata_props} == {"refdiff": '{"a": 1}'}
    assert model.producer_name == "refdiff" and model.ir_version == 8
    assert [d.dim_param for d in model.graph.input[0].type.tensor_type.shape.dim[:1]] == ["batch"]
    xv = np.arange(6, dtype=np.float32).reshape(2, 3)
    got_y, got_lo, got_x = run(model, x=xv)
    np.testing.assert_array_equal(got_y, 2 * xv + np.array([1, 2, 3], np.float32))
    np.testing.assert_array_equal(got_lo, got_y[:, :1])
    np.testing.assert_array_equal(got_x, xv)


def test_bodies_read_the_values_around_them():
    g = GraphBuilder("bodies")
    x = g.input("x", np.float64, ("n",))
    flag = g.input("flag", np.bool_, ())
    scale = g.const(3.0)
    then_b, else_b = g.subgraph("then"), g.subgraph("else")
    then_b.output(then_b.op("Mul", x, scale), dtype=np.float64)
    else_b.output(else_b.op("Neg", x), dtype=np.float64)
    picked = g.op("If", flag, then_branch=then_b, else_branch=else_b)
    # Loop: acc <- acc * scale + x, for 4 iterations; scan output: the iteration number as float
    body = g.subgraph("loop")
    i = body.input("i", np.int64, ())
    cond = body.input("cond", np.bool_, ())
    acc = body.input("acc", np.float64, None)
    body.output(cond, dtype=np.bool_)
    body.output(body.op("Add", body.op("Mul", acc, scale), x), dtype=np.float64)
    body.output(body.op("Cast", i, to=TensorProto.DOUBLE), dtype=np.float64, shape=())
    final, iters = g.op("Loop", g.const(4), None, picked, body=body, outputs=2)
    g.output(final, "final", dtype=np.float64, shape=("n",))
    g.output(iters, "iters", dtype=np.float64, shape=(4,))
    model = g.to_model()
    xv = np.array([0.5, -1.0, 2.0])
    for f in (True, False):
        want = 3 * xv if f else -xv
        for _ in range(4):
            want = want * 3 + xv
        got, its = run(model, x=xv, flag=np.array(f))
        np.testing.assert_array_equal(got, want)
        np.testing.assert_array_equal(its, [0.0, 1.0, 2.0, 3.0])


def test_bad_graphs_get_clear_errors():
    g = GraphBuilder("main")
    x = g.input("x", np.float32, ("b",))
    body = g.subgraph("body")
    inner = body.op("Neg", x)
    with pytest.raises(ValueError, match=r"'neg' is not visible in graph 'main'.*another graph"):
        g.op("Abs", inner)
    with pytest.raises(ValueError, match=r"'nope' is not visible.*no graph of this model"):
        g.op("Abs", "nope")
    with pytest.raises(TypeError, match="must be a value name"):
        g.op("Abs", 3)
    with pytest.raises(ValueError, match="need a shape"):
        g.output(x, "y", dtype=np.float32)
    with pytest.raises(ValueError, match="need a shape"):
        g.input("z", np.float32)
    with pytest.raises(ValueError, match="each dimension must be"):
        g.input("z", np.float32, (-1,))
    with pytest.raises(TypeError, match="shape must be a sequence"):
        g.input("z", np.float32, "batch")
    with pytest.raises(TypeError, match="dtype must be a NumPy dtype"):
        g.input("z", "not a dtype", ())
    with pytest.raises(ValueError, match=r"domain 'com\.example' has no opset"):
        g.op("Thing", x, domain="com.example")
    with pytest.raises(ValueError, match="outputs must be >= 1"):
        g.op("Neg", x, outputs=0)
    with pytest.raises(ValueError, match="has no outputs"):
        g.to_model()
    g.output(g.op("Neg", x), "y", dtype=np.float32, shape=("b",))
    with pytest.raises(ValueError, match="'y' is already a value name"):
        g.output(x, "y", dtype=np.float32, shape=("b",))
    with pytest.raises(TypeError, match="metadata keys and values must be str"):
        g.to_model(metadata={"n": 1})
    with pytest.raises(ValueError, match="is a subgraph"):
        body.to_model()
    with pytest.raises(ValueError, match="opset must be a positive int"):
        GraphBuilder(opset=0)


def _reference(model, x, t):
    return run(model, x=x, t=t)[0]


def _embed_everywhere(model, shape, out_channels):
    """A graph calling ``model`` twice in the main graph (one set of weights) and, in a Loop over
    a table of timesteps, once per iteration with weights of the body and once with the main
    graph's: x <- x - 0.1 * model_output[:, :C]."""
    c = shape[0]
    g = GraphBuilder("embed")
    x = g.input("x", np.float32, ("batch", *shape))
    t = g.input("t", np.int64, ("batch",))
    steps = g.input("steps", np.int64, ("n",))
    outer = g.add_model(model, prefix="denoiser")
    out_shape = ("batch", out_channels, *shape[1:])
    g.output(g.call(outer, x=x, t=t), "first", dtype=np.float32, shape=out_shape)
    g.output(g.call(outer, x=g.op("Neg", x), t=t), "second", dtype=np.float32, shape=out_shape)
    body = g.subgraph("loop")
    i = body.input("i", np.int64, ())
    cond = body.input("cond", np.bool_, ())
    xc = body.input("x_in", np.float32, ("batch", *shape))
    tb = body.op("Expand", body.op("Gather", steps, i), body.op("Shape", t))
    inner = body.add_model(model, prefix="denoiser")
    out = body.call(inner, x=xc, t=tb)
    out_outer = body.call(outer, x=xc, t=tb)
    mean_side = body.op("Slice", out, body.const([0]), body.const([c]), body.const([1]))
    body.output(cond, dtype=np.bool_)
    body.output(
        body.op("Sub", xc, body.op("Mul", mean_side, body.const(0.1, np.float32))), dtype=np.float32
    )
    body.output(out, dtype=np.float32)
    body.output(out_outer, dtype=np.float32)
    x_end, outs, outs_outer = g.op("Loop", g.op("Shape", steps), None, x, body=body, outputs=3)
    g.output(x_end, "x_end", dtype=np.float32, shape=("batch", *shape))
    g.output(outs, "outs", dtype=np.float32, shape=("n", *out_shape))
    g.output(outs_outer, "outs_outer", dtype=np.float32, shape=("n", *out_shape))
    weights = [t.name for t in g.to_graph().initializer if t.name.startswith(outer.prefix + "/")]
    assert len(weights) == len(model.graph.initializer)  # one copy for the two calls
    return g.to_model()


def _check_embedding(model, x, t, steps):
    c = x.shape[1]
    want_first, want_second = _reference(model, x, t), _reference(model, -x, t)
    first, second, x_end, outs, outs_outer = run(
        _embed_everywhere(model, x.shape[1:], want_first.shape[1]), x=x, t=t, steps=steps
    )
    np.testing.assert_array_equal(first, want_first)
    np.testing.assert_array_equal(second, want_second)
    xr = x.copy()
    for k, step in enumerate(steps):
        out = _reference(model, xr, np.full_like(t, step))
        np.testing.assert_array_equal(outs[k], out)
        # weights of an outer graph: onnxruntime fuses the body's nodes less, so the results
        # differ in the last bits (float32 rounding)
        np.testing.assert_allclose(outs_outer[k], out, rtol=1e-5, atol=1e-5)
        xr = xr - np.float32(0.1) * out[:, :c]
    np.testing.assert_array_equal(x_end, xr)


def test_an_embedded_model_equals_the_file():
    model = hand_model()
    rng = np.random.default_rng(0)
    x = rng.standard_normal((3, 2, 3, 3)).astype(np.float32)
    _check_embedding(model, x, np.array([0, 10, 3]), np.array([40, 20, 3, 0]))


def test_an_embedded_denoiser_equals_the_file(tmp_path_factory):
    from tiny_model import shared_export  # skips without torch

    model = onnx.load(shared_export(tmp_path_factory))
    rng = np.random.default_rng(1)
    x = rng.standard_normal((3, 1, 8, 8)).astype(np.float32)
    _check_embedding(model, x, np.array([0, 17, 49]), np.array([49, 30, 1]))


def test_embedding_errors():
    g = GraphBuilder("main")
    x = g.input("x", np.float32, ("b", 2, 3, 3))
    with pytest.raises(TypeError, match=r"onnx\.ModelProto"):
        g.add_model(b"bytes")
    with pytest.raises(ValueError, match=r"uses opset 17 of the default domain.*opset 18"):
        g.add_model(hand_model(opset=17))
    body = g.subgraph("body")
    inner = body.add_model(hand_model(), prefix="den")
    assert inner.input_names == ("x", "t") and inner.output_names == ("model_output",)
    with pytest.raises(ValueError, match="added to graph 'body', which graph 'main' cannot see"):
        g.call(inner, x=x, t=x)
    den = g.add_model(hand_model(), prefix="den")
    with pytest.raises(ValueError, match=r"inputs are \['x', 't'\]; missing \['t'\], unknown \[\]"):
        g.call(den, x=x)
    with pytest.raises(ValueError, match=r"unknown \['y'\]"):
        g.call(den, x=x, t=x, y=x)
    with pytest.raises(ValueError, match=r"input 't' of 'den_1'.*not visible"):
        g.call(den, x=x, t="missing")
    with pytest.raises(TypeError, match="from add_model"):
        g.call(hand_model(), x=x, t=x)
    external = hand_model()
    external.graph.initializer[0].data_location = TensorProto.EXTERNAL
    with pytest.raises(ValueError, match="external files"):
        g.add_model(external)


def test_without_onnx_the_error_names_the_extra(tmp_path):
    from blocking import run_blocked

    proc = run_blocked("import refdiff.graph", tmp_path, ["onnx"])
    assert proc.returncode != 0
    assert (
        "building ONNX graphs (refdiff.graph) needs onnx, which is not installed: pip install "
        '"refdiff[onnx]"' in proc.stderr
    )
