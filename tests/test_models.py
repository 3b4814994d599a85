"""The model door: one function opens every model format for every command; an unknown path, a
missing package or a format a command cannot use is a one-line error that names the problem."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
from blocking import run_blocked_json
from tiny_model import shared_export

import refdiff as rd
from refdiff._deps import MissingDependency
from refdiff.models import READERS, open_model, reader_for


@pytest.fixture(scope="module")
def tiny_onnx(tmp_path_factory):
    pytest.importorskip("onnxruntime")
    return shared_export(tmp_path_factory)


def test_an_onnx_file_opens_without_torch(tiny_onnx, tmp_path):
    result = run_blocked_json(
        f"""
        import json, sys
        import numpy as np
        from refdiff.models import open_model
        m = open_model({str(tiny_onnx)!r})
        x = np.zeros((2, *m.diffusion.image_shape), np.float32)
        out = m.denoiser(x, np.array([0, 49]))
        print(json.dumps({{"format": m.format, "module": m.module is None, "shape": out.shape,
                           "describe": m.describe(), "torch": "torch" in sys.modules}}))
        """,
        tmp_path,
    )
    assert result["format"] == "onnx" and result["module"] and not result["torch"]
    assert (
        result["shape"] == [2, 2, 8, 8]
        and "onnx model, float32 weights, T = 50" in result["describe"]
    )


def test_an_onnx_files_fingerprint_is_its_sha256(tiny_onnx, tmp_path):
    m = open_model(tiny_onnx)
    assert m.fingerprint == hashlib.sha256(tiny_onnx.read_bytes()).hexdigest()
    assert m.fingerprint is m.fingerprint  # computed once
    copy = tmp_path / "copy.onnx"
    copy.write_bytes(tiny_onnx.read_bytes() + b"")
    assert open_model(copy).fingerprint == m.fingerprint  # the bytes, not the path


def test_each_format_is_recognised_and_unknown_paths_are_named(tiny_onnx, tmp_path):
    assert [r.name for r in READERS] == ["onnx", "diffusers", "refdiff"]
    assert reader_for(tiny_onnx).name == "onnx"
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text("{}")
    assert reader_for(run).name == "refdiff"  # a run folder, even before its first checkpoint
    with pytest.raises(FileNotFoundError, match="no such model"):
        open_model(tmp_path / "missing.onnx")
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(ValueError, match=r"not a model refdiff can open: expected an \.onnx file"):
        open_model(tmp_path / "notes.txt")
    with pytest.raises(ValueError, match=r"--no-ema .* applies to refdiff checkpoints"):
        open_model(tiny_onnx, ema=False)


def test_a_checkpoint_opens_through_torch_with_its_module(tmp_path):
    torch = pytest.importorskip("torch")
    from refdiff.runs.train_config import resolve_config
    from refdiff.training.trainer import Trainer

    config = resolve_config(
        None, {"data": "digits", "steps": 2, "eval_every": 0, "sample_every": 0}
    )
    trainer = Trainer(config, tmp_path / "run", progress=False)
    try:
        trainer.train()
    finally:
        trainer.close()
    prints = set()
    for ema, weights in ((None, "EMA"), (False, "raw")):
        m = open_model(tmp_path / "run", ema=ema)
        assert m.format == "refdiff" and m.info["weights"] == weights and m.info["step"] == 2
        # the fingerprint: sha256sum state.json <weights file> | sha256sum, in the checkpoint
        ckpt = Path(m.info["checkpoint"])
        file = "ema.safetensors" if ema is None else "model.safetensors"
        manifest = "".join(
            f"{hashlib.sha256((ckpt / f).read_bytes()).hexdigest()}  {f}\n"
            for f in ("state.json", file)
        )
        assert m.fingerprint == hashlib.sha256(manifest.encode()).hexdigest()
        prints.add(m.fingerprint)
        assert isinstance(m.module, torch.nn.Module)
        x = np.zeros((3, *m.diffusion.image_shape), np.float32)
        with torch.no_grad():
            want = m.module(torch.from_numpy(x), torch.zeros(3, dtype=torch.int64)).numpy()
        np.testing.assert_array_equal(m.denoiser(x, np.zeros(3, np.int64)), want)
    assert len(prints) == 2  # EMA and raw weights are two models
    # without torch: the extra is named, and the .onnx route is suggested
    result = run_blocked_json(
        f"""
        import json
        from refdiff.models import open_model
        try:
            open_model({str(tmp_path / "run")!r})
            msg = "opened"
        except ImportError as exc:
            msg = str(exc)
        print(json.dumps({{"msg": msg}}))
        """,
        tmp_path,
    )
    assert "refdiff[torch]" in result["msg"] and ".onnx" in result["msg"]


def test_missing_dependency_is_the_error_type():
    assert issubclass(MissingDependency, ImportError)
    assert rd.Diffusion  # the door returns the core's settings type
