"""OpenVINO's CPU plugin as the engine of bfloat16 files (refdiff.precision: ``bfloat16``).

onnxruntime has no bfloat16 convolution or matrix-product kernels on x86 CPUs; OpenVINO reads the
same ONNX file and, with its inference precision hint set to ``bf16``, runs the convolutions,
matrix products, normalisations and softmax with bfloat16 tensors on CPUs that have the
instructions (AVX512-BF16 or AMX). :class:`OpenVinoEngine` is what
:class:`~refdiff.runtime.OnnxDenoiser` calls for such a file; it takes and returns float32 NumPy
arrays like an onnxruntime session does.

OpenVINO is an optional extra (``pip install "refdiff[openvino]"``); nothing here imports it
before an engine is opened. No torch.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .._deps import require
from ..onnx_contract import OUTPUT_NAME
from .devices import DeviceUnavailableError

__all__ = ["OpenVinoEngine", "float32_layers", "has_bfloat16"]

#: OpenVINO runtime layer types that move or hold data rather than compute: not listed by
#: :func:`float32_layers`.
_BOOKKEEPING = frozenset(
    {"Const", "Input", "Output", "Parameter", "Result", "Reorder", "Reshape", "Convert"}
)


def _openvino() -> Any:
    return require(
        "openvino", "openvino", "running a bfloat16 refdiff file (OpenVINO's CPU plugin)"
    )


def has_bfloat16() -> bool:
    """Whether OpenVINO's CPU plugin computes in bfloat16 on this CPU (native instructions)."""
    core = _openvino().Core()
    return "BF16" in core.get_property("CPU", "OPTIMIZATION_CAPABILITIES")


class OpenVinoEngine:
    """An ONNX file compiled by OpenVINO for the CPU with bfloat16 inference precision.

    Parameters
    ----------
    path : str or PathLike
        The ONNX file (its graph is the float32 one).
    threads : int, optional
        CPU threads (``INFERENCE_NUM_THREADS``); default OpenVINO's (all cores).
    extra_outputs : sequence of str
        Names of inner tensors to return as well (the drift harness's per-layer errors).

    Raises
    ------
    DeviceUnavailableError
        This CPU has no bfloat16 instructions (OpenVINO would emulate them: slower than float32).
    MissingDependency
        OpenVINO is not installed.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        threads: int | None = None,
        extra_outputs: Sequence[str] = (),
    ) -> None:
        ov = _openvino()
        core = ov.Core()
        caps = core.get_property("CPU", "OPTIMIZATION_CAPABILITIES")
        if "BF16" not in caps:
            raise DeviceUnavailableError(
                f"{str(path)!r} is a bfloat16 file, but this CPU has no bfloat16 instructions "
                f"(OpenVINO's CPU capabilities: {list(caps)}); use the float32 or int8 variant"
            )
        model = core.read_model(str(path))
        self.extra_outputs = tuple(extra_outputs)
        if self.extra_outputs:
            model.add_outputs(list(self.extra_outputs))
        config: dict[str, Any] = {"INFERENCE_PRECISION_HINT": "bf16", "PERFORMANCE_HINT": "LATENCY"}
        if threads:
            config["INFERENCE_NUM_THREADS"] = int(threads)
        self.compiled = core.compile_model(model, "CPU", config)
        self._request = self.compiled.create_infer_request()
        self._outputs = [self.compiled.output(OUTPUT_NAME)] + [
            self.compiled.output(name) for name in self.extra_outputs
        ]

    def run(self, x: np.ndarray, t: np.ndarray) -> list[np.ndarray]:
        """``[model_output, *extra_outputs]`` (float32 copies) for ``x`` [B, C, H, W], ``t`` [B]."""
        result = self._request.infer({"x": x, "t": t})
        return [np.array(result[o], dtype=np.float32, copy=True) for o in self._outputs]


def float32_layers(path: str | os.PathLike[str]) -> tuple[str, ...]:
    """The computing layer types OpenVINO runs in float32 when ``path`` is compiled for bfloat16,
    read from the compiled model (e.g. the ``Sin``/``Cos`` of the timestep embedding: "Math")."""
    engine = OpenVinoEngine(Path(path), threads=1)
    kinds = set()
    for op in engine.compiled.get_runtime_model().get_ordered_ops():
        info = op.get_rt_info()
        kind = info["layerType"].astype(str)
        if kind not in _BOOKKEEPING and info["runtimePrecision"].astype(str) == "f32":
            names = info["originalLayersNames"].astype(str) if "originalLayersNames" in info else ""
            kinds.add(f"{kind} ({names})" if names else kind)
    return tuple(sorted(kinds))
