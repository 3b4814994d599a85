"""Reduced-precision variants of an exported float32 denoiser: int8 (static QDQ) and bfloat16.

:func:`write_variant` reads a float32 refdiff file (``refdiff export`` writes one) and writes a
variant beside it, with its :class:`refdiff.precision.Precision` in the metadata:

- ``int8``: onnxruntime's static quantization in QDQ form: int8 weights per output channel,
  uint8 activations with ranges calibrated on the model's own inputs along sampling trajectories
  (:func:`trajectory_inputs`: every noise level, since activation ranges change with t). Only the
  convolutions and matrix products compute in int8; normalisations, softmax, SiLU and the
  residual additions stay float32, and so do the parts of :data:`GRAPH_PARTS` named in
  ``float32`` (docs/precision.md gives the measurements behind the default).
- ``bfloat16``: the float32 graph, marked to run with bfloat16 arithmetic in OpenVINO's CPU plugin
  (:mod:`refdiff.runtime.openvino`); the parts OpenVINO keeps in float32 are read from the
  compiled model and recorded.

Needs onnx and onnxruntime (and OpenVINO for bfloat16); not torch, so a file can be quantized
without the model's checkpoint.
"""

from __future__ import annotations

import math
import os
import tempfile
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from refdiff._checks import check_int
from refdiff._io import atomic_path, check_output_file, make_dir
from refdiff.onnx_contract import INPUT_NAMES, METADATA_KEY, ModelMetadata, check_onnx_file
from refdiff.precision import PRECISIONS, Precision

__all__ = [
    "DEFAULT_FLOAT32_PARTS",
    "GRAPH_PARTS",
    "TOLERANCES",
    "check_variant",
    "float32_below_model",
    "graph_parts",
    "trajectory_inputs",
    "unshare_initializers",
    "variant_error",
    "write_variant",
]

#: Parts of a denoiser graph that :func:`graph_parts` finds and ``float32=`` may keep in float32.
GRAPH_PARTS = (
    "input convolution",
    "output convolution",
    "timestep embedding",
    "attention products",
)
#: What the int8 variant keeps in float32 by default (docs/precision.md: the measurements).
DEFAULT_FLOAT32_PARTS = ("input convolution", "output convolution")
#: Operators that compute in int8 in the int8 variant.
QUANTIZED_OPS = ("Conv", "MatMul", "Gemm")
#: Always float32 in the int8 variant (never quantized), for the record.
ALWAYS_FLOAT32 = "normalisation, softmax, SiLU, additions"
#: The largest relative RMS error of a variant's output against float32 along sampling
#: trajectories (:func:`variant_error`) that :func:`check_variant` accepts (docs/precision.md).
TOLERANCES = {"int8": 0.12, "bfloat16": 0.03, "float16": 0.01}


def _read_metadata(proto: Any, source: str) -> ModelMetadata:
    raw = {p.key: p.value for p in proto.metadata_props}.get(METADATA_KEY)
    return ModelMetadata.from_json(raw, source=source)


def _set_metadata(proto: Any, meta: ModelMetadata) -> None:
    for i in reversed(range(len(proto.metadata_props))):
        if proto.metadata_props[i].key == METADATA_KEY:
            del proto.metadata_props[i]
    entry = proto.metadata_props.add()
    entry.key, entry.value = METADATA_KEY, meta.to_json()


