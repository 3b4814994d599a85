"""An exported refdiff model behind an onnxruntime session, as the core's denoiser callable.

:class:`OnnxDenoiser` opens a ``.onnx`` file written by ``refdiff export``, reads and validates
the ``"refdiff"`` metadata it carries (:class:`ModelMetadata`: the diffusion settings, the U-Net
settings, the weights' dtype), checks them against the graph, and is then called like the
PyTorch model: ``denoiser(x, t) -> model_output``.

- ``device="cpu"``: NumPy arrays in and out, onnxruntime's CPUExecutionProvider.
- ``device="cuda"`` (or ``"cuda:N"``): CuPy arrays in and out, the CUDAExecutionProvider through
  IO binding on the arrays' device pointers, so no sampling step copies through the host.

Nothing here imports torch; onnxruntime (and CuPy, for CUDA) are imported when a denoiser is
opened, so importing this module is cheap.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..config import DiffusionConfig
from ..schedules import Schedule

__all__ = [
    "FORMAT_VERSION",
    "INPUT_NAMES",
    "METADATA_KEY",
    "OUTPUT_NAME",
    "DeviceUnavailableError",
    "MetadataError",
    "ModelMetadata",
    "OnnxDenoiser",
    "parse_device",
]

#: Key of the model's ``metadata_props`` entry holding the JSON of :class:`ModelMetadata`.
METADATA_KEY = "refdiff"
#: Version of that JSON's layout; readers refuse versions they do not know.
FORMAT_VERSION = 1
#: Graph inputs: noisy images ``x`` [B, C, H, W] (float32) and timestep indices ``t`` [B] (int64).
INPUT_NAMES = ("x", "t")
#: Graph output: ``model_output`` [B, C or 2C, H, W] (float32).
OUTPUT_NAME = "model_output"
#: dtypes the weights may have; inputs and outputs are float32 either way.
WEIGHT_DTYPES = ("float32", "float16")

# onnxruntime's exception types (by name) that mean "this file is not a usable model".
_FILE_ERRORS = frozenset(
    {"InvalidProtobuf", "InvalidGraph", "NoSuchFile", "InvalidArgument", "Fail"}
)

_EXPORT_HINT = (
    "export it with `refdiff export CHECKPOINT --out model.onnx` (or "
    "refdiff.export.export_onnx), which writes the metadata sampling needs"
)


class MetadataError(ValueError):
    """The model's refdiff metadata is missing, malformed or contradicts the graph."""


class DeviceUnavailableError(ValueError):
    """The requested device cannot be used (no CUDA provider, no CuPy, no GPU)."""


