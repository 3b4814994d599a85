"""PyTorch -> ONNX: export a denoiser with its diffusion settings, and check it against PyTorch.

:func:`export_onnx` writes one self-describing ``.onnx`` file (the contract of docs/onnx.md):

- inputs ``x`` (float32 [B, C, H, W]) and ``t`` (int64 [B], timestep indices of the model's own
  schedule), output ``model_output`` (float32 [B, C or 2C, H, W]), the batch dimension dynamic;
- the weights inside the file (refused above protobuf's 2 GB);
- ``metadata_props["refdiff"]``: the JSON of :class:`refdiff.runtime.ModelMetadata` (diffusion
  settings, U-Net settings, weight dtype, refdiff version);
- checked by ``onnx.checker`` (full check, with shape inference) before it replaces the target.

With ``fp16=True`` the weights and most arithmetic are float16 while the inputs and outputs stay
float32 (the runtime does not change), and so do the parts where float16 loses accuracy: group
normalisation (statistics and affine parameters), the attention softmax and the sinusoidal
timestep embedding (its arguments reach t ≈ 1000, far beyond float16's integer precision).

:func:`verify_onnx` runs the file in onnxruntime (CPU) against the PyTorch model on fresh random
inputs at several batch sizes and timesteps; it checks output names, then shapes, then values,
collects every failure into a :class:`ParityReport` and raises :class:`ParityError` if any.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import math
import os
import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from refdiff import __version__
from refdiff.config import DiffusionConfig
from refdiff.runtime.session import (
    INPUT_NAMES,
    METADATA_KEY,
    OUTPUT_NAME,
    MetadataError,
    ModelMetadata,
)

__all__ = [
    "DEFAULT_TOLERANCES",
    "MAX_MODEL_BYTES",
    "ParityCase",
    "ParityError",
    "ParityReport",
    "export_onnx",
    "verify_onnx",
]

#: A single-file ONNX model is one protobuf message, which cannot exceed 2 GiB.
MAX_MODEL_BYTES = 2**31 - 1
#: Default (atol, rtol) per weight dtype: |onnx - torch| <= atol + rtol |torch| everywhere.
DEFAULT_TOLERANCES: dict[str, tuple[float, float]] = {
    "float32": (1e-4, 1e-4),
    "float16": (2e-2, 2e-2),
}
MIN_OPSET = 18


# ------------------------------------------------------------------------------------------
# Export
# ------------------------------------------------------------------------------------------


class _Float16Model(nn.Module):
    """A float16 copy of a model behind float32 inputs and outputs.

    GroupNorm32 layers (refdiff's U-Net normalises in float32 whatever its input dtype) keep
    float32 affine parameters; the U-Net already computes its timestep embedding and attention
    softmax in float32.
    """

    def __init__(self, model: nn.Module):
        super().__init__()
        from refdiff.nn.unet import GroupNorm32

        self.inner = copy.deepcopy(model).half()
        for module in self.inner.modules():
            if isinstance(module, GroupNorm32):
                module.float()

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self.inner(x.to(torch.float16), t).to(torch.float32)


def _model_config(model: nn.Module, model_config: Mapping[str, Any] | None) -> dict[str, Any]:
    if model_config is not None:
        if not isinstance(model_config, Mapping):
            raise TypeError(f"model_config must be a dict, got {type(model_config).__name__}")
        return dict(model_config)
    cfg = getattr(model, "config", None)
    to_dict = getattr(cfg, "to_dict", None)
    return dict(to_dict()) if callable(to_dict) else {}


def _check_consistent(model_config: Mapping[str, Any], diffusion: DiffusionConfig) -> None:
    c, h, w = diffusion.image_shape
    learned = diffusion.out_channels == 2 * c
    if "in_channels" in model_config and model_config["in_channels"] != c:
        raise ValueError(
            f"the model takes in_channels={model_config['in_channels']} but the diffusion "
            f"config's image_shape is {list(diffusion.image_shape)}"
        )
    if "image_size" in model_config and model_config["image_size"] not in (h, w):
        raise ValueError(
            f"the model takes image_size={model_config['image_size']} but the diffusion "
            f"config's image_shape is {list(diffusion.image_shape)}"
        )
    if "learn_sigma" in model_config and bool(model_config["learn_sigma"]) != learned:
        raise ValueError(
            f"the model has learn_sigma={model_config['learn_sigma']} but the diffusion config's "
            f"variance is {diffusion.variance!r} ({'learned' if learned else 'fixed'})"
        )


def _model_bytes(model: nn.Module, fp16: bool) -> int:
    total = 0
    for tensor in [*model.parameters(), *model.buffers()]:
        size = 2 if fp16 and tensor.is_floating_point() else tensor.element_size()
        total += tensor.numel() * size
    return total


@contextlib.contextmanager
def _quiet_exporter() -> Iterator[None]:
    """Silence the exporter's known noise (not errors): a torch-internal deprecation warning and
    log lines about torchvision operators refdiff does not use."""
    logger = logging.getLogger("torch.onnx._internal.exporter._registration")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=r".*LeafSpec.*", category=FutureWarning)
            yield
    finally:
        logger.setLevel(level)


@contextlib.contextmanager
def _eval_mode(model: nn.Module) -> Iterator[None]:
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


def _rename_batch_dim(model_proto: Any, name: str = "batch") -> None:
    """Give the dynamic batch dimension a readable name (the exporter calls it s0, s13, ...)."""
    graph = model_proto.graph
    first = graph.input[0].type.tensor_type.shape.dim[0]
    old = first.dim_param
    if not old:
        return
    for value in [*graph.input, *graph.output, *graph.value_info]:
        for dim in value.type.tensor_type.shape.dim:
            if dim.dim_param == old:
                dim.dim_param = name


def _strip_debug_info(model_proto: Any) -> None:
    """Drop the exporter's per-node debugging metadata (Python stack traces with the exporting
    machine's file paths, FX node dumps): it is most of a small model's file and no part of the
    contract."""
    for node in model_proto.graph.node:
        del node.metadata_props[:]
        node.doc_string = ""


def export_onnx(
    model: nn.Module,
    diffusion: DiffusionConfig,
    path: str | os.PathLike[str],
    *,
    opset: int = 18,
    fp16: bool = False,
    model_config: Mapping[str, Any] | None = None,
) -> Path:
    """Export ``model`` (a denoiser ``(x, t) -> model_output``) to one self-describing ONNX file.

    Parameters
    ----------
    model : torch.nn.Module
        The denoiser, float32 (e.g. from ``refdiff.training.checkpoint.load_model``). It is put in
        eval mode for the export and restored afterwards; it is not modified.
    diffusion : DiffusionConfig
        Its diffusion settings; stored in the metadata and checked against the model's output.
    path : str or PathLike
        Where to write the ``.onnx`` file (replaced only once the new file passes the checker).
    opset : int
        ONNX opset, 18 or later.
    fp16 : bool
        Float16 weights and arithmetic (float32 I/O, normalisation, softmax, timestep embedding).
    model_config : dict, optional
        The network's settings for the metadata; default ``model.config.to_dict()`` if present.

    Returns
    -------
    pathlib.Path
        ``path``.

    Raises
    ------
    ValueError
        Inconsistent model and diffusion settings, a model of 2 GB or more, an opset below 18.
    TypeError
        A model that is not a float32 ``torch.nn.Module`` or a diffusion that is not a
        :class:`DiffusionConfig`.
    """
    import onnx

    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if not isinstance(diffusion, DiffusionConfig):
        raise TypeError(f"diffusion must be a DiffusionConfig, got {type(diffusion).__name__}")
    if isinstance(opset, bool) or not isinstance(opset, int) or opset < MIN_OPSET:
        raise ValueError(f"opset must be an int >= {MIN_OPSET}, got {opset!r}")
    floating = {p.dtype for p in model.parameters() if p.is_floating_point()}
    if floating - {torch.float32}:
        raise TypeError(
            f"export takes a float32 model, got parameters of dtype {sorted(map(str, floating))}; "
            "pass fp16=True for a float16 export of the float32 model"
        )
    path = Path(path)
    if path.is_dir():
        raise ValueError(
            f"output path {str(path)!r} is a directory; give a file name like model.onnx"
        )
    if not path.parent.is_dir():
        raise FileNotFoundError(
            f"cannot write {str(path)!r}: folder {str(path.parent)!r} does not exist"
        )
    config = _model_config(model, model_config)
    _check_consistent(config, diffusion)
    nbytes = _model_bytes(model, fp16)
    if nbytes >= MAX_MODEL_BYTES:
        raise ValueError(
            f"the model's weights take {nbytes / 2**30:.2f} GiB; a single-file ONNX model must stay "
            "below 2 GiB (protobuf's limit). Export with fp16=True, or use a smaller model"
        )

    c, h, w = diffusion.image_shape
    T = diffusion.build_schedule().num_timesteps
    dev = next(iter(model.parameters()), torch.empty(0)).device
    x = torch.randn(2, c, h, w, device=dev)
    t = torch.tensor([0, T - 1], dtype=torch.int64, device=dev)
    with _eval_mode(model), torch.no_grad():
        out = model(x, t)
        want = (2, diffusion.out_channels, h, w)
        if tuple(out.shape) != want:
            raise ValueError(
                f"the model outputs shape {tuple(out.shape)} for x of shape {tuple(x.shape)}; the "
                f"diffusion config ({diffusion.variance!r} variance) needs {want}"
            )
        module = _Float16Model(model).eval() if fp16 else model
        batch = torch.export.Dim.DYNAMIC
        with _quiet_exporter():
            program = torch.onnx.export(
                module,
                (x, t),
                dynamo=True,
                input_names=list(INPUT_NAMES),
                output_names=[OUTPUT_NAME],
                dynamic_shapes={"x": {0: batch}, "t": {0: batch}},
                opset_version=opset,
                external_data=False,
                optimize=True,
                verbose=False,
            )
    proto = program.model_proto
    _rename_batch_dim(proto)
    _strip_debug_info(proto)
    meta = ModelMetadata(
        diffusion=diffusion,
        model=config,
        dtype="float16" if fp16 else "float32",
        refdiff_version=__version__,
    )
    for i in reversed(range(len(proto.metadata_props))):
        if proto.metadata_props[i].key == METADATA_KEY:
            del proto.metadata_props[i]
    entry = proto.metadata_props.add()
    entry.key, entry.value = METADATA_KEY, meta.to_json()
    proto.doc_string = (
        f"refdiff {__version__} denoiser: x [B,{c},{h},{w}] float32, t [B] int64 -> "
        f"{OUTPUT_NAME} [B,{diffusion.out_channels},{h},{w}] float32"
    )
    size = proto.ByteSize()
    if size >= MAX_MODEL_BYTES:
        raise ValueError(f"the exported model is {size / 2**30:.2f} GiB; it must stay below 2 GiB")
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        onnx.save_model(proto, str(tmp))
        onnx.checker.check_model(str(tmp), full_check=True)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


# ------------------------------------------------------------------------------------------
# Verification
# ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ParityCase:
    """One comparison: a batch size and a timestep, one output."""

    batch_size: int
    timestep: int
    output: str
    shape: tuple[int, ...]
    max_abs: float
    max_rel: float
    ok: bool


@dataclass(frozen=True)
class ParityReport:
    """onnxruntime against PyTorch, per case, and every failure found.

    ``max_rel`` is ``max |onnx - torch| / (|torch| + atol)``: relative error, with ``atol`` as the
    floor of the denominator so that outputs near zero do not dominate. A case passes when
    ``|onnx - torch| <= atol + rtol |torch|`` everywhere (``numpy.allclose``).
    """

    path: str
    dtype: str
    atol: float
    rtol: float
    cases: tuple[ParityCase, ...]
    failures: tuple[str, ...] = field(default_factory=tuple)

    @property
    def ok(self) -> bool:
        return not self.failures

    @property
    def max_abs(self) -> float:
        return max((c.max_abs for c in self.cases), default=math.nan)

    @property
    def max_rel(self) -> float:
        return max((c.max_rel for c in self.cases), default=math.nan)

    def table(self) -> str:
        lines = [
            f"parity of {self.path} ({self.dtype} weights, onnxruntime CPU) against PyTorch "
            f"float32; tolerance |diff| <= {self.atol:g} + {self.rtol:g} |torch|",
            f"{'batch':>5}  {'t':>6}  {'output':<14} {'shape':<18} {'max abs':>10}  "
            f"{'max rel':>10}  ok",
        ]
        for c in self.cases:
            shape = "[" + ",".join(map(str, c.shape)) + "]"
            lines.append(
                f"{c.batch_size:>5}  {c.timestep:>6}  {c.output:<14} {shape:<18} "
                f"{c.max_abs:>10.3g}  {c.max_rel:>10.3g}  {'yes' if c.ok else 'NO'}"
            )
        if self.ok:
            lines.append(
                f"PASS: {len(self.cases)} cases, max abs {self.max_abs:.3g}, "
                f"max rel {self.max_rel:.3g}"
            )
        else:
            lines.append(f"FAIL: {len(self.failures)} problem(s):")
            lines.extend(f"  - {f}" for f in self.failures)
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.table()


class ParityError(ValueError):
    """The exported model disagrees with PyTorch (names, shapes or values); ``.report`` has all."""

    def __init__(self, report: ParityReport):
        self.report = report
        super().__init__(
            f"{report.path} does not match the PyTorch model: " + "; ".join(report.failures)
        )


def verify_onnx(
    model: nn.Module,
    path: str | os.PathLike[str],
    *,
    batch_sizes: Sequence[int] = (1, 3),
    timesteps: Sequence[int] | None = None,
    atol: float | None = None,
    rtol: float | None = None,
    seed: int = 0,
    raise_on_failure: bool = True,
) -> ParityReport:
    """Compare the ONNX file at ``path`` (onnxruntime, CPU) with ``model`` (PyTorch, float32).

    Parameters
    ----------
    model : torch.nn.Module
        The float32 PyTorch model the file was exported from (the reference, also for a float16
        export: the report then measures the float16 error against float32).
    path : str or PathLike
        The ONNX file.
    batch_sizes : sequence of int
        Batch sizes to run (the batch dimension is dynamic).
    timesteps : sequence of int, optional
        Timestep indices; default ``(0, T // 2, T - 1)`` with T from the file's metadata.
    atol, rtol : float, optional
        Tolerances; default :data:`DEFAULT_TOLERANCES` for the file's weight dtype.
    seed : int
        Seed of the random inputs x ~ N(0, I).
    raise_on_failure : bool
        Raise :class:`ParityError` if anything fails (default); otherwise just report.

    Checks, in order, collecting every failure: the refdiff metadata (present, valid, describing
    this model), the input and output names, then per case the output shape and the values.
    """
    import onnxruntime as ort

    from refdiff.runtime.session import _check_file

    path = Path(path)
    _check_file(path)
    try:
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime's own exception types
        raise ValueError(f"{str(path)!r} is not a readable ONNX model: {exc}") from None
    failures: list[str] = []
    cases: list[ParityCase] = []

    dtype, T = "float32", None
    raw = session.get_modelmeta().custom_metadata_map.get(METADATA_KEY)
    try:
        meta = ModelMetadata.from_json(raw, source=str(path))
    except MetadataError as exc:
        failures.append(str(exc))
    else:
        dtype, T = meta.dtype, meta.diffusion.build_schedule().num_timesteps
        config = _model_config(model, None)
        if config and meta.model and config != meta.model:
            diff = sorted(
                k for k in set(config) | set(meta.model) if config.get(k) != meta.model.get(k)
            )
            failures.append(
                f"the metadata describes another model configuration (differs in {diff})"
            )
    default_atol, default_rtol = DEFAULT_TOLERANCES[dtype]
    atol = default_atol if atol is None else float(atol)
    rtol = default_rtol if rtol is None else float(rtol)
    if timesteps is None:
        timesteps = (0,) if T is None else tuple(sorted({0, T // 2, T - 1}))

    def report() -> ParityReport:
        rep = ParityReport(str(path), dtype, atol, rtol, tuple(cases), tuple(failures))
        if failures and raise_on_failure:
            raise ParityError(rep)
        return rep

    inputs = {i.name: i for i in session.get_inputs()}
    outputs = [o.name for o in session.get_outputs()]
    if outputs != [OUTPUT_NAME]:
        failures.append(f"the graph's outputs are {outputs}, expected [{OUTPUT_NAME!r}]")
    if sorted(inputs) != sorted(INPUT_NAMES):
        failures.append(f"the graph's inputs are {sorted(inputs)}, expected {list(INPUT_NAMES)}")
    if failures and (outputs != [OUTPUT_NAME] or sorted(inputs) != sorted(INPUT_NAMES)):
        return report()  # cannot feed or read the graph

    x_shape = inputs["x"].shape
    chw = tuple(int(s) for s in x_shape[1:] if isinstance(s, int))
    if len(chw) != 3:
        failures.append(
            f"graph input x has shape {x_shape}; expected [B, C, H, W] with fixed C, H, W"
        )
        return report()
    rng = np.random.default_rng(seed)
    dev = next(iter(model.parameters()), torch.empty(0)).device
    with _eval_mode(model), torch.no_grad():
        for b in batch_sizes:
            for ts in timesteps:
                x = rng.standard_normal((int(b), *chw)).astype(np.float32)
                t = np.full((int(b),), int(ts), dtype=np.int64)
                want = model(torch.from_numpy(x).to(dev), torch.from_numpy(t).to(dev))
                want = want.detach().float().cpu().numpy()
                try:
                    (got,) = session.run([OUTPUT_NAME], {"x": x, "t": t})
                except Exception as exc:  # onnxruntime's own exception types
                    failures.append(f"batch {b}, t {ts}: onnxruntime failed: {exc}")
                    continue
                if got.shape != want.shape:
                    failures.append(
                        f"batch {b}, t {ts}: output shape {list(got.shape)}, PyTorch gives "
                        f"{list(want.shape)}"
                    )
                    continue
                diff = np.abs(got.astype(np.float64) - want.astype(np.float64))
                finite = bool(np.all(np.isfinite(got)))
                max_abs = float(diff.max()) if finite else math.inf
                max_rel = float((diff / (np.abs(want) + atol)).max()) if finite else math.inf
                ok = finite and bool(np.all(diff <= atol + rtol * np.abs(want)))
                cases.append(
                    ParityCase(int(b), int(ts), OUTPUT_NAME, got.shape, max_abs, max_rel, ok)
                )
                if not ok:
                    what = "non-finite values" if not finite else f"max abs error {max_abs:.3g}"
                    failures.append(
                        f"batch {b}, t {ts}: {what} above tolerance (atol {atol:g}, rtol {rtol:g})"
                    )
    return report()
