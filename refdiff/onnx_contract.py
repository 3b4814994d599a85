"""The ONNX file contract of a refdiff denoiser: names, metadata, and their checks.

One ``.onnx`` file holds everything sampling needs (docs/onnx.md):

- inputs ``x`` (float32 [B, C, H, W]) and ``t`` (int64 [B], timestep indices of the model's own
  schedule), output ``model_output`` (float32 [B, C or 2C, H, W]), the batch dimension dynamic;
- ``metadata_props["refdiff"]``: the JSON of :class:`ModelMetadata`, whose ``diffusion`` entry is
  :meth:`refdiff.Diffusion.to_dict` (schedule, prediction, variance, image shape, data range,
  clipping, decoder, levels), plus the network's own settings, the weights' dtype and the refdiff
  version that wrote it.

The exporter (:mod:`refdiff.export`, PyTorch) writes files to this contract and the runtime
(:mod:`refdiff.runtime`, no PyTorch) reads them; both import it from here. No onnx, onnxruntime or
torch is imported by this module.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .precision import Precision
from .settings import Diffusion

__all__ = [
    "FORMAT_VERSION",
    "GENERATOR_FORMAT",
    "GENERATOR_INPUTS",
    "GENERATOR_KINDS",
    "GENERATOR_OUTPUTS",
    "INPUT_NAMES",
    "METADATA_KEY",
    "OUTPUT_NAME",
    "STEP_INPUTS",
    "STEP_OUTPUTS",
    "WEIGHT_DTYPES",
    "WEIGHT_KINDS",
    "GeneratorMetadata",
    "MetadataError",
    "ModelMetadata",
    "NotADenoiserError",
    "check_graph",
    "check_onnx_file",
    "file_kind",
    "read_metadata_props",
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
#: Which weights of a refdiff checkpoint a file holds: the exponential moving average or the raw
#: (last optimiser step) weights. Files of other models, and files exported before refdiff
#: recorded it, have no ``weights`` entry.
WEIGHT_KINDS = ("ema", "raw")

_EXPORT_HINT = (
    "export it with `refdiff export CHECKPOINT --out model.onnx` (or "
    "refdiff.export.export_onnx), which writes the metadata sampling needs"
)


class MetadataError(ValueError):
    """The model's refdiff metadata is missing, malformed or contradicts the graph."""


class NotADenoiserError(MetadataError):
    """A refdiff generator or step file where a denoiser was expected; ``kind`` says which."""

    def __init__(self, message: str, kind: str) -> None:
        super().__init__(message)
        self.kind = kind


