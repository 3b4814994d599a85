"""An exported refdiff model behind an onnxruntime session, as the core's denoiser callable.

:class:`OnnxDenoiser` opens a ``.onnx`` file written by ``refdiff export``, reads and validates
the ``"refdiff"`` metadata it carries (:class:`ModelMetadata`: the diffusion settings, the U-Net
settings, the weights' dtype), checks them against the graph, and is then called like the
PyTorch model: ``denoiser(x, t) -> model_output``.

- ``device="cpu"``: NumPy arrays in and out, onnxruntime's CPUExecutionProvider.
- ``device="cuda"`` (or ``"cuda:N"``): CuPy arrays in and out, the CUDAExecutionProvider through
  IO binding on the arrays' device pointers, so no sampling step copies through the host.

A file's precision (:mod:`refdiff.precision`, docs/precision.md) picks its engine: float32,
float16 and int8 files run in onnxruntime; a bfloat16 file runs on the CPU in OpenVINO
(:mod:`.openvino`, the ``openvino`` extra), with the same calls.

Nothing here imports torch; onnxruntime (and CuPy, for CUDA) are imported when a denoiser is
opened, so importing this module is cheap.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from ..onnx_contract import METADATA_KEY, OUTPUT_NAME, ModelMetadata, check_graph, check_onnx_file
from ..precision import ENGINES
from ..settings import Diffusion
from .devices import (
    DeviceUnavailableError,
    default_session_options,
    import_cupy,
    import_onnxruntime,
    parse_device,
    weights_dtype,
)

__all__ = ["OnnxDenoiser"]

# onnxruntime's exception types (by name) that mean "this file is not a usable model".
_FILE_ERRORS = frozenset(
    {"InvalidProtobuf", "InvalidGraph", "NoSuchFile", "InvalidArgument", "Fail"}
)


class OnnxDenoiser:
    """A refdiff ONNX model as a denoiser ``(x, t) -> model_output`` for the core's samplers.

    Parameters
    ----------
    path : str or PathLike
        An ONNX file written by ``refdiff export``.
    device : str
        ``"cpu"`` (NumPy arrays, CPUExecutionProvider) or ``"cuda"`` / ``"cuda:N"`` (CuPy
        arrays, CUDAExecutionProvider with IO binding on device pointers).
    provider_options : mapping, optional
        Extra options of the execution provider (e.g. ``{"cudnn_conv_algo_search": "DEFAULT"}``).
    session_options : onnxruntime.SessionOptions, optional
        Passed to the session (threads, graph optimisation level, ...).

    Attributes
    ----------
    metadata : ModelMetadata
    diffusion : Diffusion
        The model's diffusion settings, from the metadata (``diffusion.schedule`` is the base
        schedule it was trained with).
    xp : module
        The array namespace the denoiser takes and returns (``array_api_compat.numpy`` or
        ``array_api_compat.cupy``), for the samplers.
    providers : list of str
        The providers the session actually uses.
    precision : str
        ``float32``, ``float16``, ``int8`` or ``bfloat16`` (the metadata's precision).

    Raises
    ------
    FileNotFoundError
        The file does not exist.
    ValueError
        The file is not a readable ONNX model (empty, truncated, another format), or
        :class:`MetadataError` when its refdiff metadata is missing or contradicts the graph, or
        :class:`DeviceUnavailableError` when CUDA is asked for but the CUDA provider, CuPy or a
        GPU is missing (never a silent fallback to the CPU).
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        device: str = "cpu",
        provider_options: Mapping[str, Any] | None = None,
        session_options: Any = None,
    ) -> None:
        self.path = Path(path)
        kind, device_id = parse_device(device)
        check_onnx_file(self.path)
        ort = import_onnxruntime()
        if session_options is None:
            session_options = default_session_options(ort, weights_dtype(self.path))
        self.device = kind if kind == "cpu" else f"cuda:{device_id}"
        self._device_id = device_id
        self._cupy = None
        options = dict(provider_options or {})
        if kind == "cuda":
            available = ort.get_available_providers()
            if "CUDAExecutionProvider" not in available:
                raise DeviceUnavailableError(
                    f"device 'cuda' needs onnxruntime's CUDAExecutionProvider, but this "
                    f"onnxruntime ({ort.__version__}) offers only {available}; install "
                    "onnxruntime-gpu (pip install 'refdiff[cuda12]' or 'refdiff[cuda13]', without "
                    "the CPU-only onnxruntime package) or use device 'cpu'"
                )
            # Load CUDA/cuDNN from the nvidia-* wheels before the session needs them.
            preload = getattr(ort, "preload_dlls", None)
            if preload is not None:
                preload()
            self._cupy = import_cupy(device_id)
            options.setdefault("device_id", device_id)
            providers: list[Any] = [("CUDAExecutionProvider", options)]
        else:
            providers = [("CPUExecutionProvider", options)] if options else ["CPUExecutionProvider"]
        try:
            self.session = ort.InferenceSession(
                str(self.path), sess_options=session_options, providers=providers
            )
        except Exception as exc:  # onnxruntime raises its own (pybind) exception types
            kind_of = type(exc).__name__
            file_problem = kind_of in _FILE_ERRORS and not (
                kind_of == "Fail" and kind == "cuda" and "cuda" in str(exc).lower()
            )
            if kind == "cuda" and not file_problem:
                raise DeviceUnavailableError(
                    f"device 'cuda': onnxruntime could not open {str(self.path)!r} with the CUDA "
                    f"provider: {exc}"
                ) from None
            raise ValueError(
                f"{str(self.path)!r} is not a readable ONNX model (truncated, corrupted, or "
                f"not ONNX?): {exc}"
            ) from None
        self.providers = list(self.session.get_providers())
        if kind == "cuda" and (not self.providers or self.providers[0] != "CUDAExecutionProvider"):
            # onnxruntime falls back to the CPU when CUDA fails to initialise; refuse that.
            raise DeviceUnavailableError(
                f"device 'cuda': onnxruntime fell back to {self.providers} (CUDA or cuDNN "
                'libraries not found?); check `python -c "import onnxruntime as o; '
                'o.preload_dlls(); print(o.get_available_providers())"` and your driver'
            )
        source = f"ONNX model {str(self.path)!r}"
        meta = self.session.get_modelmeta().custom_metadata_map
        self.metadata = ModelMetadata.from_json(meta.get(METADATA_KEY), source=source)
        check_graph(
            self.metadata, self.session.get_inputs(), self.session.get_outputs(), source=source
        )
        self.diffusion: Diffusion = self.metadata.diffusion
        self.precision: str = self.metadata.precision_name
        self._engine = None  # a bfloat16 file runs in OpenVINO (refdiff.precision)
        if ENGINES[self.precision] == "openvino":
            if kind == "cuda":
                raise DeviceUnavailableError(
                    f"{str(self.path)!r} is a bfloat16 file, which runs on the CPU (OpenVINO); "
                    "on a GPU use the float32 or float16 file"
                )
            from .openvino import OpenVinoEngine

            threads = getattr(session_options, "intra_op_num_threads", 0) or None
            self._engine = OpenVinoEngine(self.path, threads=threads)
        self.image_shape: tuple[int, int, int] = self.diffusion.image_shape
        self.out_channels: int = self.diffusion.out_channels
        self.xp: Any
        if kind == "cuda":
            import array_api_compat.cupy as cupy_namespace

            self.xp = cupy_namespace
        else:
            import array_api_compat.numpy as numpy_namespace

            self.xp = numpy_namespace

    # ---------------------------------------------------------------------------------------
    def __repr__(self) -> str:
        return (
            f"OnnxDenoiser({str(self.path)!r}, device={self.device!r}, "
            f"precision={self.precision!r}, T={self.diffusion.num_timesteps})"
        )

    def _check_call(self, x: Any, t: Any) -> int:
        shape = tuple(x.shape)
        if len(shape) != 4 or shape[1:] != self.image_shape:
            raise ValueError(
                f"x must have shape [B, {', '.join(map(str, self.image_shape))}], got {shape}"
            )
        if tuple(t.shape) != (shape[0],):
            raise ValueError(f"t must have shape [{shape[0]}] (one index per image), got {t.shape}")
        return shape[0]

    def __call__(self, x: Any, t: Any) -> Any:
        """``model_output`` [B, C or 2C, H, W] for images ``x`` [B, C, H, W] at indices ``t`` [B].

        Arrays are NumPy on the CPU and CuPy on CUDA; the output has ``x``'s dtype (the graph runs
        in float32; a float64 sampling loop gets float64 back).
        """
        if self._cupy is not None:
            return self._call_cuda(x, t)
        if not isinstance(x, np.ndarray) or not isinstance(t, np.ndarray):
            raise TypeError(
                f"a CPU OnnxDenoiser takes NumPy arrays, got {type(x).__name__} and "
                f"{type(t).__name__}"
            )
        self._check_call(x, t)
        feed: dict[str, np.ndarray] = {
            "x": np.ascontiguousarray(x, dtype=np.float32),
            "t": np.ascontiguousarray(t, dtype=np.int64),
        }
        if self._engine is not None:
            (out,) = self._engine.run(feed["x"], feed["t"])
        else:
            (out,) = self.session.run([OUTPUT_NAME], feed)
        return out if out.dtype == x.dtype else out.astype(x.dtype)

    def _run_bound(
        self, device_type: str, x_ptr: int, x_shape: tuple[int, ...], t_ptr: int, out_ptr: int
    ) -> None:
        """Run the graph on caller-owned buffers (IO binding on raw pointers): x float32
        [B, C, H, W], t int64 [B], and an output buffer float32 [B, out_channels, H, W], all
        contiguous and on ``device_type`` ("cuda" here; "cpu" works too, which tests use)."""
        dev = self._device_id
        batch = x_shape[0]
        out_shape = (batch, self.out_channels, *self.image_shape[1:])
        binding = self.session.io_binding()
        binding.bind_input("x", device_type, dev, np.float32, x_shape, x_ptr)
        binding.bind_input("t", device_type, dev, np.int64, (batch,), t_ptr)
        binding.bind_output(OUTPUT_NAME, device_type, dev, np.float32, out_shape, out_ptr)
        self.session.run_with_iobinding(binding)
        binding.synchronize_outputs()

    def device_scope(self) -> Any:
        """A context in which arrays are created on this denoiser's device (CuPy's current
        device for ``cuda:N``; nothing to do on the CPU)."""
        if self._cupy is None:
            return contextlib.nullcontext()
        return self._cupy.cuda.Device(self._device_id)

    def _call_cuda(self, x: Any, t: Any) -> Any:
        cp = self._cupy
        assert cp is not None  # __call__ comes here on CUDA only
        if not isinstance(x, cp.ndarray) or not isinstance(t, cp.ndarray):
            raise TypeError(
                f"a CUDA OnnxDenoiser takes CuPy arrays, got {type(x).__name__} and "
                f"{type(t).__name__}"
            )
        if x.device.id != self._device_id or t.device.id != self._device_id:
            raise ValueError(
                f"arrays live on cuda:{x.device.id} / cuda:{t.device.id}, the model on "
                f"cuda:{self._device_id}"
            )
        batch = self._check_call(x, t)
        with cp.cuda.Device(self._device_id):
            xin = cp.ascontiguousarray(x, dtype=cp.float32)
            tin = cp.ascontiguousarray(t, dtype=cp.int64)
            out = cp.empty((batch, self.out_channels, *self.image_shape[1:]), dtype=cp.float32)
            # onnxruntime computes on its own stream: finish CuPy's pending writes to the inputs
            # first. The run synchronises onnxruntime's stream before returning, so `out` is
            # complete when we hand it back.
            cp.cuda.get_current_stream().synchronize()
            self._run_bound("cuda", xin.data.ptr, tuple(xin.shape), tin.data.ptr, out.data.ptr)
        return out if out.dtype == x.dtype else out.astype(x.dtype)