@dataclass(frozen=True)
class ModelMetadata:
    """The JSON stored under :data:`METADATA_KEY` in an exported model's ``metadata_props``.

    Attributes
    ----------
    diffusion : DiffusionConfig
        Schedule, parameterisation, image shape, data range, clipping: what sampling needs.
    model : dict
        The network's own settings (``UNetConfig.to_dict()``), for reference.
    dtype : str
        ``"float32"`` or ``"float16"``: the dtype of the weights and inner computation. Inputs and
        outputs are float32 in both cases.
    refdiff_version : str
        The refdiff version that exported the model.
    input_names, output_name
        :data:`INPUT_NAMES` and :data:`OUTPUT_NAME`, recorded for readers of the file.
    format : int
        :data:`FORMAT_VERSION`.
    """

    diffusion: DiffusionConfig
    model: dict[str, Any] = field(default_factory=dict)
    dtype: str = "float32"
    refdiff_version: str = ""
    input_names: tuple[str, ...] = INPUT_NAMES
    output_name: str = OUTPUT_NAME
    format: int = FORMAT_VERSION

    def __post_init__(self) -> None:
        if not isinstance(self.diffusion, DiffusionConfig):
            raise TypeError(
                f"diffusion must be a DiffusionConfig, got {type(self.diffusion).__name__}"
            )
        if self.dtype not in WEIGHT_DTYPES:
            raise ValueError(f"dtype must be one of {WEIGHT_DTYPES}, got {self.dtype!r}")
        object.__setattr__(self, "input_names", tuple(self.input_names))
        object.__setattr__(self, "model", dict(self.model))

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": self.format,
            "refdiff_version": self.refdiff_version,
            "diffusion": self.diffusion.to_dict(),
            "model": dict(self.model),
            "dtype": self.dtype,
            "input_names": list(self.input_names),
            "output_name": self.output_name,
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_json(cls, text: str | None, *, source: str = "the model") -> ModelMetadata:
        """Parse and validate the metadata JSON; every problem is a :class:`MetadataError`."""
        if text is None:
            raise MetadataError(
                f"{source} lacks refdiff metadata (no {METADATA_KEY!r} entry in its "
                f"metadata_props), so its diffusion settings are unknown; {_EXPORT_HINT}"
            )
        try:
            d = json.loads(text)
        except json.JSONDecodeError as exc:
            raise MetadataError(
                f"{source}: the refdiff metadata is not valid JSON: {exc}"
            ) from None
        if not isinstance(d, Mapping):
            raise MetadataError(
                f"{source}: the refdiff metadata must be a JSON object, got {type(d).__name__}"
            )
        fmt = d.get("format")
        if fmt != FORMAT_VERSION:
            raise MetadataError(
                f"{source}: refdiff metadata format {fmt!r} is not supported (this refdiff reads "
                f"format {FORMAT_VERSION}); re-export the model with this refdiff"
            )
        required = ("diffusion", "model", "dtype", "input_names", "output_name")
        missing = [k for k in required if k not in d]
        if missing:
            raise MetadataError(
                f"{source}: the refdiff metadata lacks the keys {missing}; {_EXPORT_HINT}"
            )
        unknown = sorted(set(d) - {*required, "format", "refdiff_version"})
        if unknown:
            raise MetadataError(f"{source}: unknown refdiff metadata keys {unknown}")
        try:
            diffusion = DiffusionConfig.from_dict(d["diffusion"])
        except (TypeError, ValueError) as exc:
            raise MetadataError(
                f"{source}: invalid diffusion settings in the metadata: {exc}"
            ) from None
        if not isinstance(d["model"], Mapping):
            raise MetadataError(f"{source}: metadata 'model' must be an object, got {d['model']!r}")
        names = d["input_names"]
        if not isinstance(names, list) or not all(isinstance(s, str) for s in names):
            raise MetadataError(f"{source}: metadata 'input_names' must be a list of names")
        try:
            return cls(
                diffusion=diffusion,
                model=dict(d["model"]),
                dtype=d["dtype"],
                refdiff_version=str(d.get("refdiff_version", "")),
                input_names=tuple(names),
                output_name=str(d["output_name"]),
                format=fmt,
            )
        except (TypeError, ValueError) as exc:
            raise MetadataError(f"{source}: {exc}") from None


def parse_device(device: str) -> tuple[str, int]:
    """``"cpu"`` -> ("cpu", 0); ``"cuda"`` -> ("cuda", 0); ``"cuda:1"`` -> ("cuda", 1)."""
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


def _check_file(path: Path) -> None:
    if not path.exists():
        raise FileNotFoundError(f"ONNX model {str(path)!r} does not exist")
    if not path.is_file():
        raise ValueError(f"ONNX model {str(path)!r} is not a file")
    if path.stat().st_size == 0:
        raise ValueError(f"ONNX model {str(path)!r} is empty")


def _import_onnxruntime() -> Any:
    try:
        import onnxruntime
    except ImportError as exc:
        raise ImportError(
            "sampling from ONNX needs onnxruntime: pip install 'refdiff[onnx]' (CPU) or "
            "'refdiff[cuda12]' / 'refdiff[cuda13]' (NVIDIA GPUs)"
        ) from exc
    return onnxruntime