def unshare_initializers(proto: Any) -> int:
    """Give every node its own copy of each floating-point initializer that several nodes read.

    onnxruntime's static quantizer refuses a graph whose weight initializer is shared between
    nodes ("Quantization parameter shared mode is not supported for weight yet"): its copy of a
    shared initializer is named ``<name><k>``, which can be the name of an activation (``val_33``
    copied as ``val_334``, an existing tensor, in files from torch's exporter). Here each
    consumer after the first gets a copy under a name no tensor of the graph has. The copies are
    small in refdiff's U-Nets (the group norms' unit scales and zero shifts). Returns how many
    copies were made. Edits ``proto`` in place.
    """
    from onnx import TensorProto

    graph = proto.graph
    floats = {TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.BFLOAT16, TensorProto.DOUBLE}
    inits = {i.name: i for i in graph.initializer if i.data_type in floats}
    names = {i.name for i in graph.initializer} | {v.name for v in graph.input}
    for node in graph.node:
        names.update(node.output)
    seen: set[str] = set()
    copies = 0
    for node in graph.node:
        for k, name in enumerate(node.input):
            if name not in inits:
                continue
            if name not in seen:
                seen.add(name)
                continue
            j = 1
            while f"{name}.copy{j}" in names:
                j += 1
            new = graph.initializer.add()
            new.CopyFrom(inits[name])
            new.name = f"{name}.copy{j}"
            names.add(new.name)
            node.input[k] = new.name
            copies += 1
    return copies


def graph_parts(proto: Any) -> dict[str, list[str]]:
    """The node names of each part of :data:`GRAPH_PARTS`, found from the graph's data flow.

    - ``input convolution``: the first convolution that reads the image input ``x``;
    - ``output convolution``: the last convolution before the output;
    - ``timestep embedding``: matrix products and convolutions whose input depends on ``t`` only
      (the embedding MLP and each residual block's projection of it);
    - ``attention products``: matrix products of two activations (q·k and the weights·v).

    Works on any graph with inputs ``x`` and ``t`` (refdiff's U-Net, a diffusers UNet).
    """
    graph = proto.graph
    depends: dict[str, set[str]] = {name: {name} for name in INPUT_NAMES}
    inits = {i.name for i in graph.initializer}
    parts: dict[str, list[str]] = {p: [] for p in GRAPH_PARTS}
    convs: list[str] = []
    for node in graph.node:  # ONNX graphs are stored in topological order
        deps: set[str] = set()
        for name in node.input:
            deps |= depends.get(name, set())
        for name in node.output:
            depends[name] = deps
        data = [n for n in node.input if n and n not in inits]
        if node.op_type not in QUANTIZED_OPS:
            continue
        if node.op_type == "Conv":
            convs.append(node.name)
        if deps == {"t"}:
            parts["timestep embedding"].append(node.name)
        elif node.op_type == "MatMul" and len(data) == 2 and all("x" in depends[n] for n in data):
            parts["attention products"].append(node.name)
    x_convs = [
        n.name for n in graph.node if n.op_type == "Conv" and "x" in depends.get(n.output[0], ())
    ]
    if x_convs:
        parts["input convolution"].append(x_convs[0])
        parts["output convolution"].append(x_convs[-1])
    return parts


def trajectory_inputs(
    denoiser: Any,
    *,
    images: int = 16,
    steps: int = 50,
    sampler: str = "ddpm",
    seed: int = 0,
) -> list[dict[str, np.ndarray]]:
    """The denoiser's own inputs ``{"x", "t"}`` along ``images`` sampling trajectories.

    ``sampler`` over ``steps`` evenly spaced timesteps from T-1 down to 0 visits every noise
    level; each denoiser call (a batch of ``images``) becomes one calibration batch, so
    activation ranges are those of the images the model sees at each t, not of random noise.
    ``denoiser`` is a float32 :class:`refdiff.runtime.OnnxDenoiser` (NumPy on the CPU).
    """
    feeds: list[dict[str, np.ndarray]] = []

    class Recorder:
        diffusion = denoiser.diffusion

        def __call__(self, x: Any, t: Any) -> Any:
            feeds.append(
                {
                    "x": np.array(x, dtype=np.float32, copy=True),
                    "t": np.array(t, dtype=np.int64, copy=True),
                }
            )
            return denoiser(x, t)

    steps = min(int(steps), denoiser.diffusion.num_timesteps)
    denoiser.diffusion.sample(
        Recorder(), int(images), sampler=sampler, steps=steps, spacing="even", seed=seed
    )
    return feeds


