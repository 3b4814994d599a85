"""The diffusion settings a model was trained with: what sampling and evaluation need to know.

:class:`DiffusionConfig` is stored in every checkpoint and, as JSON, in the metadata of every
exported ONNX model, so that ``refdiff sample model.onnx`` needs nothing else.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from .losses import Decoder
from .reverse import Prediction, Variance, _enum
from .schedules import Schedule

__all__ = ["DiffusionConfig"]


@dataclass(frozen=True)
class DiffusionConfig:
    """Schedule, parameterisation and data conventions of a diffusion model.

    Parameters
    ----------
    schedule : mapping
        ``Schedule.to_dict()`` of the base schedule (name, params and T, or the betas).
    prediction, variance : str
        :class:`~refdiff.Prediction` and :class:`~refdiff.Variance` values.
    image_shape : (C, H, W)
    data_range : (lo, hi)
        The model's data range (images: (-1, 1)).
    clip_denoised : bool
        Clip x̂_0 to ``data_range`` while sampling.
    decoder : str
        :class:`~refdiff.Decoder` used for L_0 (``discretized`` for 8-bit images).
    num_bins : int
        Levels of the discretized data (256 for 8-bit images).
    """

    schedule: Mapping[str, Any] = field(
        default_factory=lambda: {"name": "linear", "params": {}, "T": 1000}
    )
    prediction: str = "epsilon"
    variance: str = "fixed_small"
    image_shape: tuple[int, int, int] = (3, 32, 32)
    data_range: tuple[float, float] = (-1.0, 1.0)
    clip_denoised: bool = True
    decoder: str = "discretized"
    num_bins: int = 256

    def __post_init__(self) -> None:
        set_ = object.__setattr__
        set_(self, "prediction", _enum(Prediction, self.prediction).value)
        set_(self, "variance", _enum(Variance, self.variance).value)
        set_(self, "decoder", _enum(Decoder, self.decoder).value)
        shape = tuple(int(s) for s in self.image_shape)
        if len(shape) != 3 or min(shape) < 1:
            raise ValueError(
                f"image_shape must be (C, H, W) with positive sizes, got {self.image_shape}"
            )
        set_(self, "image_shape", shape)
        lo, hi = (float(v) for v in self.data_range)
        if not lo < hi:
            raise ValueError(f"data_range must be (lo, hi) with lo < hi, got {self.data_range}")
        set_(self, "data_range", (lo, hi))
        set_(self, "schedule", dict(self.schedule))
        sched = self.build_schedule()  # validates the description
        if sched.zero_terminal_snr and self.prediction == Prediction.EPSILON.value:
            raise ValueError(
                "zero terminal SNR needs a prediction that recovers x_0 at the last step ('v' or 'x0'), "
                "not 'epsilon'"
            )

    @property
    def out_channels(self) -> int:
        """Channels the denoiser outputs: C, or 2C with a learned variance."""
        c = self.image_shape[0]
        return 2 * c if Variance(self.variance).learned else c

    def build_schedule(self) -> Schedule:
        return Schedule.from_dict(self.schedule)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["image_shape"] = list(self.image_shape)
        d["data_range"] = list(self.data_range)
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> DiffusionConfig:
        if not isinstance(d, Mapping):
            raise TypeError(f"a diffusion config must be a mapping, got {type(d).__name__}")
        known = set(cls.__dataclass_fields__)
        unknown = set(d) - known
        if unknown:
            raise ValueError(
                f"unknown diffusion config keys {sorted(unknown)}; known: {sorted(known)}"
            )
        kw = dict(d)
        if "image_shape" in kw:
            kw["image_shape"] = tuple(kw["image_shape"])
        if "data_range" in kw:
            kw["data_range"] = tuple(kw["data_range"])
        return cls(**kw)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> DiffusionConfig:
        try:
            d = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ValueError(f"diffusion config is not valid JSON: {exc}") from None
        return cls.from_dict(d)
