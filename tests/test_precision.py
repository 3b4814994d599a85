"""Reduced-precision variants (int8, bfloat16) and the drift harness (docs/precision.md).

Fast tests use the tiny random U-Net of tiny_model.py; the slow one trains a small digits model
for a minute and checks the tolerances docs/precision.md states on it.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from tiny_model import TINY_DIFFUSION, shared_export

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from refdiff.export.quantize import (  # noqa: E402
    DEFAULT_FLOAT32_PARTS,
    TOLERANCES,
    graph_parts,
    trajectory_inputs,
    unshare_initializers,
    variant_error,
    write_variant,
)

from refdiff.cli import main  # noqa: E402
from refdiff.evaluation.drift import layer_drift, measure_drift  # noqa: E402
from refdiff.onnx_contract import METADATA_KEY, MetadataError, ModelMetadata  # noqa: E402
from refdiff.precision import Precision  # noqa: E402
from refdiff.runtime import OnnxDenoiser  # noqa: E402


def _openvino_bf16() -> bool:
    try:
        from refdiff.runtime.openvino import has_bfloat16

        return has_bfloat16()
    except ImportError:
        return False


needs_bf16 = pytest.mark.skipif(
    not _openvino_bf16(), reason="OpenVINO not installed, or no bfloat16 instructions on this CPU"
)


@pytest.fixture(scope="session")
def tiny_onnx(tmp_path_factory) -> Path:
    return shared_export(tmp_path_factory)


@pytest.fixture(scope="module")
def int8_file(tiny_onnx, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("int8") / "tiny-int8.onnx"
    return write_variant(tiny_onnx, out, "int8", calibration_images=4, calibration_steps=10)


@pytest.fixture(scope="module")
def digits_heldout():
    from refdiff.data import load_digits

    return load_digits("train").images, load_digits("test").images[:24]


def _metadata(path: Path) -> dict:
    proto = onnx.load(str(path))
    return json.loads({p.key: p.value for p in proto.metadata_props}[METADATA_KEY])


def _damaged(src: Path, dst: Path, factor: float = 3.0) -> Path:
    """A copy of ``src`` whose output convolution's weights are ``factor`` times too large."""
    from onnx import numpy_helper

    proto = onnx.load(str(src))
    (last,) = graph_parts(proto)["output convolution"]
    node = next(n for n in proto.graph.node if n.name == last)
    init = next(i for i in proto.graph.initializer if i.name == node.input[1])
    init.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(init) * factor, init.name))
    onnx.save(proto, str(dst))
    return dst


def _drift(reference: Path, variant: Path, digits: tuple, steps: int):
    train, heldout = digits
    return measure_drift(
        OnnxDenoiser(reference),
        OnnxDenoiser(variant),
        n=16,
        steps=steps,
        batch_size=8,
        heldout=heldout,
        train=train,
    )


# -- the metadata ------------------------------------------------------------------------------


def test_precision_round_trips_and_older_files_load(tiny_onnx):
    meta = ModelMetadata.from_json(json.dumps(_metadata(tiny_onnx)))
    assert meta.precision is None and meta.precision_name == "float32"  # no key: its dtype
    p = Precision("int8", float32=("output convolution",), calibration={"calls": 3})
    again = ModelMetadata.from_json(ModelMetadata(meta.diffusion, precision=p).to_json())
    assert again.precision == p and again.precision_name == "int8"
    assert p.engine == "onnxruntime" and Precision("bfloat16").engine == "openvino"


@pytest.mark.parametrize(
    "entry, message",
    [
        ({"name": "int4"}, "precision must be one of"),
        ({"float32": []}, "lacks its 'name'"),
        ({"name": "int8", "colour": 1}, "unknown precision keys"),
        ("int8", "must be a JSON object"),
    ],
)
def test_bad_precision_entries_are_refused(tiny_onnx, entry, message):
    d = _metadata(tiny_onnx)
    d["precision"] = entry
    with pytest.raises(MetadataError, match=message):
        ModelMetadata.from_json(json.dumps(d), source="m")


# -- the int8 variant ----------------------------------------------------------------------------