class _Feeds:
    """onnxruntime's CalibrationDataReader over a list of feeds, read in strides (``set_range``)
    so that the calibrator holds one batch's activations at a time, not all of them."""

    def __init__(self, feeds: Sequence[dict[str, np.ndarray]]):
        self._feeds = list(feeds)
        self._it = iter(self._feeds)

    def __len__(self) -> int:
        return len(self._feeds)

    def set_range(self, start_index: int, end_index: int) -> None:
        self._it = iter(self._feeds[start_index:end_index])

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._it, None)


def _quantize_int8(
    proto: Any, feeds: Sequence[dict[str, np.ndarray]], exclude: Iterable[str], folder: Path
) -> Any:
    import onnx
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    class Reader(_Feeds, CalibrationDataReader):  # type: ignore[misc]  # onnxruntime is untyped
        pass

    # onnxruntime before 1.19 pins every Softmax output's range to [0, 1], quantized or not, and
    # fails ("Only an existing tensor can be modified, 'softmax' is not") unless the calibration
    # measured that tensor. Naming Softmax among the calibrated types and excluding each Softmax
    # node gets it measured and leaves it in float32: later releases skip the excluded nodes, so
    # the file is the same.
    softmax = set()
    for i, node in enumerate(proto.graph.node):
        if node.op_type == "Softmax":
            node.name = node.name or f"refdiff_softmax_{i}"  # exclusion goes by name
            softmax.add(node.name)
    src, dst = folder / "float32.onnx", folder / "int8.onnx"
    onnx.save_model(proto, str(src))
    quantize_static(
        str(src),
        str(dst),
        Reader(feeds),
        quant_format=QuantFormat.QDQ,
        activation_type=QuantType.QUInt8,  # x86 with VNNI: onnxruntime's recommendation
        weight_type=QuantType.QInt8,
        per_channel=True,
        reduce_range=False,
        op_types_to_quantize=[*QUANTIZED_OPS, *(["Softmax"] if softmax else [])],
        nodes_to_exclude=sorted(set(exclude) | softmax),
        # Memory: ranges merged after every batch. (CalibMaxIntermediateOutputs would drop the
        # batches it collected in onnxruntime 1.32 rather than merge them.)
        extra_options={"CalibStridedMinMax": 1},
    )
    return onnx.load_model(str(dst))


