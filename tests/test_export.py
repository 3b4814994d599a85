"""PyTorch -> ONNX export: the contract, the parity check, fp16, bad input, and the headline
parity test: the core's samplers on the PyTorch model (torch backend) and the runtime on the
exported model (NumPy backend) give the same images.

Exporting takes ~10-30 s on a small CPU, so one tiny model is exported once per session (and
shared through the session's temporary folder with test_runtime.py and test_no_torch.py).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

import array_api_compat.torch as torch_xp  # noqa: E402
from refdiff.export import (  # noqa: E402
    DEFAULT_TOLERANCES,
    ParityError,
    ParityReport,
    export_onnx,
    verify_onnx,
)
from tiny_model import (  # noqa: E402
    TINY_DIFFUSION,
    TINY_UNET,
    save_tiny_run,
    shared_export,
    tiny_diffusion,
    tiny_model,
)

from refdiff import (  # noqa: E402
    Diffusion,
    ddim_sample,
    ddpm_sample,
)
from refdiff.cli import main  # noqa: E402
from refdiff.commands import export as export_cli  # noqa: E402
from refdiff.nn import UNet, UNetConfig  # noqa: E402
from refdiff.onnx_contract import METADATA_KEY  # noqa: E402
from refdiff.runtime import OnnxDenoiser, sample_array  # noqa: E402

# One torch thread for these tiny models is set for the whole session in conftest.py.


@pytest.fixture(scope="session")
def tiny_onnx(tmp_path_factory) -> Path:
    return shared_export(tmp_path_factory)


@pytest.fixture(scope="session")
def tiny_onnx_fp16(tmp_path_factory) -> Path:
    return shared_export(tmp_path_factory, fp16=True)


def _rewrite(src: Path, dst: Path, edit) -> Path:
    proto = onnx.load(str(src))
    edit(proto)
    onnx.save(proto, str(dst))
    return dst


def _metadata(proto) -> dict:
    (entry,) = [p for p in proto.metadata_props if p.key == METADATA_KEY]
    return json.loads(entry.value)


def _set_metadata(proto, value: str | None) -> None:
    for i in reversed(range(len(proto.metadata_props))):
        if proto.metadata_props[i].key == METADATA_KEY:
            del proto.metadata_props[i]
    if value is not None:
        e = proto.metadata_props.add()
        e.key, e.value = METADATA_KEY, value


# ---- the contract -----------------------------------------------------------------------------


def test_export_writes_the_contract(tiny_onnx):
    proto = onnx.load(str(tiny_onnx))
    onnx.checker.check_model(proto, full_check=True)
    assert max(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")) >= 18
    assert [i.name for i in proto.graph.input] == ["x", "t"]
    assert [o.name for o in proto.graph.output] == ["model_output"]

    def sig(v):
        tt = v.type.tensor_type
        return tt.elem_type, [d.dim_param or d.dim_value for d in tt.shape.dim]

    f32, i64 = onnx.TensorProto.FLOAT, onnx.TensorProto.INT64
    assert sig(proto.graph.input[0]) == (f32, ["batch", 1, 8, 8])
    assert sig(proto.graph.input[1]) == (i64, ["batch"])
    assert sig(proto.graph.output[0]) == (f32, ["batch", 2, 8, 8])  # learned variance: 2C
    # Weights inside the file, none external.
    assert proto.graph.initializer
    assert not any(onnx.external_data_helper.uses_external_data(t) for t in proto.graph.initializer)
    meta = _metadata(proto)
    assert meta["format"] == 1
    assert meta["diffusion"] == tiny_diffusion().to_dict()
    assert meta["model"] == UNetConfig.from_dict(TINY_UNET).to_dict()
    assert meta["dtype"] == "float32"
    assert meta["input_names"] == ["x", "t"] and meta["output_name"] == "model_output"
    import refdiff

    assert meta["refdiff_version"] == refdiff.__version__


def test_export_keeps_the_model_unchanged(tmp_path, monkeypatch):
    # The export itself is mocked out (slow); what matters is the state around it.
    model = tiny_model().train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    seen = {}

    def fake_export(module, args, **kwargs):
        seen["training"] = module.training
        seen["grad"] = torch.is_grad_enabled()
        raise RuntimeError("stop here")

    monkeypatch.setattr(torch.onnx, "export", fake_export)
    with pytest.raises(RuntimeError, match="stop here"):
        export_onnx(model, tiny_diffusion(), tmp_path / "m.onnx")
    assert seen == {"training": False, "grad": False}
    assert model.training
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert not list(tmp_path.iterdir())  # nothing half-written


# ---- verification ------------------------------------------------------------------------------


def test_verify_fp32_passes_with_small_error(tiny_onnx):
    report = verify_onnx(tiny_model(), tiny_onnx, batch_sizes=(1, 3))
    assert isinstance(report, ParityReport) and report.ok
    assert report.dtype == "float32"
    assert (report.atol, report.rtol) == DEFAULT_TOLERANCES["float32"]
    assert {(c.batch_size, c.timestep) for c in report.cases} == {
        (b, t) for b in (1, 3) for t in (0, 25, 49)
    }
    assert all(c.shape == (c.batch_size, 2, 8, 8) for c in report.cases)
    assert 0 < report.max_abs < 2e-5
    table = report.table()
    assert "PASS" in table and "max abs" in table


def test_verify_shows_its_progress(tiny_onnx, capsys):
    """The parity check of a large model takes a while: a bar over its cases, with the time
    left (on stderr), when asked; nothing otherwise."""
    verify_onnx(tiny_model(), tiny_onnx, progress=True)
    err = capsys.readouterr().err
    assert "parity" in err and "/6" in err and "case" in err
    verify_onnx(tiny_model(), tiny_onnx)
    assert capsys.readouterr().err == ""


def test_verify_collects_every_value_failure(tiny_onnx):
    other = tiny_model(seed=1)  # same architecture, other weights
    with pytest.raises(ParityError) as info:
        verify_onnx(other, tiny_onnx, batch_sizes=(1, 2), timesteps=(0, 49))
    report = info.value.report
    assert isinstance(info.value, ValueError)
    assert not report.ok and len(report.cases) == 4
    assert len(report.failures) == 4 and all("above tolerance" in f for f in report.failures)
    assert "FAIL" in report.table()
    # Not raising: the same report.
    again = verify_onnx(
        other, tiny_onnx, batch_sizes=(1, 2), timesteps=(0, 49), raise_on_failure=False
    )
    assert again.failures == report.failures


def test_verify_reports_config_and_shape_mismatch(tiny_onnx):
    # A model with C outputs against a file with 2C: metadata and shapes both reported.
    cfg = {**TINY_UNET, "learn_sigma": False}
    model = UNet(UNetConfig.from_dict(cfg)).eval()
    report = verify_onnx(model, tiny_onnx, timesteps=(3,), raise_on_failure=False)
    text = " | ".join(report.failures)
    assert "another model configuration" in text and "learn_sigma" in text
    assert "output shape [1, 2, 8, 8], PyTorch gives [1, 1, 8, 8]" in text
    assert report.cases == ()


def test_verify_checks_names_and_metadata(tiny_onnx, tmp_path):
    def rename_output(proto):
        old = proto.graph.output[0].name
        proto.graph.output[0].name = "out"
        for node in proto.graph.node:
            node.output[:] = ["out" if o == old else o for o in node.output]

    renamed = _rewrite(tiny_onnx, tmp_path / "renamed.onnx", rename_output)
    with pytest.raises(ParityError, match=r"outputs are \['out'\]"):
        verify_onnx(tiny_model(), renamed)
    bare = _rewrite(tiny_onnx, tmp_path / "bare.onnx", lambda p: _set_metadata(p, None))
    with pytest.raises(ParityError, match="lacks refdiff metadata"):
        verify_onnx(tiny_model(), bare)
    with pytest.raises(FileNotFoundError, match=r"nope.onnx"):
        verify_onnx(tiny_model(), tmp_path / "nope.onnx")


# ---- fp16 -----------------------------------------------------------------------------------


def test_fp16_export_stays_accurate(tiny_onnx, tiny_onnx_fp16):
    proto = onnx.load(str(tiny_onnx_fp16))
    meta = _metadata(proto)
    assert meta["dtype"] == "float16"
    # float32 I/O, so the runtime does not change.
    assert proto.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert proto.graph.output[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    # The convolution and linear weights are float16; GroupNorm's affine parameters float32.
    kinds = {}
    for init in proto.graph.initializer:
        kinds.setdefault(init.data_type, []).append(init.name)
    assert len(kinds.get(onnx.TensorProto.FLOAT16, [])) > len(kinds.get(onnx.TensorProto.FLOAT, []))
    report = verify_onnx(tiny_model(), tiny_onnx_fp16)  # against float32 PyTorch
    assert report.ok and report.dtype == "float16"
    assert (report.atol, report.rtol) == DEFAULT_TOLERANCES["float16"]
    assert 1e-5 < report.max_abs < 1e-2
    # Sampling with it: the same images up to a few 8-bit levels (no black images).
    a = sample_array(OnnxDenoiser(tiny_onnx), 4, sampler="ddim", steps=10, progress=False)
    b = sample_array(OnnxDenoiser(tiny_onnx_fp16), 4, sampler="ddim", steps=10, progress=False)
    assert np.all(np.isfinite(b)) and b.std() > 0.1
    assert np.abs(a - b).max() < 0.05


# ---- bad input -------------------------------------------------------------------------------


def test_export_refuses_bad_input(tmp_path, monkeypatch):
    import refdiff.export.onnx_export as ox

    model, d, out = tiny_model(), tiny_diffusion(), tmp_path / "m.onnx"
    with pytest.raises(ValueError, match="opset must be >= 18, got 17"):
        export_onnx(model, d, out, opset=17)
    with pytest.raises(TypeError, match="Diffusion"):
        export_onnx(model, TINY_DIFFUSION, out)
    with pytest.raises(TypeError, match=r"torch.nn.Module"):
        export_onnx(lambda x, t: x, d, out)
    fixed = Diffusion.from_dict({**TINY_DIFFUSION, "variance": "fixed_small"})
    with pytest.raises(ValueError, match=r"learn_sigma=True.*'fixed_small'"):
        export_onnx(model, fixed, out)
    rgb = Diffusion.from_dict({**TINY_DIFFUSION, "image_shape": [3, 8, 8]})
    with pytest.raises(ValueError, match="in_channels=1"):
        export_onnx(model, rgb, out)
    with pytest.raises(ValueError, match="needs \\(2, 1, 8, 8\\)"):  # generic: the dry run
        export_onnx(model, fixed, out, model_config={})
    with pytest.raises(TypeError, match="float32 model"):
        export_onnx(tiny_model().double(), d, out)
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(OSError, match=r"cannot write the ONNX file .*is a file, not a folder"):
        export_onnx(model, d, blocker / "m.onnx")
    with pytest.raises(ValueError, match="is a folder"):
        export_onnx(model, d, tmp_path)
    monkeypatch.setattr(ox, "MAX_MODEL_BYTES", 1000)
    with pytest.raises(ValueError, match="below 2 GiB"):
        export_onnx(model, d, out)
    assert not out.exists()


# ---- the "done when": PyTorch + core samplers == ONNX + runtime ------------------------


@pytest.mark.parametrize(
    ("sampler", "steps", "eta"),
    [("ddpm", None, 0.0), ("ddim", 10, 0.0), ("ddim", 10, 1.0)],
    ids=["ddpm-T50", "ddim-10-eta0", "ddim-10-eta1"],
)
def test_torch_and_onnx_sampling_agree(tiny_onnx, sampler, steps, eta):
    n, seed = 5, 7
    d = tiny_diffusion()
    model = tiny_model()
    den = OnnxDenoiser(tiny_onnx)
    schedule = d.sampling_schedule(steps)
    sample_fn = ddpm_sample if sampler == "ddpm" else ddim_sample
    kwargs = {} if sampler == "ddpm" else {"eta": eta}
    with torch.no_grad():
        want = sample_fn(
            schedule,
            lambda x, t: model(x, t),
            (n, *d.image_shape),
            prediction=d.prediction,
            variance=d.variance,
            clip_denoised=d.clip_denoised,
            data_range=d.data_range,
            seed=seed,
            sample_indices=torch.arange(n),
            xp=torch_xp,
            dtype=torch.float32,
            **kwargs,
        ).numpy()
    got = sample_array(
        den, n, sampler=sampler, steps=steps, seed=seed, batch_size=2, progress=False, **kwargs
    )
    assert got.dtype == np.float32 and got.shape == want.shape
    assert want.std() > 0.1  # a meaningful comparison: the model does something
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-4)
    # As 8-bit images: equal but for values sitting on a rounding boundary.
    from refdiff.runtime import to_uint8

    diff = np.abs(to_uint8(got).astype(int) - to_uint8(want).astype(int))
    assert diff.max() <= 1 and (diff > 0).mean() < 0.01


# ---- CLI -------------------------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="refdiff")
    export_cli.add_parser(parser.add_subparsers(dest="command"))
    return parser


def test_cli_help_has_examples(capsys):
    for cmd in ("export", "check"):
        with pytest.raises(SystemExit) as info:
            _parser().parse_args([cmd, "--help"])
        assert info.value.code == 0
        out = capsys.readouterr().out
        assert "examples:" in out and f"refdiff {cmd}" in out


def test_cli_module_does_not_import_torch():
    import subprocess
    import sys

    code = (
        "import sys; import refdiff.commands.export, refdiff.commands.sample; "
        "print('torch' in sys.modules, 'onnxruntime' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]


HAS_TRAINER = importlib.util.find_spec("refdiff.training") is not None and (
    importlib.util.find_spec("refdiff.training.checkpoint") is not None
)


def _save_run(run_dir: Path, model: UNet) -> Path:
    """A checkpoint of ``model`` (as both raw and EMA weights) written by the trainer's API."""
    from refdiff.runs.train_config import TrainConfig
    from refdiff.training.checkpoint import save_checkpoint

    config = TrainConfig(
        unet=UNetConfig.from_dict(TINY_UNET), diffusion=tiny_diffusion(), loss="hybrid"
    )
    optimizer = torch.optim.Adam(model.parameters())
    return save_checkpoint(
        run_dir,
        1,
        model=model,
        ema=model,
        optimizer=optimizer,
        config=config,
        timestep_sampler={},
        numpy_rng=np.random.default_rng(0).bit_generator.state,
    )


