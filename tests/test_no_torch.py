"""The core, the whole sampling path and refdiff.graph (ONNX graphs built in code) work in a
process where ``import torch`` fails.

A meta-path finder installed before anything else raises ``ModuleNotFoundError`` for ``torch``
and ``torch.*`` and records every attempt; the child process then imports refdiff, runs the core,
opens an exported model, samples through the runtime API and through ``refdiff sample``, and
reports what it saw. The model is exported in this (parent) process.
"""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
from blocking import run_blocked_json
from tiny_model import shared_export

pytest.importorskip("onnxruntime")


def test_core_works_without_torch(tmp_path):
    result = run_blocked_json(
        """
        import json, sys
        try:
            import torch
            blocked = False
        except ImportError:
            blocked = True
        BLOCKED_ATTEMPTS.clear()
        import numpy as np
        import refdiff
        from refdiff import ddim_sample, ddpm_sample, get_schedule, q_sample, standard_normal

        sched = get_schedule("cosine", 20)
        x0 = np.zeros((2, 1, 4, 4), np.float32)
        noise = standard_normal(0, np.arange(2), 0, (1, 4, 4), xp=np, dtype=np.float32)
        xt = q_sample(sched, x0, 5, noise)
        eps = lambda x, t: 0.1 * x
        a = ddpm_sample(sched, eps, (2, 1, 4, 4), seed=1)
        b = ddim_sample(sched.respace([0, 9, 19]), eps, (2, 1, 4, 4), seed=1, eta=0.5)
        print(json.dumps({
            "blocked": blocked,
            "finite": bool(np.isfinite(a).all() and np.isfinite(b).all() and np.isfinite(xt).all()),
            "torch_loaded": "torch" in sys.modules and sys.modules["torch"] is not None,
            "attempts": BLOCKED_ATTEMPTS,
        }))
        """,
        tmp_path,
    )
    assert result["blocked"], "the blocker did not block torch"
    assert result["finite"]
    assert not result["torch_loaded"]
    assert result["attempts"] == []


