"""Inner tensors of a refdiff file, for the drift harness's per-layer errors.

:func:`inner_outputs` lists the outputs of the convolutions and matrix products of one file that
another file has too (a variant keeps the tensor names of the float32 file it was made from);
:func:`open_with_outputs` runs a file with those tensors as extra outputs, on the engine its
precision names (onnxruntime, or OpenVINO for bfloat16). Needs the onnx package (the ``onnx``
extra) to edit the graph's outputs; no torch.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from .._deps import require
from ..onnx_contract import METADATA_KEY, OUTPUT_NAME, ModelMetadata

__all__ = ["inner_outputs", "open_with_outputs"]

#: The operators whose outputs are compared layer by layer.
LAYER_OPS = ("Conv", "MatMul", "Gemm")


def _onnx() -> Any:
    return require("onnx", "onnx", "per-layer drift (reading the graph)")


def inner_outputs(
    reference: str | os.PathLike[str], variant: str | os.PathLike[str]
) -> list[tuple[str, str]]:
    """``(tensor name, operator)`` of the reference's convolutions and matrix products, in graph
    order, whose output tensor the variant's graph has under the same name."""
    onnx = _onnx()
    ref = onnx.load_model(str(reference), load_external_data=False)
    var = onnx.load_model(str(variant), load_external_data=False)
    produced = {o for node in var.graph.node for o in node.output}
    return [
        (node.output[0], node.op_type)
        for node in ref.graph.node
        if node.op_type in LAYER_OPS and node.output[0] in produced
    ]


def open_with_outputs(
    path: str | os.PathLike[str], names: Sequence[str]
) -> Callable[[dict[str, np.ndarray]], list[np.ndarray]]:
    """A function ``feed -> [tensor for name in names]`` running the file at ``path``."""
    onnx = _onnx()
    proto = onnx.load_model(str(path))
    meta = ModelMetadata.from_json(
        {p.key: p.value for p in proto.metadata_props}.get(METADATA_KEY), source=str(path)
    )
    extra = [n for n in names if n != OUTPUT_NAME]
    if meta.precision is not None and meta.precision.engine == "openvino":
        from .openvino import OpenVinoEngine

        engine = OpenVinoEngine(path, extra_outputs=extra)

        def run_openvino(feed: dict[str, np.ndarray]) -> list[np.ndarray]:
            outs = dict(zip([OUTPUT_NAME, *extra], engine.run(feed["x"], feed["t"]), strict=True))
            return [outs[n] for n in names]

        return run_openvino
    from .devices import import_onnxruntime

    ort = import_onnxruntime()
    present = {o.name for o in proto.graph.output}
    for name in extra:
        if name not in present:
            proto.graph.output.append(
                onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None)
            )
    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])

    def run_onnxruntime(feed: dict[str, np.ndarray]) -> list[np.ndarray]:
        return [np.asarray(a, dtype=np.float32) for a in session.run(list(names), feed)]

    return run_onnxruntime