@dataclass(frozen=True)
class ModelMetadata:
    """The JSON stored under :data:`METADATA_KEY` in an exported model's ``metadata_props``.

    Attributes
    ----------
    diffusion : Diffusion
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
    precision : Precision or None
        A reduced-precision variant (int8, bfloat16: :mod:`refdiff.precision`); None for the
        files ``refdiff export`` writes by default and for files older than the entry, whose
        precision is their ``dtype`` (:attr:`precision_name`).
    weights : str or None
        ``"ema"`` or ``"raw"``: which weights of a refdiff checkpoint the file holds
        (:data:`WEIGHT_KINDS`); None where it does not apply or was not recorded.
    """

    diffusion: Diffusion
    model: dict[str, Any] = field(default_factory=dict)
    dtype: str = "float32"
    refdiff_version: str = ""
    input_names: tuple[str, ...] = INPUT_NAMES
    output_name: str = OUTPUT_NAME
    format: int = FORMAT_VERSION
    precision: Precision | None = None
    weights: str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.diffusion, Diffusion):
            raise TypeError(f"diffusion must be a Diffusion, got {type(self.diffusion).__name__}")
        if self.precision is not None and not isinstance(self.precision, Precision):
            raise TypeError(f"precision must be a Precision, got {self.precision!r}")
        if self.dtype not in WEIGHT_DTYPES:
            raise ValueError(f"dtype must be one of {WEIGHT_DTYPES}, got {self.dtype!r}")
        if self.weights is not None and self.weights not in WEIGHT_KINDS:
            raise ValueError(f"weights must be one of {WEIGHT_KINDS} or None, got {self.weights!r}")
        object.__setattr__(self, "input_names", tuple(self.input_names))
        object.__setattr__(self, "model", dict(self.model))

    @property
    def precision_name(self) -> str:
        """``float32``, ``float16``, ``int8`` or ``bfloat16`` (:data:`refdiff.precision.PRECISIONS`)."""
        return self.dtype if self.precision is None else self.precision.name

    def to_dict(self) -> dict[str, Any]:
        extra: dict[str, Any] = {}
        if self.precision is not None:
            extra["precision"] = self.precision.to_dict()
        if self.weights is not None:
            extra["weights"] = self.weights
        return {
            **extra,
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
        d = _json_object(text, source, f", so its diffusion settings are unknown; {_EXPORT_HINT}")
        if d.get("kind") in GENERATOR_KINDS:
            raise NotADenoiserError(
                f"{source} is a refdiff {d['kind']} file (a whole sampler, seed in, images out), "
                "not a denoiser: sample from it with `refdiff sample FILE`, or give the denoiser "
                "file it was built from",
                d["kind"],
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
        known = {*required, "format", "refdiff_version", "precision", "weights"}
        unknown = sorted(set(d) - known)
        if unknown:
            raise MetadataError(f"{source}: unknown refdiff metadata keys {unknown}")
        try:
            diffusion = Diffusion.from_dict(d["diffusion"])
        except (TypeError, ValueError) as exc:
            raise MetadataError(
                f"{source}: invalid diffusion settings in the metadata: {exc}"
            ) from None
        if not isinstance(d["model"], Mapping):
            raise MetadataError(f"{source}: metadata 'model' must be an object, got {d['model']!r}")
        try:
            precision = None if "precision" not in d else Precision.from_dict(d["precision"])
        except (TypeError, ValueError) as exc:
            raise MetadataError(f"{source}: invalid precision in the metadata: {exc}") from None
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
                precision=precision,
                weights=d.get("weights"),
            )
        except (TypeError, ValueError) as exc:
            raise MetadataError(f"{source}: {exc}") from None


def check_onnx_file(path: Path) -> None:
    """Refuse a path that is missing, not a file, or empty, before onnxruntime sees it."""
    if not path.exists():
        raise FileNotFoundError(f"ONNX model {str(path)!r} does not exist")
    if not path.is_file():
        raise ValueError(f"ONNX model {str(path)!r} is not a file")
    if path.stat().st_size == 0:
        raise ValueError(f"ONNX model {str(path)!r} is empty")


def check_graph(meta: ModelMetadata, inputs: Any, outputs: Any, *, source: str) -> None:
    """Refuse metadata that contradicts the graph: names, dtypes, ranks, C/H/W, 2C outputs.

    ``inputs`` and ``outputs`` describe the graph's arguments as onnxruntime does
    (``session.get_inputs()``: objects with ``name``, ``type`` and ``shape``).
    """
    d = meta.diffusion
    inputs = {i.name: i for i in inputs}
    outputs = {o.name: o for o in outputs}
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
                f"metadata's variance {d.variance.value!r} is fixed (expects C = {c})"
            )
        elif out_c == c and d.out_channels == 2 * c:
            why = (
                f"the metadata's variance {d.variance.value!r} is learned (expects 2C = {2 * c} "
                f"channels) but the graph outputs C = {c}"
            )
        else:
            why = f"the graph outputs {out_c} channels, the metadata implies {d.out_channels}"
        raise MetadataError(f"{source}: inconsistent metadata: {why}")
    model = meta.model
    for key, size in (("in_channels", c), ("image_size", h)):
        if key in model and model[key] != size:
            raise MetadataError(
                f"{source}: metadata model.{key} = {model[key]!r} contradicts the diffusion "
                f"image_shape {list(d.image_shape)}"
            )
    if "learn_sigma" in model and bool(model["learn_sigma"]) != (d.out_channels == 2 * c):
        raise MetadataError(
            f"{source}: metadata model.learn_sigma = {model['learn_sigma']!r} contradicts the "
            f"diffusion variance {d.variance.value!r}"
        )


# -- generator files: a whole sampler in one graph ------------------------------------------------

