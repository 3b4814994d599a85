"""The PyTorch-free runtime: OnnxDenoiser (metadata, graph checks, CPU and CUDA paths),
sample_images (chunks, shards, seeds), the output files, `refdiff sample`, and bad input.

The model is the tiny one of test_export.py, exported once per session; building it needs torch
(this process only: the runtime itself never imports torch, see test_no_torch.py).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import itertools
import json
import sys
import types
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("onnxruntime")

from tiny_model import shared_export, tiny_diffusion

from refdiff.commands import sample as sample_cli
from refdiff.onnx_contract import METADATA_KEY
from refdiff.runtime import (
    DeviceUnavailableError,
    MetadataError,
    OnnxDenoiser,
    check_output_path,
    parse_device,
    parse_shard,
    sample_array,
    sample_images,
    shard_range,
    to_uint8,
)

# ------------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def tiny_onnx(tmp_path_factory) -> Path:
    return shared_export(tmp_path_factory)


@pytest.fixture(scope="module")
def denoiser(tiny_onnx) -> OnnxDenoiser:
    return OnnxDenoiser(tiny_onnx)


def _edit_metadata(src: Path, dst: Path, edit) -> Path:
    """A copy of ``src`` whose refdiff metadata JSON is ``edit(dict)`` (a str: used verbatim;
    None: removed)."""
    onnx = pytest.importorskip("onnx")
    proto = onnx.load(str(src))
    (i,) = [k for k, p in enumerate(proto.metadata_props) if p.key == METADATA_KEY]
    new = edit(json.loads(proto.metadata_props[i].value))
    del proto.metadata_props[i]
    if new is not None:
        e = proto.metadata_props.add()
        e.key, e.value = METADATA_KEY, new if isinstance(new, str) else json.dumps(new)
    onnx.save(proto, str(dst))
    return dst


# ---- the denoiser ---------------------------------------------------------------------------


def test_denoiser_reads_the_metadata(denoiser):
    assert denoiser.diffusion == tiny_diffusion()
    assert denoiser.metadata.dtype == "float32"
    assert denoiser.metadata.model["base_channels"] == 8
    assert denoiser.diffusion.num_timesteps == 50
    assert np.array_equal(denoiser.diffusion.schedule.betas, tiny_diffusion().schedule.betas)
    assert denoiser.providers[0] == "CPUExecutionProvider"
    assert denoiser.image_shape == (1, 8, 8) and denoiser.out_channels == 2
    assert denoiser.xp.__name__ == "array_api_compat.numpy"
    assert "T=50" in repr(denoiser)


def test_denoiser_call(denoiser):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((3, 1, 8, 8)).astype(np.float32)
    t = np.array([0, 10, 49])
    out = denoiser(x, t)
    assert isinstance(out, np.ndarray) and out.dtype == np.float32 and out.shape == (3, 2, 8, 8)
    assert np.all(np.isfinite(out)) and out.std() > 0.1
    # One sample alone gives the same as in the batch; float64 in, float64 out.
    np.testing.assert_array_equal(denoiser(x[1:2], t[1:2]), out[1:2])
    out64 = denoiser(x.astype(np.float64), t)
    assert out64.dtype == np.float64
    np.testing.assert_array_equal(out64, out.astype(np.float64))


def test_io_binding_on_raw_pointers(denoiser):
    # The CUDA path's IO binding (bind_input/bind_output on buffer pointers, run_with_iobinding),
    # exercised here on host pointers so that it is tested without a GPU.
    rng = np.random.default_rng(1)
    x = rng.standard_normal((3, 1, 8, 8)).astype(np.float32)
    t = np.array([1, 20, 40], dtype=np.int64)
    out = np.full((3, 2, 8, 8), np.nan, dtype=np.float32)
    denoiser._run_bound("cpu", x.ctypes.data, x.shape, t.ctypes.data, out.ctypes.data)
    np.testing.assert_array_equal(out, denoiser(x, t))
    with denoiser.device_scope():  # a no-op on the CPU
        pass


def test_denoiser_call_checks_its_input(denoiser):
    x = np.zeros((2, 1, 8, 8), np.float32)
    with pytest.raises(ValueError, match=r"x must have shape \[B, 1, 8, 8\]"):
        denoiser(np.zeros((2, 3, 8, 8), np.float32), np.zeros(2, np.int64))
    with pytest.raises(ValueError, match=r"t must have shape \[2\]"):
        denoiser(x, np.zeros(3, np.int64))
    with pytest.raises(TypeError, match="NumPy arrays"):
        denoiser(x.tolist(), np.zeros(2, np.int64))


# ---- bad files ------------------------------------------------------------------------------


def test_missing_empty_truncated_and_non_onnx_files(tiny_onnx, tmp_path):
    with pytest.raises(FileNotFoundError, match=r"'.*nothing\.onnx' does not exist"):
        OnnxDenoiser(tmp_path / "nothing.onnx")
    with pytest.raises(ValueError, match="is not a file"):
        OnnxDenoiser(tmp_path)
    empty = tmp_path / "empty.onnx"
    empty.write_bytes(b"")
    with pytest.raises(ValueError, match=r"empty\.onnx' is empty"):
        OnnxDenoiser(empty)
    data = tiny_onnx.read_bytes()
    truncated = tmp_path / "truncated.onnx"
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match=r"truncated\.onnx' is not a readable ONNX model"):
        OnnxDenoiser(truncated)
    text = tmp_path / "notes.onnx"
    text.write_text("this is not a model\n" * 20)
    with pytest.raises(ValueError, match=r"notes\.onnx' is not a readable ONNX model"):
        OnnxDenoiser(text)
    png = tmp_path / "image.onnx"
    png.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4)
    with pytest.raises(ValueError, match="not a readable ONNX model"):
        OnnxDenoiser(png)


# ---- bad metadata ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda m: None, "lacks refdiff metadata.*refdiff export"),
        (lambda m: "{not json", "not valid JSON"),
        (lambda m: "[1, 2]", "must be a JSON object"),
        (lambda m: {**m, "format": 2}, "format 2 is not supported"),
        (
            lambda m: {k: v for k, v in m.items() if k != "diffusion"},
            r"lacks the keys \['diffusion'\]",
        ),
        (lambda m: {**m, "extra": 1}, r"unknown refdiff metadata keys \['extra'\]"),
        (lambda m: {**m, "dtype": "int8"}, "dtype must be one of"),
        (
            lambda m: {**m, "diffusion": {**m["diffusion"], "variance": "fixed_small"}},
            r"graph outputs 2C = 2 channels .* 'fixed_small' is fixed",
        ),
        (
            lambda m: {**m, "diffusion": {**m["diffusion"], "image_shape": [1, 16, 16]}},
            r"image_shape \[1, 16, 16\] contradicts the graph input x",
        ),
        (
            lambda m: {**m, "diffusion": {**m["diffusion"], "schedule": {"name": "nope", "T": 5}}},
            "invalid diffusion settings.*unknown schedule 'nope'",
        ),
        (lambda m: {**m, "model": {**m["model"], "learn_sigma": False}}, "learn_sigma"),
        (lambda m: {**m, "model": {**m["model"], "in_channels": 3}}, r"model\.in_channels = 3"),
        (lambda m: {**m, "output_name": "eps"}, "metadata names inputs"),
    ],
    ids=[
        "missing",
        "not-json",
        "not-object",
        "format",
        "missing-key",
        "unknown-key",
        "dtype",
        "2C-fixed-variance",
        "image-shape",
        "bad-schedule",
        "learn-sigma",
        "in-channels",
        "names",
    ],
)
def test_bad_metadata_is_refused(tiny_onnx, tmp_path, edit, message):
    path = _edit_metadata(tiny_onnx, tmp_path / "edited.onnx", edit)
    with pytest.raises(MetadataError, match=message) as info:
        OnnxDenoiser(path)
    assert "edited.onnx" in str(info.value)
    assert isinstance(info.value, ValueError)


def test_learned_variance_metadata_on_a_C_output_graph_is_refused(tmp_path):
    # The other direction: metadata says learned (2C) but the graph outputs C. A hand-made graph
    # (output = x, so C channels) keeps this fast.
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper

    from refdiff.runtime import ModelMetadata

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 1, 8, 8])
    t = helper.make_tensor_value_info("t", TensorProto.INT64, ["batch"])
    y = helper.make_tensor_value_info("model_output", TensorProto.FLOAT, ["batch", 1, 8, 8])
    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["model_output"])], "g", [x, t], [y]
    )
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    meta = ModelMetadata(diffusion=tiny_diffusion())  # learned_range: 2C expected
    helper.set_model_props(proto, {METADATA_KEY: meta.to_json()})
    onnx.save(proto, str(tmp_path / "c.onnx"))
    with pytest.raises(MetadataError, match=r"'learned_range' is learned \(expects 2C = 2"):
        OnnxDenoiser(tmp_path / "c.onnx")


# ---- devices --------------------------------------------------------------------------------


def test_parse_device():
    assert parse_device("cpu") == ("cpu", 0)
    assert parse_device("cuda") == ("cuda", 0)
    assert parse_device("CUDA:1") == ("cuda", 1)
    for bad in ("gpu", "cuda:x", "cpu:0", ""):
        with pytest.raises(ValueError, match="device must be"):
            parse_device(bad)


def test_cuda_without_the_provider_is_an_error(tiny_onnx, monkeypatch):
    import onnxruntime as ort

    monkeypatch.setattr(ort, "get_available_providers", lambda: ["CPUExecutionProvider"])
    with pytest.raises(DeviceUnavailableError, match=r"CUDAExecutionProvider.*onnxruntime-gpu"):
        OnnxDenoiser(tiny_onnx, device="cuda")


@contextlib.contextmanager
def _fake_cuda_provider(monkeypatch):
    import onnxruntime as ort

    monkeypatch.setattr(
        ort, "get_available_providers", lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"]
    )
    monkeypatch.setattr(ort, "preload_dlls", lambda *a, **k: None, raising=False)
    yield ort


def test_cuda_without_cupy_is_an_error(tiny_onnx, monkeypatch):
    with _fake_cuda_provider(monkeypatch):
        monkeypatch.setitem(sys.modules, "cupy", None)  # import cupy -> ImportError
        with pytest.raises(DeviceUnavailableError, match="needs CuPy"):
            OnnxDenoiser(tiny_onnx, device="cuda")


def test_cuda_never_falls_back_to_the_cpu_silently(tiny_onnx, monkeypatch):
    # onnxruntime drops to the CPU provider when CUDA fails to start; that must be an error.
    with _fake_cuda_provider(monkeypatch) as ort:
        fake = types.ModuleType("cupy")
        fake.cuda = types.SimpleNamespace(runtime=types.SimpleNamespace(getDeviceCount=lambda: 1))
        monkeypatch.setitem(sys.modules, "cupy", fake)
        real = ort.InferenceSession

        def cpu_session(path, sess_options=None, providers=None):
            return real(path, sess_options=sess_options, providers=["CPUExecutionProvider"])

        monkeypatch.setattr(ort, "InferenceSession", cpu_session)
        with pytest.raises(DeviceUnavailableError, match="fell back to"):
            OnnxDenoiser(tiny_onnx, device="cuda")
        with pytest.raises(DeviceUnavailableError, match=r"'cuda:3' does not exist.*1 CUDA"):
            OnnxDenoiser(tiny_onnx, device="cuda:3")


# ---- sampling -------------------------------------------------------------------------------


def test_sample_images(denoiser):
    images = sample_images(denoiser, 5, sampler="ddim", steps=8, seed=1, progress=False)
    assert images.dtype == np.uint8 and images.shape == (5, 1, 8, 8)
    assert images.std() > 10  # not a constant image
    again = sample_images(
        denoiser, 5, sampler="ddim", steps=8, seed=1, batch_size=2, progress=False
    )
    np.testing.assert_array_equal(images, again)
    other = sample_images(denoiser, 5, sampler="ddim", steps=8, seed=2, progress=False)
    assert not np.array_equal(images, other)


@pytest.mark.parametrize(("sampler", "steps", "eta"), [("ddpm", 12, 0.0), ("ddim", 6, 0.5)])
def test_shards_concatenate_to_the_unsharded_run(denoiser, sampler, steps, eta):
    n, seed = 7, 11
    kw = {"sampler": sampler, "steps": steps, "seed": seed, "progress": False}
    if sampler == "ddim":
        kw["eta"] = eta
    full = sample_array(denoiser, n, batch_size=4, **kw)
    for count, batch in ((2, 3), (3, 1), (7, 2)):
        parts = [
            sample_array(denoiser, n, shard=(k, count), batch_size=batch, **kw)
            for k in range(count)
        ]
        np.testing.assert_array_equal(np.concatenate(parts), full)  # bit for bit
    images = sample_images(denoiser, n, batch_size=4, **kw)
    parts = [sample_images(denoiser, n, shard=f"{k}/3", batch_size=2, **kw) for k in range(3)]
    np.testing.assert_array_equal(np.concatenate(parts), images)


def test_progress_and_callback(denoiser, capsys):
    seen = []
    sample_images(
        denoiser,
        3,
        sampler="ddim",
        steps=4,
        batch_size=2,
        callback=lambda i, t, x, x0: seen.append((i, t, x.shape[0])),
    )
    assert seen == [(i, t, b) for b in (2, 1) for i, t in enumerate(range(3, -1, -1))]
    assert "8/8" in capsys.readouterr().err  # tqdm: 2 chunks x 4 steps


def test_shard_helpers():
    assert parse_shard(None) is None
    assert parse_shard("0/4") == (0, 4) and parse_shard(" 3/4 ") == (3, 4)
    assert parse_shard((1, 2)) == (1, 2)
    for bad in ("4/4", "-1/4", "1/0", "1", "a/b", "1/2/3", "", "1.5/4"):
        with pytest.raises(ValueError, match="shard"):
            parse_shard(bad)
    for n in (5, 8, 13):
        for count in range(1, n + 1):
            ranges = [shard_range(n, (k, count)) for k in range(count)]
            assert ranges[0][0] == 0 and ranges[-1][1] == n
            assert all(a[1] == b[0] for a, b in itertools.pairwise(ranges))
            assert all(hi > lo for lo, hi in ranges)
    with pytest.raises(ValueError, match="cannot split n = 2 samples over 3 shards"):
        shard_range(2, (0, 3))


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"n": 0}, ValueError, "number of samples n must be >= 1"),
        ({"n": -3}, ValueError, "number of samples n must be >= 1"),
        ({"n": 2.5}, TypeError, "must be an int"),
        ({"steps": 51}, ValueError, "51 steps: the model was trained with T = 50"),
        ({"steps": 0}, ValueError, "steps must be >= 1, got 0"),
        ({"sampler": "langevin"}, ValueError, "unknown sampler 'langevin'"),
        ({"spacing": "uniform"}, ValueError, "unknown spacing 'uniform'"),
        ({"shard": "2/2"}, ValueError, r"shard index K must be in \[0, 1\]"),
        ({"shard": "1of2"}, ValueError, "shard must look like K/N"),
        ({"sampler": "ddpm", "eta": 0.5}, TypeError, "'ddpm' sampler takes no option 'eta'"),
        ({"sampler": "ddim", "eta": -1.0}, ValueError, "option 'eta' must be >= 0.0, got -1.0"),
        ({"batch_size": 0}, ValueError, "batch_size must be >= 1"),
    ],
)
def test_sampling_refuses_bad_arguments(denoiser, kwargs, error, message):
    kw = {"n": 4, "progress": False, **kwargs}
    with pytest.raises(error, match=message):
        sample_images(denoiser, **kw)


def test_to_uint8():
    x = np.array([-1.5, -1.0, -1 + 2 / 255, 0.0, 1.0, 2.0])  # level k sits at -1 + 2k/255
    assert to_uint8(x).tolist() == [0, 0, 1, 128, 255, 255]
    assert to_uint8(np.array([0.0, 0.5, 1.0]), (0.0, 1.0)).tolist() == [0, 128, 255]
    bad = np.zeros((4, 1, 2, 2))
    bad[1, 0, 0, 0], bad[3, 0, 1, 1], bad[3, 0, 0, 0] = np.nan, np.inf, -np.inf
    with pytest.raises(
        ValueError, match=r"2 of 4 samples hold NaN or infinite values \(3 values\)"
    ):
        to_uint8(bad)


# ---- output files ------------------------------------------------------------------------------


def test_check_output_path(tmp_path):
    png, npz = check_output_path(tmp_path / "new" / "dir" / "s.png")
    assert (png.name, npz.name) == ("s.png", "s.npz")
    assert list(tmp_path.iterdir()) == []  # checked, nothing created (no folder, no probe)
    with pytest.raises(ValueError, match=r"must be a \.png file"):
        check_output_path(tmp_path / "s.jpg")
    (tmp_path / "d.png").mkdir()
    with pytest.raises(ValueError, match="is a folder"):
        check_output_path(tmp_path / "d.png")
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(OSError, match=r"cannot write the output grid .*/file' is a file, not a"):
        check_output_path(blocker / "s.png")  # a file where a folder should be
    if Path("/sys/kernel").is_dir():  # read-only even for root
        with pytest.raises(OSError, match=r"cannot write the output grid .*/sys/kernel"):
            check_output_path("/sys/kernel/new/s.png")


# ---- `refdiff sample` -----------------------------------------------------------------------


def _sample(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="refdiff")
    sample_cli.add_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["sample", *argv])
    return args.func(args)


def test_cli_sample_writes_png_and_npz(tiny_onnx, denoiser, tmp_path, capsys):
    out = tmp_path / "samples.png"
    argv = [str(tiny_onnx), "--n", "6", "--sampler", "ddim", "--steps", "5", "--seed", "3"]
    assert _sample([*argv, "--batch-size", "4", "--out", str(out), "--no-progress"]) == 0
    assert out.stat().st_size > 0
    want = sample_images(denoiser, 6, sampler="ddim", steps=5, seed=3, progress=False)
    with np.load(out.with_suffix(".npz")) as data:
        np.testing.assert_array_equal(data["images"], want)
        assert data["indices"].tolist() == list(range(6)) and int(data["seed"]) == 3
        assert str(data["sampler"]) == "ddim" and int(data["steps"]) == 5
    assert "wrote" in capsys.readouterr().out
    # Two shards, merged, are the same run.
    for k in range(2):
        assert (
            _sample(
                [*argv, "--shard", f"{k}/2", "--out", str(tmp_path / f"s{k}.png"), "--no-progress"]
            )
            == 0
        )
    parts = []
    for k in range(2):
        with np.load(tmp_path / f"s{k}-shard{k:02d}of02.npz") as part:  # named apart
            parts.append({name: part[name] for name in ("images", "indices")})
    np.testing.assert_array_equal(np.concatenate([p["images"] for p in parts]), want)
    assert np.concatenate([p["indices"] for p in parts]).tolist() == list(range(6))


def test_cli_sample_offers_every_sampler_and_spacing(tiny_onnx, denoiser, tmp_path, capsys):
    from refdiff import SAMPLERS

    with pytest.raises(SystemExit):
        _sample(["--help"])
    help_text = capsys.readouterr().out
    assert all(name in help_text for name in SAMPLERS)
    assert "logsnr" in help_text and "karras" in help_text
    out = tmp_path / "s.png"
    argv = [str(tiny_onnx), "--n", "3", "--sampler", "dpmpp_2m", "--steps", "6"]
    assert _sample([*argv, "--spacing", "karras", "--out", str(out), "--no-progress"]) == 0
    want = sample_images(denoiser, 3, sampler="dpmpp_2m", steps=6, spacing="karras", progress=False)
    with np.load(out.with_suffix(".npz")) as data:
        np.testing.assert_array_equal(data["images"], want)
        assert str(data["spacing"]) == "karras"


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--n", "0"], "argument --n/--num-samples: must be a positive integer"),
        (["--n", "many"], "argument --n/--num-samples: expected a positive integer"),
        (["--sampler", "langevin"], "argument --sampler: invalid choice: 'langevin'"),
        (["--spacing", "uniform"], "argument --spacing: invalid choice: 'uniform'"),
        (["--shard", "2/2"], "argument --shard: shard index K must be in"),
        (["--shard", "half"], "argument --shard: shard must look like K/N"),
        (["--steps", "0"], "argument --steps: must be a positive integer"),
        (["--batch-size", "-1"], "argument --batch-size: must be a positive integer"),
        (["--seed", "-1"], "argument --seed: must be >= 0"),
    ],
)
def test_cli_sample_rejects_bad_arguments(tiny_onnx, argv, message, capsys):
    with pytest.raises(SystemExit) as info:
        _sample([str(tiny_onnx), *argv])
    assert info.value.code == 2
    assert message in capsys.readouterr().err


def test_cli_sample_errors_before_sampling(tiny_onnx, tmp_path, monkeypatch):
    import refdiff.runtime.sampling as sampling

    def no_sampling(*a, **k):
        raise AssertionError("sampled before checking the arguments")

    monkeypatch.setattr(sampling, "sample_images", no_sampling)
    model = str(tiny_onnx)
    out = str(tmp_path / "s.png")
    with pytest.raises(ValueError, match=r"cannot sample with 51 steps: .* T = 50 steps"):
        _sample([model, "--steps", "51", "--out", out])
    with pytest.raises(ValueError, match="--eta applies to --sampler ddim or dpmpp_2m_sde, not"):
        _sample([model, "--sampler", "dpmpp_2m", "--eta", "0.3", "--out", out])
    with pytest.raises(ValueError, match="cannot split n = 2 samples over 3 shards"):
        _sample([model, "--n", "2", "--shard", "0/3", "--out", out])
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(OSError, match="cannot write the output grid"):
        _sample([model, "--out", str(blocker / "s.png")])
    with pytest.raises(ValueError, match=r"must be a \.png file"):
        _sample([model, "--out", str(tmp_path / "s.gif")])
    with pytest.raises(FileNotFoundError, match=r"missing.onnx"):
        _sample([str(tmp_path / "missing.onnx"), "--out", out])
    with pytest.raises(DeviceUnavailableError):
        _sample([model, "--device", "cuda", "--out", out])  # no CUDA provider here
    with pytest.raises(ValueError, match="device must be"):
        _sample([model, "--device", "tpu", "--out", out])


def test_cli_sample_help(capsys):
    with pytest.raises(SystemExit) as info:
        _sample(["--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    assert "examples:" in out and "--shard 2/8" in out and "--device cuda" in out


_CLI_MODULES = ("refdiff.commands.demo", "refdiff.commands.train", "refdiff.commands.eval")


def _importable(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except ModuleNotFoundError:
        return False


@pytest.mark.skipif(
    not all(_importable(m) for m in _CLI_MODULES),
    reason="refdiff.cli needs every subcommand module, not all written yet",
)
def test_refdiff_cli_main_sample(tiny_onnx, tmp_path, capsys):
    from refdiff.cli import main

    out = tmp_path / "s.png"
    code = main(
        ["sample", str(tiny_onnx), "--n", "2", "--steps", "3", "--out", str(out), "--no-progress"]
    )
    assert code == 0 and out.exists()
    assert main(["sample", str(tiny_onnx), "--steps", "99", "--out", str(out)]) == 1
    assert "refdiff sample: error: cannot sample with 99 steps" in capsys.readouterr().err


# ---- CUDA (CuPy + onnxruntime-gpu; skipped without a GPU) ------------------------------------


@pytest.fixture(scope="module")
def cuda_denoiser(tiny_onnx):
    if "CUDAExecutionProvider" not in __import__("onnxruntime").get_available_providers():
        pytest.skip("onnxruntime-gpu (CUDAExecutionProvider) not installed")
    return OnnxDenoiser(tiny_onnx, device="cuda")


@pytest.mark.gpu
def test_cuda_denoiser_matches_cpu(cuda_denoiser, denoiser):
    import cupy as cp

    assert cuda_denoiser.providers[0] == "CUDAExecutionProvider"
    assert cuda_denoiser.xp.__name__ == "array_api_compat.cupy"
    rng = np.random.default_rng(0)
    x = rng.standard_normal((3, 1, 8, 8)).astype(np.float32)
    t = np.array([0, 25, 49])
    out = cuda_denoiser(cp.asarray(x), cp.asarray(t))
    assert isinstance(out, cp.ndarray) and out.shape == (3, 2, 8, 8) and out.dtype == cp.float32
    np.testing.assert_allclose(out.get(), denoiser(x, t), rtol=1e-4, atol=1e-4)
    # A non-contiguous view and int32 timesteps are handled (copied on the device).
    xs = cp.asarray(np.concatenate([x, x], axis=0))[::2]
    np.testing.assert_allclose(
        cuda_denoiser(xs, cp.asarray(t, dtype=cp.int32)).get(), out.get(), rtol=0, atol=1e-6
    )
    with pytest.raises(TypeError, match="CuPy arrays"):
        cuda_denoiser(x, t)


@pytest.mark.gpu
@pytest.mark.parametrize(("sampler", "steps", "eta"), [("ddpm", None, 0.0), ("ddim", 10, 0.0)])
def test_cuda_sampling_matches_cpu(cuda_denoiser, denoiser, sampler, steps, eta):
    kw = {"sampler": sampler, "steps": steps, "eta": eta, "seed": 5, "progress": False}
    gpu = sample_array(cuda_denoiser, 6, batch_size=4, **kw)
    cpu = sample_array(denoiser, 6, batch_size=4, **kw)
    assert gpu.dtype == np.float32 and gpu.shape == cpu.shape
    np.testing.assert_allclose(gpu, cpu, rtol=0, atol=1e-3)
    # Shards on the GPU reproduce the GPU run (cuDNN may pick other algorithms per batch size).
    parts = [sample_array(cuda_denoiser, 6, shard=(k, 2), batch_size=3, **kw) for k in range(2)]
    np.testing.assert_allclose(np.concatenate(parts), gpu, rtol=0, atol=1e-4)


@pytest.mark.gpu
def test_cuda_cli_sample(tiny_onnx, cuda_denoiser, tmp_path):
    out = tmp_path / "gpu.png"
    argv = [str(tiny_onnx), "--n", "4", "--sampler", "ddim", "--steps", "5", "--device", "cuda"]
    assert _sample([*argv, "--out", str(out), "--no-progress"]) == 0
    cpu = sample_images(OnnxDenoiser(tiny_onnx), 4, sampler="ddim", steps=5, progress=False)
    with np.load(out.with_suffix(".npz")) as data:
        got = data["images"]
    assert np.abs(got.astype(int) - cpu.astype(int)).max() <= 1


def test_save_samples_writes_every_sample_and_a_grid_of_the_first(tmp_path):
    from PIL import Image

    from refdiff.runtime import save_samples

    images = np.arange(10 * 64, dtype=np.uint8).reshape(10, 1, 8, 8)
    png, npz = save_samples(
        images, tmp_path / "new" / "s.png", indices=np.arange(5, 15), seed=3, grid_limit=4
    )
    with np.load(npz) as f:
        np.testing.assert_array_equal(f["images"], images)
        assert f["indices"].tolist() == list(range(5, 15)) and int(f["seed"]) == 3
    with Image.open(png) as im:  # 2 x 2 images of 8 x 8 pixels at scale 4, 2-pixel padding
        assert im.size == (2 * 32 + 3 * 2, 2 * 32 + 3 * 2)
    with pytest.raises(ValueError, match="one index per image"):
        save_samples(images, tmp_path / "t.png", indices=np.arange(3), seed=0)
    assert not (tmp_path / "t.png").exists() and not (tmp_path / "t.npz").exists()