@pytest.mark.skipif(not HAS_TRAINER, reason="refdiff.training.checkpoint not available yet")
def test_cli_check_on_a_checkpoint(tiny_onnx, tmp_path, capsys):
    run = tmp_path / "run"
    _save_run(run, tiny_model())
    args = _parser().parse_args(["check", str(tiny_onnx), str(run)])
    assert args.func(args) == 0
    out = capsys.readouterr().out
    assert "PASS" in out and "max abs" in out
    # Another model's checkpoint: the report, and exit status 1.
    _save_run(tmp_path / "other", tiny_model(seed=3))
    args = _parser().parse_args(["check", str(tiny_onnx), str(tmp_path / "other")])
    assert args.func(args) == 1
    captured = capsys.readouterr()
    assert "FAIL" in captured.out and "does not match" in captured.err
    args = _parser().parse_args(["check", str(tmp_path / "none.onnx"), str(run)])
    with pytest.raises(FileNotFoundError, match=r"none.onnx"):
        args.func(args)


def _with_weights(src: Path, dst: Path, weights: str | None) -> Path:
    """``src`` with its metadata's ``weights`` entry set (None: removed, as in older files)."""

    def edit(proto):
        meta = _metadata(proto)
        meta.pop("weights", None)
        if weights is not None:
            meta["weights"] = weights
        _set_metadata(proto, json.dumps(meta))

    return _rewrite(src, dst, edit)