#: ``kind`` of the metadata of a generator file and of its step file (a denoiser's has none).
GENERATOR_KINDS = ("generator", "step")
#: Version of the generator metadata's layout.
GENERATOR_FORMAT = 1
#: A generator's inputs: ``seed`` int64 [], ``sample_indices`` int64 [B]; optional (overridable,
#: empty by default) ``x_T`` float32 [B, C, H, W] and, for a stochastic sampler, ``noise``
#: float32 [N, B, C, H, W] (step k's noise).
GENERATOR_INPUTS = ("seed", "sample_indices", "x_T", "noise")
#: A generator's outputs: ``samples`` float32 [B, C, H, W] (what the Python sampler returns) and
#: ``images`` uint8 [B, C, H, W] (:func:`refdiff.runtime.to_uint8` of them).
GENERATOR_OUTPUTS = ("samples", "images")
#: A step file's inputs: ``seed``, ``sample_indices``, ``step`` int64 [] (-1: start), ``x``
#: float32 [B, C, H, W] and ``history`` float32 [H, B, C, H, W] (the last H predictions of x_0).
STEP_INPUTS = ("seed", "sample_indices", "step", "x", "history")
#: A step file's outputs: ``x_next``, ``history_next`` and ``pred_x0`` (this step's x̂_0).
STEP_OUTPUTS = ("x_next", "history_next", "pred_x0")