def write_variant(
    source: str | os.PathLike[str],
    path: str | os.PathLike[str],
    precision: str,
    *,
    float32: Sequence[str] | None = None,
    calibration_images: int = 16,
    calibration_steps: int = 50,
    calibration_sampler: str = "ddpm",
    seed: int = 0,
    float32_below: int = 0,
    source_name: str | None = None,
    progress: Callable[[str], None] | None = None,
) -> Path:
    """Write the ``precision`` variant (``"int8"`` or ``"bfloat16"``) of the float32 file ``source``.

    Parameters
    ----------
    source : str or PathLike
        A float32 refdiff ONNX file (``refdiff export`` without ``--precision``).
    path : str or PathLike
        The variant to write (whole or not at all).
    precision : {"int8", "bfloat16"}
    float32 : sequence of str, optional
        For int8: parts of :data:`GRAPH_PARTS` to keep in float32; default
        :data:`DEFAULT_FLOAT32_PARTS`.
    calibration_images, calibration_steps, calibration_sampler, seed
        For int8: the trajectories of :func:`trajectory_inputs` that calibrate the activation
        ranges (``calibration_images`` images each, ``calibration_steps`` calls).
    float32_below : int
        For int8: calls whose timesteps are all at least this run the int8 network, the others
        the float32 one, which the file then holds as well (:func:`float32_below_model`); in
        [0, T), 0 (the default) for an int8 network alone.
    source_name : str, optional
        What the metadata names as the variant's source (default: the file name of ``source``;
        ``refdiff export CHECKPOINT`` names the checkpoint).
    progress : callable, optional
        Called with a line of text before each long stage.

    Returns
    -------
    pathlib.Path
        ``path``.
    """
    import onnx

    if precision not in ("int8", "bfloat16"):
        raise ValueError(
            f"a variant's precision must be 'int8' or 'bfloat16', got {precision!r} "
            f"(float32 and float16 files come from export_onnx; precisions: {list(PRECISIONS)})"
        )
    source = Path(source)
    check_onnx_file(source)
    path = check_output_file(path, what="variant file")
    if path.resolve() == source.resolve():
        raise ValueError(f"the variant {str(path)!r} would overwrite its float32 source")
    say = progress or (lambda _line: None)
    try:
        proto = onnx.load_model(str(source))
    except Exception as exc:  # protobuf's DecodeError and onnx's own
        raise ValueError(f"{str(source)!r} is not a readable ONNX model: {exc}") from None
    meta = _read_metadata(proto, f"ONNX model {str(source)!r}")
    if meta.precision_name != "float32":
        raise ValueError(
            f"{str(source)!r} is a {meta.precision_name} file, not float32; variants are made "
            "from the float32 export (refdiff export without --precision)"
        )
    T = meta.diffusion.num_timesteps
    float32_below = check_int(float32_below, "float32_below", minimum=0, maximum=T - 1)
    if float32_below and precision != "int8":
        raise ValueError(f"float32_below applies to int8 variants, not to {precision}")
    if precision == "int8":
        keep = DEFAULT_FLOAT32_PARTS if float32 is None else tuple(float32)
        unknown = sorted(set(keep) - set(GRAPH_PARTS))
        if unknown:
            raise ValueError(f"unknown graph parts {unknown}; choose from {list(GRAPH_PARTS)}")
        from refdiff.runtime import OnnxDenoiser

        say(
            f"calibrating: {calibration_sampler} trajectories of {calibration_images} images, "
            f"{calibration_steps} steps, every noise level ..."
        )
        feeds = trajectory_inputs(
            OnnxDenoiser(source),
            images=calibration_images,
            steps=calibration_steps,
            sampler=calibration_sampler,
            seed=seed,
        )
        unshare_initializers(proto)  # computes the same: the float32 network of float32_below
        parts = graph_parts(proto)
        exclude = {n for p in keep for n in parts[p]}
        say(f"quantizing (static QDQ, {len(feeds)} calibration batches) ...")
        with tempfile.TemporaryDirectory(prefix="refdiff-int8-") as tmp:
            out = _quantize_int8(proto, feeds, exclude, Path(tmp))
        if float32_below:
            say(f"joining the float32 network for the calls with t < {float32_below} ...")
            out = float32_below_model(proto, out, float32_below)
        info = Precision(
            "int8",
            float32=(ALWAYS_FLOAT32, *(p for p in GRAPH_PARTS if p in keep)),
            calibration={
                "sampler": calibration_sampler,
                "steps": calibration_steps,
                "images": calibration_images,
                "calls": len(feeds),
                "seed": seed,
                "method": "minmax, uint8 activations, int8 weights per channel",
            },
            source=source_name or source.name,
            float32_below=float32_below,
        )
    else:
        from refdiff.runtime.openvino import float32_layers

        out = proto
        info = Precision(
            "bfloat16", float32=float32_layers(source), source=source_name or source.name
        )
    _set_metadata(out, _with_precision(meta, info))
    make_dir(path.parent)
    with atomic_path(path, suffix=".onnx") as tmp:
        onnx.save_model(out, str(tmp))
        onnx.checker.check_model(str(tmp), full_check=True)
    return path


