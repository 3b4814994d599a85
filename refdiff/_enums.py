"""The core's enums: what the denoiser predicts, how the reverse variance is chosen, the decoder
of L_0, the training loss and the spacing of sampling steps; each a string-valued :class:`Choice` parsed once.

Settings arrive as strings (a command line, a JSON file, ONNX metadata); they are turned into enum
members where they enter, with :meth:`Choice.parse`, and travel as members from then on.
"""

from __future__ import annotations

import enum
from typing import Any, TypeVar

__all__ = [
    "DEFAULT_CLIP_DENOISED",
    "Choice",
    "Decoder",
    "LossType",
    "Prediction",
    "Spacing",
    "Variance",
]

#: Whether x̂_0 is clipped to the data range, wherever it is not said: in sampling and in the
#: bound, as in improved-diffusion (its p_mean_variance, sampling loops and calc_bpd_loop). The
#: training loss never clips (a clipped x̂_0 has no gradient outside the range).
DEFAULT_CLIP_DENOISED = True

C = TypeVar("C", bound="Choice")


class Choice(str, enum.Enum):
    """A string enum whose :meth:`parse` accepts a member or its value."""

    @classmethod
    def parse(cls: type[C], value: Any) -> C:
        """``value`` as a member of this enum; a ``ValueError`` naming it and the choices if it is
        none of them. A member is returned as it is (no lookup)."""
        if isinstance(value, cls):
            return value
        try:
            return cls(value)
        except ValueError:
            choices = [m.value for m in cls]
            raise ValueError(
                f"unknown {_words(cls.__name__)} {value!r}; choose from {choices}"
            ) from None

    def __str__(self) -> str:
        return str(self.value)


def _words(name: str) -> str:
    """``LossType`` -> ``loss type``."""
    out = [name[0].lower()]
    for ch in name[1:]:
        out.append(" " + ch.lower() if ch.isupper() else ch)
    return "".join(out)


class Prediction(Choice):
    """What the denoiser's mean channels predict."""

    EPSILON = "epsilon"  # the noise ε (Ho et al.)
    X0 = "x0"  # the clean data x_0
    V = "v"  # v = √ᾱ ε - √(1-ᾱ) x_0 (Salimans & Ho 2022)


class Variance(Choice):
    """How the reverse variance Σ_θ(x_t, t) is chosen."""

    FIXED_SMALL = "fixed_small"  # σ² = β̃_t, the posterior variance (clipped log at t = 0)
    FIXED_LARGE = "fixed_large"  # σ² = β_t ([β̃_1, β_2, …] as in Ho et al.)
    LEARNED = "learned"  # the model outputs log σ² directly
    LEARNED_RANGE = "learned_range"  # log σ² = v log β + (1 - v) log β̃ with v = (out + 1)/2

    @property
    def learned(self) -> bool:
        """True when the denoiser outputs the variance (2C channels)."""
        return self in (Variance.LEARNED, Variance.LEARNED_RANGE)


class Decoder(Choice):
    """The decoder p_θ(x_0 | x_1) used for L_0."""

    DISCRETIZED = "discretized"  # data on num_bins levels: discretized Gaussian, open outer bins
    GAUSSIAN = "gaussian"  # real-valued data: a continuous Gaussian density


class LossType(Choice):
    """The training objective."""

    SIMPLE = "simple"  # MSE on the prediction target (ε, x_0 or v): Ho et al.'s L_simple
    HYBRID = "hybrid"  # L_simple + λ L_vlb, λ = 0.001, the mean frozen in L_vlb (improved DDPM)
    VLB = "vlb"  # the variational bound alone (an unbiased one-timestep estimate)


class Spacing(Choice):
    """How a sampler's steps are picked among the model's training timesteps."""

    EVEN = "even"  # evenly spaced indices, 0 and T-1 included (improved DDPM's respacing)
    LOGSNR = "logsnr"  # uniform in log-SNR (DPM-Solver's time-uniform-in-λ steps)
    KARRAS = "karras"  # Karras et al. 2022 eq. 5: uniform in σ^(1/ρ), ρ = 7