@dataclass(frozen=True)
class GeneratorMetadata:
    """The JSON under :data:`METADATA_KEY` in a generator or step file.

    Attributes
    ----------
    kind : {"generator", "step"}
    diffusion : Diffusion
        The settings of the model inside.
    sampler : dict
        The sampler choice (:meth:`refdiff.SamplerChoice.to_dict`: sampler, steps, spacing,
        options).
    plan : dict
        The plan whose tables the graph holds (:meth:`refdiff.Plan.to_dict`), for ports.
    denoiser : dict
        The embedded denoiser's own metadata (its network settings and weight dtype).
    graph : str
        How the loop is laid out: ``"loop"`` (an ONNX Loop), ``"unrolled"`` or ``"step"``.
    refdiff_version : str
    format : int
    """

    kind: str
    diffusion: Diffusion
    sampler: dict[str, Any]
    plan: dict[str, Any]
    denoiser: dict[str, Any] = field(default_factory=dict)
    graph: str = "loop"
    refdiff_version: str = ""
    format: int = GENERATOR_FORMAT

    def __post_init__(self) -> None:
        if self.kind not in GENERATOR_KINDS:
            raise ValueError(f"kind must be one of {GENERATOR_KINDS}, got {self.kind!r}")
        if not isinstance(self.diffusion, Diffusion):
            raise TypeError(f"diffusion must be a Diffusion, got {type(self.diffusion).__name__}")
        if self.graph not in ("loop", "unrolled", "step"):
            raise ValueError(f"graph must be 'loop', 'unrolled' or 'step', got {self.graph!r}")

    @property
    def stochastic(self) -> bool:
        """Whether the sampler draws noise after x_T (the file then has a ``noise`` input)."""
        return any(float(v) != 0.0 for v in self.plan.get("noise_coef", ()))

    @property
    def steps(self) -> int:
        return int(self.sampler["steps"])

    def describe(self) -> str:
        """``generator: dpmpp_2m, 10 steps (even spacing); loop; float32 denoiser``."""
        s = self.sampler
        opts = "".join(f", {k}={v}" for k, v in s.get("options", {}).items())
        precision = self.denoiser.get("precision")
        dtype = precision["name"] if precision else self.denoiser.get("dtype", "float32")
        return (
            f"{self.kind}: {s['sampler']}, {s['steps']} steps ({s['spacing']} spacing{opts}); "
            f"{self.graph}; {dtype} denoiser"
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": self.format,
            "kind": self.kind,
            "refdiff_version": self.refdiff_version,
            "diffusion": self.diffusion.to_dict(),
            "sampler": dict(self.sampler),
            "plan": dict(self.plan),
            "denoiser": dict(self.denoiser),
            "graph": self.graph,
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_json(cls, text: str | None, *, source: str = "the file") -> GeneratorMetadata:
        """Parse and validate a generator's metadata; every problem is a :class:`MetadataError`."""
        d = _json_object(text, source)
        if d.get("kind") not in GENERATOR_KINDS:
            raise MetadataError(
                f"{source} is not a refdiff generator file (its metadata has kind "
                f"{d.get('kind')!r}); write one with `refdiff export MODEL --out gen.onnx "
                "--sampler NAME --steps N`"
            )
        if d.get("format") != GENERATOR_FORMAT:
            raise MetadataError(
                f"{source}: generator metadata format {d.get('format')!r} is not supported "
                f"(this refdiff reads format {GENERATOR_FORMAT}); rebuild the file"
            )
        required = ("diffusion", "sampler", "plan", "denoiser", "graph")
        missing = [k for k in required if k not in d]
        if missing:
            raise MetadataError(f"{source}: the generator metadata lacks the keys {missing}")
        try:
            return cls(
                kind=d["kind"],
                diffusion=Diffusion.from_dict(d["diffusion"]),
                sampler=dict(d["sampler"]),
                plan=dict(d["plan"]),
                denoiser=dict(d["denoiser"]),
                graph=str(d["graph"]),
                refdiff_version=str(d.get("refdiff_version", "")),
                format=d["format"],
            )
        except (TypeError, ValueError, KeyError) as exc:
            raise MetadataError(f"{source}: invalid generator metadata: {exc}") from None


def _json_object(text: str | None, source: str, missing: str = "") -> Mapping[str, Any]:
    """The refdiff metadata JSON of ``source`` as a mapping; ``missing`` ends the message when
    there is none."""
    if text is None:
        raise MetadataError(
            f"{source} lacks refdiff metadata (no {METADATA_KEY!r} entry in its "
            f"metadata_props){missing}"
        )
    try:
        d = json.loads(text)
    except json.JSONDecodeError as exc:
        raise MetadataError(f"{source}: the refdiff metadata is not valid JSON: {exc}") from None
    if not isinstance(d, Mapping):
        raise MetadataError(
            f"{source}: the refdiff metadata must be a JSON object, got {type(d).__name__}"
        )
    return d


def file_kind(text: str | None) -> str:
    """``"denoiser"``, ``"generator"`` or ``"step"`` for the metadata JSON of a refdiff file
    (``"denoiser"`` too when there is none or it is unreadable: the denoiser's reader then says
    what is wrong)."""
    try:
        d = json.loads(text) if text is not None else {}
    except json.JSONDecodeError:
        return "denoiser"
    kind = d.get("kind") if isinstance(d, Mapping) else None
    return kind if kind in GENERATOR_KINDS else "denoiser"


def _varint(data: Any, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if pos >= len(data) or shift > 63:
            raise ValueError("truncated varint")
        b = data[pos]
        pos += 1
        value |= (b & 0x7F) << shift
        shift += 7
        if not b & 0x80:
            return value, pos


def _fields(data: Any, pos: int = 0, end: int | None = None) -> Any:
    """(field number, start, stop) of each length-delimited field of the protobuf message in
    ``data[pos:end]``; other wire types are skipped. Nothing is copied."""
    end = len(data) if end is None else end
    while pos < end:
        tag, pos = _varint(data, pos)
        wire = tag & 7
        if wire == 0:
            _, pos = _varint(data, pos)
        elif wire == 1:
            pos += 8
        elif wire == 5:
            pos += 4
        elif wire == 2:
            size, pos = _varint(data, pos)
            if pos + size > end:
                raise ValueError("truncated field")
            yield tag >> 3, pos, pos + size
            pos += size
        else:
            raise ValueError(f"unknown wire type {wire}")


def read_metadata_props(path: str | Path) -> dict[str, str]:
    """The ``metadata_props`` of an ONNX file, read from its protobuf without parsing the graph
    (no onnx, no onnxruntime; the weights are skipped, not decoded). An unreadable file gives an
    empty mapping: onnxruntime then says what is wrong with it."""
    import mmap

    out: dict[str, str] = {}
    try:
        with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as m:
            for number, start, stop in _fields(m):
                if number != 14:  # ModelProto.metadata_props: (key = 1, value = 2) entries
                    continue
                entry = {k: m[a:b].decode("utf-8") for k, a, b in _fields(m, start, stop)}
                if 1 in entry:
                    out[entry[1]] = entry.get(2, "")
    except (OSError, ValueError, UnicodeDecodeError):
        return {}
    return out
