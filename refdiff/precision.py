"""The arithmetic precision of an exported denoiser: a property of the file, named in its metadata.

A refdiff ONNX file is the float32 graph that ``refdiff export`` writes, or one of its
reduced-precision variants (docs/precision.md):

========== =============================================== ==================================
name       what the file holds                             engine that runs it
========== =============================================== ==================================
float32    float32 weights and arithmetic                  onnxruntime (CPU or CUDA)
float16    float16 weights and arithmetic, float32 I/O,    onnxruntime (GPUs; slow on CPUs)
           normalisations, softmax, timestep embedding
int8       static QDQ: int8 weights (per channel) and      onnxruntime (CPU: VNNI integer
           uint8 activations around the convolutions and   kernels)
           matrix products, calibrated on the model's own
           inputs along sampling trajectories
bfloat16   the float32 graph, run with bfloat16            OpenVINO's CPU plugin
           arithmetic (inference precision hint)           (``pip install "refdiff[openvino]"``)
========== =============================================== ==================================

:class:`Precision` is what the metadata's ``"precision"`` entry holds. Files written before it
existed have no such entry: their precision is their weight ``dtype`` (float32 or float16).

Nothing heavy is imported here: no onnx, onnxruntime, OpenVINO or torch.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ._checks import check_int

__all__ = ["ENGINES", "PRECISIONS", "Precision"]

#: The precision names, and the engine each runs on.
ENGINES: dict[str, str] = {
    "float32": "onnxruntime",
    "float16": "onnxruntime",
    "int8": "onnxruntime",
    "bfloat16": "openvino",
}
PRECISIONS: tuple[str, ...] = tuple(ENGINES)


@dataclass(frozen=True)
class Precision:
    """How a file computes: its precision name, the engine, what stays float32, how it was made.

    Attributes
    ----------
    name : str
        One of :data:`PRECISIONS`.
    float32 : tuple of str
        The parts of the network kept in float32 (e.g. ``"group normalisation"``,
        ``"timestep embedding"``), as the exporter chose them; for the record.
    calibration : dict
        For ``int8``: how the activation ranges were calibrated (sampler, steps, images, calls,
        method). Empty otherwise.
    source : str
        The float32 file the variant was made from (its file name), for the record.
    float32_below : int
        For ``int8``: calls whose timesteps are all at least this run the int8 network, the
        others the float32 network the file also holds (an ONNX ``If`` on ``min(t)``); 0 (the
        default): every call is int8.
    """

    name: str
    float32: tuple[str, ...] = ()
    calibration: dict[str, Any] = field(default_factory=dict)
    source: str = ""
    float32_below: int = 0

    def __post_init__(self) -> None:
        if self.name not in ENGINES:
            raise ValueError(f"precision must be one of {list(PRECISIONS)}, got {self.name!r}")
        if isinstance(self.float32, str) or not all(isinstance(s, str) for s in self.float32):
            raise TypeError(f"float32 must be a list of names, got {self.float32!r}")
        if not isinstance(self.calibration, Mapping):
            raise TypeError(f"calibration must be a mapping, got {self.calibration!r}")
        below = check_int(self.float32_below, "float32_below", minimum=0)
        if below and self.name != "int8":
            raise ValueError(f"float32_below applies to int8 files, not to {self.name}")
        object.__setattr__(self, "float32_below", below)
        object.__setattr__(self, "float32", tuple(self.float32))
        object.__setattr__(self, "calibration", dict(self.calibration))

    @property
    def engine(self) -> str:
        """``"onnxruntime"`` or ``"openvino"``: what runs a file of this precision."""
        return ENGINES[self.name]

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "name": self.name,
            "float32": list(self.float32),
            "calibration": dict(self.calibration),
            "source": self.source,
        }
        if self.float32_below:  # absent when 0: the files written before it read the same
            d["float32_below"] = self.float32_below
        return d

    @classmethod
    def from_dict(cls, d: Any) -> Precision:
        """The inverse of :meth:`to_dict`; unknown keys are a ``ValueError`` naming them."""
        if not isinstance(d, Mapping):
            raise TypeError(f"precision must be a JSON object, got {type(d).__name__}")
        unknown = sorted(set(d) - {"name", "float32", "calibration", "source", "float32_below"})
        if unknown:
            raise ValueError(f"unknown precision keys {unknown}")
        if "name" not in d:
            raise ValueError("the precision entry lacks its 'name'")
        return cls(
            name=d["name"],
            float32=tuple(d.get("float32", ())),
            calibration=dict(d.get("calibration", {})),
            source=str(d.get("source", "")),
            float32_below=d.get("float32_below", 0),
        )

    def describe(self) -> str:
        """One line for ``refdiff check``: name, engine, what stays float32."""
        text = f"{self.name} (runs on {self.engine})"
        if self.float32:
            text += "; float32: " + ", ".join(self.float32)
        if self.float32_below:
            text += f"; every call with a t below {self.float32_below}: the float32 network"
        if self.calibration:
            c = self.calibration
            text += (
                f"; calibrated on {c.get('calls', '?')} denoiser calls of {c.get('images', '?')} "
                f"{c.get('sampler', '?')} trajectories"
            )
        return text