def test_unshared_initializers_compute_the_same(tiny_onnx, tmp_path):
    proto = onnx.load(str(tiny_onnx))
    copies = unshare_initializers(proto)
    assert copies > 0  # the exporter's group norms share their unit scales
    floats = {i.name for i in proto.graph.initializer if i.data_type == onnx.TensorProto.FLOAT}
    readers: dict[str, int] = {}
    for node in proto.graph.node:
        for name in node.input:
            if name in floats:
                readers[name] = readers.get(name, 0) + 1
    assert max(readers.values()) == 1
    onnx.save(proto, str(tmp_path / "u.onnx"))
    a, b = OnnxDenoiser(tiny_onnx), OnnxDenoiser(tmp_path / "u.onnx")
    x = np.random.default_rng(0).standard_normal((2, 1, 8, 8)).astype(np.float32)
    t = np.array([0, 40])
    np.testing.assert_array_equal(a(x, t), b(x, t))


def test_the_quantizer_accepts_every_operator_once_unshared(tiny_onnx, tmp_path):
    """With every operator type it knows (group norms included), onnxruntime's quantizer runs on
    the unshared graph."""
    from onnxruntime.quantization import QuantFormat, quantize_static
    from refdiff.export.quantize import _Feeds

    proto = onnx.load(str(tiny_onnx))
    unshare_initializers(proto)
    onnx.save(proto, str(tmp_path / "u.onnx"))
    feeds = trajectory_inputs(OnnxDenoiser(tiny_onnx), images=2, steps=3)
    quantize_static(
        str(tmp_path / "u.onnx"),
        str(tmp_path / "q.onnx"),
        _Feeds(feeds),
        quant_format=QuantFormat.QDQ,
    )
    assert any(
        n.op_type == "QuantizeLinear" for n in onnx.load(str(tmp_path / "q.onnx")).graph.node
    )


def test_calibration_visits_every_noise_level(tiny_onnx):
    feeds = trajectory_inputs(OnnxDenoiser(tiny_onnx), images=3, steps=10)
    ts = [int(f["t"][0]) for f in feeds]
    assert len(feeds) == 10 and all(f["x"].shape == (3, 1, 8, 8) for f in feeds)
    assert max(ts) == TINY_DIFFUSION["schedule"]["T"] - 1 and min(ts) == 0


def test_int8_file_says_what_it_is_and_keeps_its_float32_parts(tiny_onnx, int8_file, capsys):
    meta = _metadata(int8_file)
    p = meta["precision"]
    assert p["name"] == "int8" and p["source"] == tiny_onnx.name
    assert p["calibration"]["calls"] == 10 and p["calibration"]["images"] == 4
    assert set(DEFAULT_FLOAT32_PARTS) <= set(p["float32"])
    proto = onnx.load(str(int8_file))
    produced = {o: n.op_type for n in proto.graph.node for o in n.output}
    parts = graph_parts(proto)
    for name in parts["input convolution"] + parts["output convolution"]:
        node = next(n for n in proto.graph.node if n.name == name)
        assert produced.get(node.input[1]) != "DequantizeLinear"  # float32 weights
    quantized = [
        n
        for n in proto.graph.node
        if n.op_type == "Conv" and produced.get(n.input[1]) == "DequantizeLinear"
    ]
    assert quantized  # the other convolutions read int8 weights
    assert main(["check", str(int8_file)]) == 0
    out = capsys.readouterr().out
    assert "precision: int8 (runs on onnxruntime)" in out and "output convolution" in out


def test_int8_outputs_stay_within_the_stated_tolerance(tiny_onnx, int8_file):
    err = variant_error(OnnxDenoiser(tiny_onnx), OnnxDenoiser(int8_file))
    assert 0 < err <= TOLERANCES["int8"]


