"""Sampling from an exported ONNX model without PyTorch: NumPy + onnxruntime (CPU) or CuPy +
onnxruntime-gpu (CUDA, IO binding on device pointers).

>>> from refdiff.runtime import OnnxDenoiser, sample_images          # doctest: +SKIP
>>> den = OnnxDenoiser("model.onnx")                                  # doctest: +SKIP
>>> images = sample_images(den, 64, sampler="ddim", steps=50)         # doctest: +SKIP

This package never imports torch (a test runs it with ``import torch`` blocked); onnxruntime and
CuPy are imported only when a model is opened.
"""

from __future__ import annotations

from .sampling import (
    Denoiser,
    check_output_path,
    parse_shard,
    sample_array,
    sample_images,
    sampling_schedule,
    save_samples,
    shard_range,
    to_uint8,
)
from .session import (
    FORMAT_VERSION,
    INPUT_NAMES,
    METADATA_KEY,
    OUTPUT_NAME,
    DeviceUnavailableError,
    MetadataError,
    ModelMetadata,
    OnnxDenoiser,
    parse_device,
)

__all__ = [
    "FORMAT_VERSION",
    "INPUT_NAMES",
    "METADATA_KEY",
    "OUTPUT_NAME",
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
    "sampling_schedule",
    "save_samples",
    "shard_range",
    "to_uint8",
]
