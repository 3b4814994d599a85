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