def test_write_variant_refuses_bad_requests(tiny_onnx, tmp_path, tmp_path_factory):
    with pytest.raises(ValueError, match="'int8' or 'bfloat16'"):
        write_variant(tiny_onnx, tmp_path / "v.onnx", "int4")
    with pytest.raises(ValueError, match="overwrite its float32 source"):
        write_variant(tiny_onnx, tiny_onnx, "int8")
    with pytest.raises(ValueError, match="unknown graph parts"):
        write_variant(tiny_onnx, tmp_path / "v.onnx", "int8", float32=["decoder"])
    fp16 = shared_export(tmp_path_factory, fp16=True)
    with pytest.raises(ValueError, match="is a float16 file, not float32"):
        write_variant(fp16, tmp_path / "v.onnx", "int8")
    with pytest.raises(FileNotFoundError):
        write_variant(tmp_path / "missing.onnx", tmp_path / "v.onnx", "int8")
    assert not (tmp_path / "v.onnx").exists()


def test_cli_exports_a_variant_of_a_file_and_samples_it_unchanged(tiny_onnx, tmp_path, capsys):
    out = tmp_path / "m-int8.onnx"
    args = ["export", str(tiny_onnx), "--precision", "int8", "--out", str(out)]
    assert main([*args, "--calibration-images", "2", "--calibration-steps", "5"]) == 0
    text = capsys.readouterr().out
    assert "precision: int8" in text and "relative RMS" in text and ": ok" in text
    png = tmp_path / "s.png"
    assert main(["sample", str(out), "--n", "3", "--steps", "4", "--out", str(png)]) == 0
    assert np.load(png.with_suffix(".npz"))["images"].shape == (3, 1, 8, 8)


def test_cli_refuses_contradicting_precisions(tiny_onnx, tmp_path, capsys):
    args = ["export", str(tiny_onnx), "--fp16", "--precision", "int8"]
    assert main([*args, "--out", str(tmp_path / "x.onnx")]) != 0
    assert "--fp16 contradicts --precision int8" in capsys.readouterr().err


# -- int8 with the float32 network for the smallest t -------------------------------------------


@pytest.fixture(scope="module")
def below_file(tiny_onnx, tmp_path_factory) -> Path:
    """The int8 fixture's variant (the same calibration) with t < 10 in float32 (T = 50)."""
    out = tmp_path_factory.mktemp("below") / "tiny-int8-below.onnx"
    return write_variant(
        tiny_onnx, out, "int8", calibration_images=4, calibration_steps=10, float32_below=10
    )


def test_float32_below_runs_float32_for_small_t_and_int8_above(tiny_onnx, int8_file, below_file):
    ref, int8, both = (OnnxDenoiser(p) for p in (tiny_onnx, int8_file, below_file))
    assert both.metadata.precision.float32_below == 10
    x = np.random.default_rng(0).standard_normal((4, 1, 8, 8)).astype(np.float32)
    for ts, same_as in (([0, 3, 9, 9], ref), ([10, 20, 49, 10], int8), ([9, 40, 40, 40], ref)):
        t = np.asarray(ts, np.int64)  # the last: a batch straddling 10 runs float32 whole
        np.testing.assert_allclose(both(x, t), same_as(x, t), rtol=0, atol=1e-6)
    t = np.full(4, 5, np.int64)
    assert np.abs(int8(x, t) - ref(x, t)).max() > 1e-3  # int8 alone would differ there
    err = variant_error(ref, both)
    assert 0 < err < variant_error(ref, int8)


def test_float32_below_is_recorded_described_and_refused_where_it_cannot_apply(
    tiny_onnx, below_file, tmp_path, capsys
):
    assert _metadata(below_file)["precision"]["float32_below"] == 10
    assert main(["check", str(below_file)]) == 0
    assert "every call with a t below 10: the float32 network" in capsys.readouterr().out
    with pytest.raises(ValueError, match=r"float32_below must be in \[0, 49\], got 50"):
        write_variant(tiny_onnx, tmp_path / "v.onnx", "int8", float32_below=50)
    with pytest.raises(ValueError, match="applies to int8 variants, not to bfloat16"):
        write_variant(tiny_onnx, tmp_path / "v.onnx", "bfloat16", float32_below=5)
    argv = ["export", str(tiny_onnx), "--float32-below", "5", "--out", str(tmp_path / "v.onnx")]
    assert main(argv) != 0
    assert "--float32-below applies to --precision int8 only" in capsys.readouterr().err
    assert main([*argv, "--sampler", "dpmpp_2m"]) != 0  # nor to a generator
    assert "--float32-below applies to --precision int8 only" in capsys.readouterr().err
    assert not (tmp_path / "v.onnx").exists()
    d = _metadata(tiny_onnx)
    d["precision"] = {"name": "bfloat16", "float32_below": 3}
    with pytest.raises(MetadataError, match="float32_below applies to int8 files"):
        ModelMetadata.from_json(json.dumps(d), source="m")


