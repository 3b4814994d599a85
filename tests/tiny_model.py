"""The tiny U-Net + diffusion settings shared by the export, runtime and no-torch tests, exported
to ONNX once per test session (whichever test file asks first)."""

from __future__ import annotations

from pathlib import Path

import pytest

TINY_UNET = {
    "in_channels": 1,
    "image_size": 8,
    "base_channels": 8,
    "channel_mult": [1, 2],
    "num_res_blocks": 1,
    "attention_resolutions": [],
    "dropout": 0.0,
    "num_groups": 4,
    "num_heads": 1,
    "learn_sigma": True,
}
TINY_DIFFUSION = {
    "schedule": {"name": "linear", "params": {}, "T": 50},
    "prediction": "epsilon",
    "variance": "learned_range",
    "image_shape": [1, 8, 8],
}


def tiny_model(seed: int = 0):
    """The tiny U-Net with random non-zero weights (a fresh U-Net outputs exactly zero)."""
    from refdiff.nn import UNetConfig, randomized_unet

    return randomized_unet(UNetConfig.from_dict(TINY_UNET), seed)


def tiny_diffusion():
    from refdiff import Diffusion

    return Diffusion.from_dict(TINY_DIFFUSION)


def shared_export(tmp_path_factory: pytest.TempPathFactory, fp16: bool = False) -> Path:
    """The tiny model exported once per session; skips where torch or onnx is missing."""
    pytest.importorskip("torch")
    pytest.importorskip("onnx")
    from refdiff.export import export_onnx

    folder = tmp_path_factory.getbasetemp() / "refdiff-shared-onnx"
    folder.mkdir(exist_ok=True)
    path = folder / ("tiny-fp16.onnx" if fp16 else "tiny.onnx")
    if not path.exists():
        export_onnx(tiny_model(), tiny_diffusion(), path, fp16=fp16)
    return path


def save_tiny_run(run_dir: Path, model, ema=None, step: int = 1) -> Path:
    """A run folder of the tiny settings: a checkpoint at ``step`` with ``model`` as its raw
    weights and ``ema`` (default ``model``) as its EMA, and the run's config.json."""
    import numpy as np
    import torch

    from refdiff.nn import UNetConfig
    from refdiff.runs.train_config import TrainConfig
    from refdiff.training.checkpoint import save_checkpoint

    config = TrainConfig(
        unet=UNetConfig.from_dict(TINY_UNET), diffusion=tiny_diffusion(), loss="hybrid"
    )
    path = save_checkpoint(
        run_dir,
        step,
        model=model,
        ema=model if ema is None else ema,
        optimizer=torch.optim.Adam(model.parameters()),
        config=config,
        timestep_sampler={},
        numpy_rng=np.random.default_rng(0).bit_generator.state,
    )
    (Path(run_dir) / "config.json").write_text(config.to_json() + "\n", encoding="utf-8")
    return path