def _import_cupy(device_id: int) -> Any:
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
    diffusion : DiffusionConfig
    schedule : Schedule
        The base schedule the model was trained with, rebuilt from the metadata.
    xp : module
        The array namespace the denoiser takes and returns (``array_api_compat.numpy`` or
        ``array_api_compat.cupy``), for the samplers.
    providers : list of str
        The providers the session actually uses.

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
        _check_file(self.path)
        ort = _import_onnxruntime()
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
            self._cupy = _import_cupy(device_id)
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
        self._check_graph(source)
        self.diffusion: DiffusionConfig = self.metadata.diffusion
        self.schedule: Schedule = self.diffusion.build_schedule()
        self.image_shape: tuple[int, int, int] = self.diffusion.image_shape
        self.out_channels: int = self.diffusion.out_channels
        if kind == "cuda":
            import array_api_compat.cupy as xp
        else:
            import array_api_compat.numpy as xp
        self.xp = xp

    # ---------------------------------------------------------------------------------------
    def _check_graph(self, source: str) -> None:
        """Refuse metadata that contradicts the graph: names, dtypes, ranks, C/H/W, 2C outputs."""
        meta, d = self.metadata, self.metadata.diffusion
        inputs = {i.name: i for i in self.session.get_inputs()}
        outputs = {o.name: o for o in self.session.get_outputs()}
        if tuple(meta.input_names) != INPUT_NAMES or meta.output_name != OUTPUT_NAME:
            raise MetadataError(
                f"{source}: metadata names inputs {list(meta.input_names)} and output "
                f"{meta.output_name!r}; refdiff models have inputs {list(INPUT_NAMES)} and "
                f"output {OUTPUT_NAME!r}"
            )
        if sorted(inputs) != sorted(INPUT_NAMES) or list(outputs) != [OUTPUT_NAME]:
            raise MetadataError(
                f"{source}: the graph has inputs {sorted(inputs)} and outputs {list(outputs)}; "
                f"a refdiff model has inputs {list(INPUT_NAMES)} and the output {OUTPUT_NAME!r}"
            )
        x, t, out = inputs["x"], inputs["t"], outputs[OUTPUT_NAME]
        for arg, want in ((x, "tensor(float)"), (t, "tensor(int64)"), (out, "tensor(float)")):
            if arg.type != want:
                raise MetadataError(
                    f"{source}: graph {arg.name!r} has type {arg.type}, expected {want} "
                    "(float16 models keep float32 inputs and outputs)"
                )
        if len(x.shape) != 4 or len(t.shape) != 1 or len(out.shape) != 4:
            raise MetadataError(
                f"{source}: graph shapes x {x.shape}, t {t.shape}, {OUTPUT_NAME} {out.shape}; "
                "expected [B, C, H, W], [B] and [B, C or 2C, H, W]"
            )
        c, h, w = d.image_shape
        fixed = [s if isinstance(s, int) else None for s in x.shape[1:]]
        if any(s is not None and s != want for s, want in zip(fixed, (c, h, w), strict=True)):
            raise MetadataError(
                f"{source}: the metadata's image_shape {list(d.image_shape)} contradicts the "
                f"graph input x of shape {x.shape}"
            )
        out_c = out.shape[1]
        if isinstance(out_c, int) and out_c != d.out_channels:
            if out_c == 2 * c:
                why = (
                    f"the graph outputs 2C = {out_c} channels (a learned variance) but the "
                    f"metadata's variance {d.variance!r} is fixed (expects C = {c})"
                )
            elif out_c == c and d.out_channels == 2 * c:
                why = (
                    f"the metadata's variance {d.variance!r} is learned (expects 2C = {2 * c} "
                    f"channels) but the graph outputs C = {c}"
                )
            else:
                why = f"the graph outputs {out_c} channels, the metadata implies {d.out_channels}"
            raise MetadataError(f"{source}: inconsistent metadata: {why}")
        model = meta.model
        for key, want in (("in_channels", c), ("image_size", h)):
            if key in model and model[key] != want:
                raise MetadataError(
                    f"{source}: metadata model.{key} = {model[key]!r} contradicts the diffusion "
                    f"image_shape {list(d.image_shape)}"
                )
        if "learn_sigma" in model and bool(model["learn_sigma"]) != (d.out_channels == 2 * c):
            raise MetadataError(
                f"{source}: metadata model.learn_sigma = {model['learn_sigma']!r} contradicts the "
                f"diffusion variance {d.variance!r}"
            )

    def __repr__(self) -> str:
        return (
            f"OnnxDenoiser({str(self.path)!r}, device={self.device!r}, "
            f"dtype={self.metadata.dtype!r}, T={self.schedule.num_timesteps})"
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
        feed = {
            "x": np.ascontiguousarray(x, dtype=np.float32),
            "t": np.ascontiguousarray(t, dtype=np.int64),
        }
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
