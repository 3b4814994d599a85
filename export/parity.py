"""The parity check of an exported file: onnxruntime against PyTorch on fresh inputs.

:func:`verify_onnx` runs the file in onnxruntime (CPU) against the PyTorch model on fresh random
inputs at several batch sizes and timesteps; it checks the metadata, the output names, then shapes,
then values (optimum's order), collects every failure into a :class:`ParityReport` (max absolute
and relative error per case) and raises :class:`ParityError` if any.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from refdiff._deps import require
from refdiff.onnx_contract import (
    INPUT_NAMES,
    METADATA_KEY,
    OUTPUT_NAME,
    MetadataError,
    ModelMetadata,
    check_onnx_file,
)

from .onnx_export import eval_mode, model_settings

__all__ = ["DEFAULT_TOLERANCES", "ParityCase", "ParityError", "ParityReport", "verify_onnx"]

#: Default (atol, rtol) per precision: ``|onnx - torch| <= atol + rtol |torch|`` everywhere.
DEFAULT_TOLERANCES: dict[str, tuple[float, float]] = {
    "float32": (1e-4, 1e-4),
    "float16": (2e-2, 2e-2),
    # Reduced-precision variants (refdiff.precision), per element on random inputs: loose; their
    # real measure is the drift harness (refdiff check FLOAT32.onnx --against VARIANT).
    "int8": (1.0, 1.0),
    "bfloat16": (0.2, 0.1),
}


@dataclass(frozen=True)
class ParityCase:
    """One comparison: a batch size and a timestep, one output.

    Attributes
    ----------
    batch_size : int
        The batch size of the inputs.
    timestep : int
        The timestep index given to every example.
    output : str
        The output's name.
    shape : tuple of int
        The output's shape from onnxruntime.
    max_abs, max_rel : float
        Largest absolute and relative difference from PyTorch.
    ok : bool
        Whether every element is within the tolerances.
    """

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

    Attributes
    ----------
    path : str
        The ONNX file.
    dtype : str
        Its weight dtype (``"float32"`` or ``"float16"``).
    atol, rtol : float
        The tolerances the cases were held to.
    cases : tuple of ParityCase
        Every comparison made.
    failures : tuple of str
        One line per failure; empty when the file passes.
    engine : str
        What ran the file: ``"onnxruntime CPU"``, or ``"OpenVINO CPU, bf16"`` for a bfloat16
        file.
    """

    path: str
    dtype: str
    atol: float
    rtol: float
    cases: tuple[ParityCase, ...]
    failures: tuple[str, ...] = field(default_factory=tuple)
    engine: str = "onnxruntime CPU"

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
            f"parity of {self.path} ({self.dtype}, {self.engine}) against PyTorch "
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
    progress: bool = False,
) -> ParityReport:
    """Compare the ONNX file at ``path`` (onnxruntime, CPU) with ``model`` (PyTorch, float32).

    Checks, in order, collecting every failure: the refdiff metadata (present, valid, describing
    this model), the input and output names, then per case the output shape and the values.

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
        Tolerances; default :data:`DEFAULT_TOLERANCES` for the file's precision.
    seed : int
        Seed of the random inputs x ~ N(0, I).
    raise_on_failure : bool
        Raise :class:`ParityError` if anything fails (default); otherwise just report.
    progress : bool
        Show a tqdm bar over the cases (batch size x timestep), with the time left, on stderr.

    Returns
    -------
    ParityReport
        Every case's largest absolute and relative error, and every failure found.
    """
    import onnxruntime as ort

    path = Path(path)
    check_onnx_file(path)
    try:
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime's own exception types
        raise ValueError(f"{str(path)!r} is not a readable ONNX model: {exc}") from None
    failures: list[str] = []
    cases: list[ParityCase] = []

    dtype, T, engine = "float32", None, None
    raw = session.get_modelmeta().custom_metadata_map.get(METADATA_KEY)
    try:
        meta = ModelMetadata.from_json(raw, source=str(path))
    except MetadataError as exc:
        failures.append(str(exc))
    else:
        dtype, T = meta.precision_name, meta.diffusion.num_timesteps
        if meta.precision is not None and meta.precision.engine == "openvino":
            from refdiff.runtime.openvino import OpenVinoEngine

            engine = OpenVinoEngine(path)
        config = model_settings(model, None)
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
        rep = ParityReport(
            str(path),
            dtype,
            atol,
            rtol,
            tuple(cases),
            tuple(failures),
            "onnxruntime CPU" if engine is None else "OpenVINO CPU, bf16",
        )
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
    tqdm = require("tqdm", "torch", "progress bars").tqdm
    n_cases = len(batch_sizes) * len(timesteps)
    bar = tqdm(total=n_cases, desc="parity", unit="case", disable=not progress, leave=False)
    with eval_mode(model), torch.no_grad(), bar:
        for b in batch_sizes:
            for ts in timesteps:
                bar.update(1)  # the case begins (its continues would skip a later update)
                x = rng.standard_normal((int(b), *chw)).astype(np.float32)
                t = np.full((int(b),), int(ts), dtype=np.int64)
                want = model(torch.from_numpy(x).to(dev), torch.from_numpy(t).to(dev))
                want = want.detach().float().cpu().numpy()
                try:
                    if engine is not None:
                        (got,) = engine.run(x, t)
                    else:
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
