"""Devices for the ONNX runtime: parsing ``cpu`` / ``cuda:N``, and importing onnxruntime and CuPy
with errors that name the package to install.

Never imports torch; onnxruntime and CuPy are imported only when a function here is called.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "DeviceUnavailableError",
    "default_session_options",
    "import_cupy",
    "import_onnxruntime",
    "parse_device",
    "weights_dtype",
]


class DeviceUnavailableError(ValueError):
    """The requested device cannot be used (no CUDA provider, no CuPy, no GPU)."""


def parse_device(device: str) -> tuple[str, int]:
    """``"cpu"`` -> ("cpu", 0); ``"cuda"`` -> ("cuda", 0); ``"cuda:1"`` -> ("cuda", 1).

    Parameters
    ----------
    device : str
        ``"cpu"``, ``"cuda"`` or ``"cuda:N"`` (case and surrounding spaces ignored).

    Returns
    -------
    (str, int)
        The kind (``"cpu"`` or ``"cuda"``) and the device index; anything else is a
        ``ValueError`` naming it.
    """
    if not isinstance(device, str):
        raise TypeError(f"device must be 'cpu', 'cuda' or 'cuda:N', got {device!r}")
    kind, _, index = device.strip().lower().partition(":")
    if kind == "cpu" and not index:
        return "cpu", 0
    if kind == "cuda":
        if not index:
            return "cuda", 0
        if index.isdigit():
            return "cuda", int(index)
    raise ValueError(f"device must be 'cpu', 'cuda' or 'cuda:N', got {device!r}")


def import_onnxruntime() -> Any:
    try:
        import onnxruntime
    except ImportError as exc:
        raise ImportError(
            "sampling from ONNX needs onnxruntime: pip install 'refdiff[onnx]' (CPU) or "
            "'refdiff[cuda12]' / 'refdiff[cuda13]' (NVIDIA GPUs)"
        ) from exc
    return onnxruntime


def import_cupy(device_id: int) -> Any:
    try:
        import cupy
    except ImportError:
        raise DeviceUnavailableError(
            "device 'cuda' needs CuPy, which is not installed: pip install 'refdiff[cuda12]' "
            "or 'refdiff[cuda13]' (matching your CUDA driver), or use device 'cpu'"
        ) from None
    try:
        count = cupy.cuda.runtime.getDeviceCount()
    except Exception as exc:  # CUDA driver missing or broken: CuPy raises its own error types
        raise DeviceUnavailableError(f"device 'cuda': CuPy cannot reach a GPU: {exc}") from None
    if not 0 <= device_id < count:
        raise DeviceUnavailableError(
            f"device 'cuda:{device_id}' does not exist; this machine has {count} CUDA device(s)"
        )
    return cupy


def default_session_options(ort: Any, weights_dtype: str) -> Any:
    """The session options refdiff opens a file with when the caller gives none.

    float16 networks get onnxruntime's ``ORT_ENABLE_EXTENDED`` optimizations instead of
    ``ORT_ENABLE_ALL``: with ALL, onnxruntime rounds a float16 network differently when it is
    called inside a generator graph than when it is called on its own (1e-2 after 10 steps of
    the tiny U-Net), with EXTENDED the two agree bit for bit (docs/generator.md). Load-time
    warnings (the generator's overridable inputs) are silenced.
    """
    options = ort.SessionOptions()
    options.log_severity_level = 3
    if weights_dtype == "float16":
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    return options


def weights_dtype(path: Any) -> str:
    """The weight dtype a refdiff file's metadata names (a denoiser's ``dtype``, a generator's
    denoiser's), read without parsing the graph; ``"float32"`` when it names none."""
    import json

    from ..onnx_contract import METADATA_KEY, read_metadata_props

    try:
        meta = json.loads(read_metadata_props(path).get(METADATA_KEY) or "{}")
        return str(meta.get("dtype") or meta.get("denoiser", {}).get("dtype") or "float32")
    except (ValueError, AttributeError):
        return "float32"