def float32_below_model(float32: Any, int8: Any, below: int) -> Any:
    """One model of a float32 denoiser and its int8 variant: an ONNX ``If`` on ``min(t) < below``
    runs the float32 network, else the int8 one.

    The int8 network's error grows as t falls (docs/precision.md: at the smallest t the network
    must find noise finer than a step of the activations' 8-bit grid), and there the float32
    network costs few calls: ``below``/T of the full bound's, one of a few-step sampler's. A batch
    whose timesteps straddle ``below`` runs float32 whole. Each branch holds its own network's
    weights (onnxruntime fuses a body's quantized operators only over the body's own
    initializers), so the file is the two files' size together.

    Parameters
    ----------
    float32, int8 : onnx.ModelProto
        The float32 denoiser and its int8 variant (the same inputs ``x``, ``t`` and output).
    below : int
        The first timestep that runs int8, >= 1.

    Returns
    -------
    onnx.ModelProto
        Inputs and output those of ``float32``, its metadata; checked by onnx.checker.
    """
    import onnx

    from refdiff.graph.builder import GraphBuilder

    below = check_int(below, "below", minimum=1)
    opsets = {o.domain or "": o.version for o in float32.opset_import}
    g = GraphBuilder("refdiff_int8_float32_below", opset=opsets[""])
    (x_in, t_in), (y_out,) = float32.graph.input, float32.graph.output

    def dims(value: Any) -> tuple[str | int, ...]:
        return tuple(d.dim_param or d.dim_value for d in value.type.tensor_type.shape.dim)

    x = g.input(x_in.name, np.float32, dims(x_in))
    t = g.input(t_in.name, np.int64, dims(t_in))
    t_min = g.op("ReduceMin", t, keepdims=0)
    small = g.op("Less", t_min, g.const(np.int64(below), name="float32_below"))
    branches = []
    for name, model in (("float32", float32), ("int8", int8)):
        body = g.subgraph(f"{name}_network")
        net = body.add_model(model, prefix=name)
        body.output(body.call(net, **{x_in.name: x, t_in.name: t}), dtype=np.float32, shape=None)
        branches.append(body)
    out = g.op("If", small, then_branch=branches[0], else_branch=branches[1])
    g.output(out, y_out.name, dtype=np.float32, shape=dims(y_out))
    model = g.to_model(metadata={p.key: p.value for p in float32.metadata_props})
    onnx.checker.check_model(model, full_check=True)
    return model


def variant_error(
    reference: Any, variant: Any, *, images: int = 8, steps: int = 20, seed: int = 1
) -> float:
    """Relative RMS error ``‖f_variant − f_ref‖ / ‖f_ref‖`` of the whole output (all channels)
    over the reference's inputs along ``images`` DDPM trajectories of ``steps`` steps (every
    noise level; ``seed`` other than the calibration's). Two denoisers, e.g.
    :class:`refdiff.runtime.OnnxDenoiser`."""
    feeds = trajectory_inputs(reference, images=images, steps=steps, seed=seed)
    err = ref = 0.0
    for f in feeds:
        a = np.asarray(reference(f["x"], f["t"]), dtype=np.float64)
        b = np.asarray(variant(f["x"], f["t"]), dtype=np.float64)
        err += float(np.sum((b - a) ** 2))
        ref += float(np.sum(a * a))
    return math.sqrt(err / ref) if ref else math.inf


def check_variant(
    source: str | os.PathLike[str], path: str | os.PathLike[str]
) -> tuple[float, float]:
    """``(error, tolerance)``: :func:`variant_error` of the file at ``path`` against its float32
    ``source``, and :data:`TOLERANCES` for its precision."""
    from refdiff.runtime import OnnxDenoiser

    variant = OnnxDenoiser(path)
    err = variant_error(OnnxDenoiser(source), variant)
    return err, TOLERANCES.get(variant.precision, 0.0)


def _with_precision(meta: ModelMetadata, precision: Precision) -> ModelMetadata:
    import dataclasses

    return dataclasses.replace(meta, precision=precision)