def test_a_generator_of_a_float32_below_file_equals_the_python_sampler(below_file, tmp_path, capsys):
    out = tmp_path / "gen.onnx"
    args = ["export", str(below_file), "--sampler", "dpmpp_2m", "--steps", "6", "--out", str(out)]
    assert main([*args, "--no-progress"]) == 0
    assert "PASS" in capsys.readouterr().out


def test_an_int8_generator_says_so_and_equals_the_python_sampler(int8_file, tmp_path, capsys):
    out = tmp_path / "gen8.onnx"
    args = ["export", str(int8_file), "--sampler", "dpmpp_2m", "--steps", "4", "--out", str(out)]
    assert main([*args, "--no-progress"]) == 0
    assert "PASS" in capsys.readouterr().out  # the export's own check against the Python loop
    assert main(["check", str(out)]) == 0
    assert "int8 denoiser" in capsys.readouterr().out


def test_a_generator_of_a_bfloat16_file_is_refused(tiny_onnx, tmp_path, capsys):
    """A bfloat16 file is the float32 graph that OpenVINO runs in bfloat16: a generator (run by
    onnxruntime) of it computed float32, said "float32 denoiser" and failed its own check."""
    meta = ModelMetadata.from_json(json.dumps(_metadata(tiny_onnx)))
    proto = onnx.load(str(tiny_onnx))
    bf16 = ModelMetadata(meta.diffusion, model=meta.model, precision=Precision("bfloat16"))
    for prop in proto.metadata_props:
        if prop.key == METADATA_KEY:
            prop.value = bf16.to_json()
    onnx.save(proto, str(tmp_path / "bf16.onnx"))
    out = tmp_path / "gen.onnx"
    argv = ["export", str(tmp_path / "bf16.onnx"), "--sampler", "dpmpp_2m", "--out", str(out)]
    assert main(argv) != 0
    err = capsys.readouterr().err
    assert "a bfloat16 denoiser runs on openvino" in err and "float32 file" in err, err
    assert not out.exists() and not (tmp_path / "gen-step.onnx").exists()
    from refdiff.graph.generator import build_generator, build_step

    choice = meta.diffusion.choose_sampler("dpmpp_2m", steps=4)
    for build in (build_generator, build_step):  # the library refuses it too
        with pytest.raises(ValueError, match="a bfloat16 denoiser runs on openvino"):
            build(proto, choice)


# -- the bfloat16 variant -------------------------------------------------------------------------


@needs_bf16
def test_bfloat16_file_runs_in_openvino_within_the_stated_tolerance(tiny_onnx, tmp_path, capsys):
    out = write_variant(tiny_onnx, tmp_path / "bf16.onnx", "bfloat16")
    assert _metadata(out)["precision"]["name"] == "bfloat16"
    d = OnnxDenoiser(out)
    assert d.precision == "bfloat16" and d._engine is not None
    err = variant_error(OnnxDenoiser(tiny_onnx), d)
    assert 0 < err <= TOLERANCES["bfloat16"]  # bfloat16 arithmetic did run: not exactly float32
    assert main(["check", str(out)]) == 0
    assert "bfloat16 (runs on openvino)" in capsys.readouterr().out


# -- the drift harness ---------------------------------------------------------------------------


def test_harness_passes_a_file_against_itself(tiny_onnx, digits_heldout):
    train, heldout = digits_heldout
    d = OnnxDenoiser(tiny_onnx)
    r = measure_drift(d, d, n=16, steps=3, batch_size=8, heldout=heldout, train=train)
    assert r.ok and len(r.steps) == 3
    assert all(s.denoiser_rel == 0 and s.trajectory_rms == 0 for s in r.steps)
    assert r.image_rms == 0 and r.bpd["difference"] == 0 and r.fd["relative_change"] == 0


