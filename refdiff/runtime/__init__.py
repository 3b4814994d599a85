"""Sampling from an exported ONNX model without PyTorch: NumPy + onnxruntime (CPU) or CuPy +
onnxruntime-gpu (CUDA, IO binding on device pointers).

>>> from refdiff.runtime import OnnxDenoiser, sample_images          # doctest: +SKIP
>>> den = OnnxDenoiser("model.onnx")                                  # doctest: +SKIP
>>> images = sample_images(den, 64, sampler="ddim", steps=50)         # doctest: +SKIP

- :mod:`.session`: :class:`OnnxDenoiser`, a model file as the core's denoiser callable;
- :mod:`.devices`: ``cpu`` / ``cuda:N``, onnxruntime and CuPy imports;
- :mod:`.sampling`: many samples in bounded chunks, shards, uint8 images and their files.

The file format itself (names, metadata) is :mod:`refdiff.onnx_contract`. This package never
imports torch (a test runs it with ``import torch`` blocked); onnxruntime and CuPy are imported
only when a model is opened.
"""

from __future__ import annotations

from ..onnx_contract import MetadataError, ModelMetadata
from .devices import DeviceUnavailableError, parse_device
from .sampling import (
    Denoiser,
    check_output_path,
    parse_shard,
    sample_array,
    sample_images,
    save_samples,
    shard_range,
    to_uint8,
)
from .session import OnnxDenoiser

__all__ = [
    "Denoiser",
    "DeviceUnavailableError",
    "MetadataError",
    "ModelMetadata",
    "OnnxDenoiser",
    "check_output_path",
    "parse_device",
    "parse_shard",
    "sample_array",
    "sample_images",
    "save_samples",
    "shard_range",
    "to_uint8",
]