def _importable(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except ModuleNotFoundError:
        return False


def test_sampling_path_works_without_torch(tmp_path_factory, tmp_path):
    model = shared_export(tmp_path_factory)
    # The parent's samples (same runtime, torch loaded here) to compare the child's against.
    from refdiff.runtime import OnnxDenoiser, sample_images

    want = sample_images(OnnxDenoiser(model), 5, sampler="ddim", steps=6, seed=2, progress=False)
    solver_kw = {"sampler": "heun", "steps": 3, "spacing": "karras", "seed": 2, "progress": False}
    want_heun = sample_images(OnnxDenoiser(model), 5, **solver_kw)
    whole_cli = all(
        _importable(m)
        for m in ("refdiff.commands.demo", "refdiff.commands.train", "refdiff.commands.eval")
    )
    result = run_blocked_json(
        f"""
        import argparse, json, sys
        import numpy as np
        from refdiff.runtime import OnnxDenoiser, sample_images
        from refdiff.commands import sample as sample_cli

        den = OnnxDenoiser({str(model)!r})
        api = sample_images(den, 5, sampler="ddim", steps=6, seed=2, progress=False)
        heun = sample_images(den, 5, **{solver_kw!r})
        import refdiff.evaluation.steps  # the quality-vs-calls sweep, torch-free too

        parser = argparse.ArgumentParser(prog="refdiff")
        sample_cli.add_parser(parser.add_subparsers(dest="command"))
        args = parser.parse_args(["sample", {str(model)!r}, "--n", "5", "--sampler", "ddim",
                                  "--steps", "6", "--seed", "2", "--shard", "1/2",
                                  "--out", "cli.png", "--no-progress"])
        code = args.func(args)
        cli = np.load("cli-shard01of02.npz")

        main_code = None
        if {whole_cli!r}:
            from refdiff.cli import main
            main_code = main(["sample", {str(model)!r}, "--n", "5", "--sampler", "ddim",
                              "--steps", "6", "--seed", "2", "--out", "main.png", "--no-progress"])
        print(json.dumps({{
            "api": api.tolist(),
            "heun": heun.tolist(),
            "cli_code": code,
            "cli_images": cli["images"].tolist(),
            "cli_indices": cli["indices"].tolist(),
            "main_code": main_code,
            "torch_loaded": "torch" in sys.modules and sys.modules["torch"] is not None,
            "attempts": BLOCKED_ATTEMPTS,
        }}))
        """,
        tmp_path,
    )
    assert not result["torch_loaded"] and result["attempts"] == []
    np.testing.assert_array_equal(np.array(result["api"], dtype=np.uint8), want)
    np.testing.assert_array_equal(np.array(result["heun"], dtype=np.uint8), want_heun)
    assert result["cli_code"] == 0
    assert result["cli_indices"] == [2, 3, 4]  # shard 1 of 2 of 5 samples
    np.testing.assert_array_equal(np.array(result["cli_images"], dtype=np.uint8), want[2:])
    assert (tmp_path / "cli-shard01of02.png").stat().st_size > 0
    if whole_cli:
        assert result["main_code"] == 0 and (tmp_path / "main.png").exists()


def test_run_folder_settings_load_without_torch(tmp_path):
    """A run folder's settings (config.json, and a checkpoint's hash-checked state.json) load in a
    process where torch cannot be imported: the torch-free half of the run layout."""
    from refdiff.runs import resolve_config
    from refdiff.runs.folder import RunFolder, write_checkpoint_folder

    config = resolve_config(None, {"data": "digits", "steps": 7})
    run = RunFolder(tmp_path / "run")
    run.path.mkdir()
    run.config_file.write_text(config.to_json())
    blobs = {
        name: name.encode()
        for name in ("model.safetensors", "ema.safetensors", "optimizer.safetensors")
    }
    write_checkpoint_folder(run.path, 7, {"step": 7, "config": config.to_dict()}, blobs)
    result = run_blocked_json(
        f"""
        import json, sys
        from refdiff.runs import RunFolder, find_checkpoint, read_run_config
        from refdiff.models import open_model
        run = {str(run.path)!r}
        cfg = read_run_config(run)
        ckpt = read_run_config(find_checkpoint(run))
        try:
            open_model(run)
            opened = "no error"
        except ImportError as exc:
            opened = str(exc)
        print(json.dumps({{
            "diffusion": cfg.diffusion.to_dict(),
            "same": cfg == ckpt == RunFolder(run).read_config(),
            "unet": cfg.unet.to_dict(),
            "steps": cfg.steps,
            "opened": opened,
            "torch_loaded": "torch" in sys.modules,
        }}))
        """,
        tmp_path,
    )
    assert result["diffusion"] == config.diffusion.to_dict()
    assert result["unet"] == config.unet.to_dict() and result["steps"] == 7
    assert result["same"] and not result["torch_loaded"]
    # evaluating the checkpoint itself needs PyTorch, and the message says how to get it
    assert (
        'pip install "refdiff[torch]"' in result["opened"] or "refdiff[torch]" in result["opened"]
    )


def test_graph_building_works_without_torch(tmp_path_factory, tmp_path):
    """refdiff.graph builds a graph around an exported model, with in-graph noise, in a process
    where torch cannot be imported; the parent checks it against the file and refdiff.noise."""
    import onnxruntime as ort

    from refdiff.noise import standard_normal

    model = shared_export(tmp_path_factory)
    result = run_blocked_json(
        f"""
        import json, sys
        import numpy as np, onnx, onnxruntime as ort
        import refdiff.graph as rg

        g = rg.GraphBuilder("noise_then_denoise")
        seed = g.input("seed", np.int64, ())
        indices = g.input("indices", np.int64, ("batch",))
        t = g.input("t", np.int64, ("batch",))
        den = g.add_model(onnx.load({str(model)!r}), prefix="denoiser")
        x = rg.standard_normal(g, seed, indices, g.const(7), (1, 8, 8))
        g.output(x, "x", dtype=np.float32, shape=("batch", 1, 8, 8))
        g.output(g.call(den, x=x, t=t), "out", dtype=np.float32, shape=("batch", 2, 8, 8))
        sess = ort.InferenceSession(g.to_model().SerializeToString(),
                                    providers=["CPUExecutionProvider"])
        x, out = sess.run(None, {{"seed": np.array(5), "indices": np.array([0, 3, 2**33]),
                                  "t": np.array([49, 10, 0])}})
        print(json.dumps({{
            "x": x.tolist(),
            "out": out.tolist(),
            "torch_loaded": "torch" in sys.modules,
            "attempts": BLOCKED_ATTEMPTS,
        }}))
        """,
        tmp_path,
    )
    assert not result["torch_loaded"] and result["attempts"] == []
    want_x = standard_normal(5, np.array([0, 3, 2**33]), 7, (1, 8, 8), xp=np, dtype=np.float32)
    np.testing.assert_array_equal(np.array(result["x"], np.float32), want_x)
    sess = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    (want,) = sess.run(None, {"x": want_x, "t": np.array([49, 10, 0])})
    np.testing.assert_array_equal(np.array(result["out"], np.float32), want)