def test_harness_fails_a_damaged_variant_and_says_where(
    tiny_onnx, tmp_path, digits_heldout, capsys
):
    damaged = _damaged(tiny_onnx, tmp_path / "damaged.onnx")
    r = _drift(tiny_onnx, damaged, digits_heldout, steps=3)
    assert not r.ok and any("bits/dim moved" in f for f in r.failures)
    assert all(s.denoiser_rel > 0.5 for s in r.steps)  # the output is 3x too large everywhere
    assert r.steps[-1].trajectory_rms > r.steps[0].trajectory_rms > 0
    layers = layer_drift(
        tiny_onnx, damaged, trajectory_inputs(OnnxDenoiser(tiny_onnx), images=2, steps=3)
    )
    assert layers[-1].rel > 1 and max(la.rel for la in layers[:-1]) == 0  # only the last layer
    assert (
        main(
            [
                "check",
                str(tiny_onnx),
                "--against",
                str(damaged),
                "--n",
                "8",
                "--steps",
                "3",
                "--heldout",
                "16",
                "--layers",
                "--json",
                str(tmp_path / "d.json"),
            ]
        )
        == 1
    )
    out = capsys.readouterr()
    assert "FAIL" in out.out and "per layer" in out.out and "drifts from" in out.err
    assert json.loads((tmp_path / "d.json").read_text())["ok"] is False


def test_harness_reports_the_int8_variant(tiny_onnx, int8_file, digits_heldout, tmp_path):
    from refdiff.plots import plot_drift

    r = _drift(tiny_onnx, int8_file, digits_heldout, steps=4)
    assert all(0 < s.denoiser_rel < 1 for s in r.steps) and r.bpd is not None
    assert "denoiser rel" in r.table()
    png = plot_drift([("int8", r)], tmp_path / "drift.png")
    assert png.stat().st_size > 0


def test_harness_refuses_two_different_models(tiny_onnx, tmp_path, capsys):
    d = _metadata(tiny_onnx)
    d["diffusion"]["schedule"]["T"] = 60
    proto = onnx.load(str(tiny_onnx))
    for p in proto.metadata_props:
        if p.key == METADATA_KEY:
            p.value = json.dumps(d)
    onnx.save(proto, str(tmp_path / "other.onnx"))
    with pytest.raises(ValueError, match="different diffusion settings"):
        measure_drift(OnnxDenoiser(tiny_onnx), OnnxDenoiser(tmp_path / "other.onnx"), n=4)
    assert main(["check", str(tiny_onnx), "x", "--against", str(tiny_onnx)]) != 0
    assert "not both" in capsys.readouterr().err


# -- on a trained digits model (slow) -----------------------------------------------------------


@pytest.mark.slow
def test_variants_of_a_trained_digits_model_stay_within_the_stated_tolerances(tmp_path):
    """docs/precision.md's tolerances, on a digits model trained for a minute."""
    from refdiff.export import export_onnx

    from refdiff.runs import resolve_config
    from refdiff.training import Trainer

    cfg = resolve_config(
        None,
        {
            "data": "digits",
            "unet": {"preset": "tiny", "dropout": 0.0},
            "diffusion": {"schedule": {"name": "linear", "T": 100}},
            "batch_size": 64,
            "steps": 300,
            "eval_examples": 16,
            "num_samples": 4,
            "log_every": 100,
        },
    )
    trainer = Trainer(cfg, tmp_path / "run", device="cpu", progress=False, log=lambda s: None)
    trainer.train()
    fp32 = export_onnx(
        trainer.state.ema, trainer.diffusion, tmp_path / "m.onnx", model_config=cfg.unet.to_dict()
    )
    ref = OnnxDenoiser(fp32)
    names = ["int8", "bfloat16"] if _openvino_bf16() else ["int8"]
    for name in names:
        v = write_variant(fp32, tmp_path / f"m-{name}.onnx", name)
        assert variant_error(ref, OnnxDenoiser(v)) <= TOLERANCES[name], name