@pytest.mark.skipif(not HAS_TRAINER, reason="refdiff.training.checkpoint not available yet")
def test_check_compares_the_weights_the_file_records(tiny_onnx, tmp_path, capsys):
    """`refdiff check model.onnx RUN` on a file exported with --no-ema failed with no hint.
    The file holds ``tiny_model(0)``; run ``a`` has it as raw weights, run ``b`` as EMA."""
    run_a, run_b = tmp_path / "a", tmp_path / "b"
    save_tiny_run(run_a, tiny_model(), ema=tiny_model(seed=3))
    save_tiny_run(run_b, tiny_model(seed=3), ema=tiny_model())
    raw = _with_weights(tiny_onnx, tmp_path / "raw.onnx", "raw")
    assert OnnxDenoiser(raw).metadata.weights == "raw"
    assert main(["check", str(raw), str(run_a)]) == 0  # the raw weights, as the file says
    captured = capsys.readouterr()
    assert "PASS" in captured.out and "holds raw weights" in captured.err
    # An older file that does not say: compared with the EMA, it fails, and says why it may
    old = _with_weights(tiny_onnx, tmp_path / "old.onnx", None)
    assert OnnxDenoiser(old).metadata.weights is None
    assert main(["check", str(old), str(run_a), "--no-progress"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "does not record whether it holds EMA or raw" in err[0]
    assert "add --no-ema" in err[0]
    # A file of EMA weights checked against the raw ones: the message says so
    ema = _with_weights(tiny_onnx, tmp_path / "ema.onnx", "ema")
    assert main(["check", str(ema), str(run_b)]) == 0
    capsys.readouterr()
    assert main(["check", str(ema), str(run_b), "--no-ema"]) == 1
    assert "holds EMA weights (its metadata says so): drop --no-ema" in capsys.readouterr().err


@pytest.mark.skipif(not HAS_TRAINER, reason="refdiff.training.checkpoint not available yet")
def test_export_records_the_weights(tmp_path, monkeypatch):
    """`refdiff export --no-ema` records "weights": "raw" in the metadata, else "ema"."""
    import refdiff.export as export_pkg

    run = tmp_path / "run"
    _save_run(run, tiny_model())
    seen = []

    def fake_export(model, diffusion, path, **kw):  # the recorded value, without the slow export
        seen.append(kw["weights"])
        Path(path).write_bytes(b"x")

    monkeypatch.setattr(export_pkg, "export_onnx", fake_export)
    for flags, want in (([], "ema"), (["--no-ema"], "raw")):
        out = tmp_path / "m.onnx"
        assert main(["export", str(run), "--out", str(out), "--no-verify", *flags]) == 0
        assert seen[-1] == want
    with pytest.raises(ValueError, match="weights must be one of"):
        export_onnx(tiny_model(), tiny_diffusion(), tmp_path / "x.onnx", weights="EMA")


@pytest.mark.slow
@pytest.mark.skipif(not HAS_TRAINER, reason="refdiff.training not available yet")
def test_cli_export_and_check_a_trained_run(tmp_path, capsys):
    from refdiff.runs.train_config import TrainConfig
    from refdiff.training.checkpoint import load_model
    from refdiff.training.trainer import train

    run = tmp_path / "run"
    config = TrainConfig(
        unet=UNetConfig.from_dict(TINY_UNET),
        diffusion=tiny_diffusion(),
        loss="hybrid",
        steps=3,
        batch_size=8,
        eval_examples=4,
        eval_batch_size=4,
        num_samples=4,
        sample_steps=5,
    )
    train(config, run, progress=False)
    for extra, name, dtype in (
        ([], "model.onnx", "float32"),
        (["--fp16"], "m16.onnx", "float16"),
        (["--no-ema"], "raw.onnx", "float32"),  # then checked against the raw weights
    ):
        out = tmp_path / name
        args = _parser().parse_args(["export", str(run), "--out", str(out), *extra])
        assert args.func(args) == 0
        captured = capsys.readouterr()
        text = captured.out
        assert "wrote" in text and "PASS" in text and f"{dtype} weights" in text
        assert "M parameters" in text and "then the parity check" in text  # said before
        assert "export" in captured.err and "parity" in captured.err  # and the bars
        den = OnnxDenoiser(out)
        assert den.diffusion == tiny_diffusion() and den.metadata.dtype == dtype
        assert den.metadata.weights == ("raw" if "--no-ema" in extra else "ema")
        args = _parser().parse_args(["check", str(out), str(run)])
        assert args.func(args) == 0
        assert "PASS" in capsys.readouterr().out
    # The exported EMA model is the checkpoint's EMA model: the same samples.
    model, diffusion = load_model(run)
    den = OnnxDenoiser(tmp_path / "model.onnx")
    schedule = diffusion.sampling_schedule(5)
    with torch.no_grad():
        want = ddim_sample(
            schedule,
            lambda x, t: model(x, t),
            (3, *diffusion.image_shape),
            prediction=diffusion.prediction,
            variance=diffusion.variance,
            data_range=diffusion.data_range,
            xp=torch_xp,
            dtype=torch.float32,
        ).numpy()
    got = sample_array(den, 3, sampler="ddim", steps=5, progress=False)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-4)
    args = _parser().parse_args(["export", str(tmp_path / "nothing"), "--out", str(out)])
    with pytest.raises(FileNotFoundError, match="nothing"):
        args.func(args)
