"""A per-pixel independent baseline, scored by the core's own decoder.

:class:`IndependentPixelModel` models every pixel (and channel) of an image as an independent
discretized Gaussian: mean and standard deviation per position fitted on training images in the
model's range [-1, 1], and the likelihood of 8-bit data computed by
:func:`refdiff.discretized_gaussian_log_likelihood`, the exact decoder that scores L_0 of the
diffusion bound. A diffusion model that has learned anything about the joint structure of the
images must beat its held-out bits/dim; the trainer reports both on the same images.

NumPy only: no torch.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import array_api_compat.numpy as npx
import numpy as np

from ._checks import check_int
from .data import check_uint8_images
from .losses import discretized_gaussian_log_likelihood
from .noise import standard_normal

__all__ = ["IndependentPixelModel"]

LN2 = math.log(2.0)


def _model_range(images_uint8: np.ndarray) -> np.ndarray:
    return images_uint8.astype(np.float64) / 127.5 - 1.0


class IndependentPixelModel:
    """Every pixel an independent discretized Gaussian with its own mean and std.

    Parameters
    ----------
    min_std : float
        Floor of each fitted standard deviation, in model units (the range [-1, 1] holds 256
        levels 2/255 apart; the default 1/255 is half a level). A pixel that is constant in the
        training data would otherwise get a zero std and an infinite loss on any other value.

    Attributes
    ----------
    mean, std : numpy.ndarray, float64 [C, H, W]
        Fitted by :meth:`fit` (None before).
    """

    def __init__(self, min_std: float = 1.0 / 255.0) -> None:
        if not isinstance(min_std, (int, float)) or not float(min_std) > 0:
            raise ValueError(f"min_std must be a positive number, got {min_std!r}")
        self.min_std = float(min_std)
        self.mean: np.ndarray | None = None
        self.std: np.ndarray | None = None

    def fit(self, train_uint8: np.ndarray) -> IndependentPixelModel:
        """Fit mean and std per position (maximum likelihood of the continuous Gaussian).

        Parameters
        ----------
        train_uint8 : numpy.ndarray
            ``uint8`` images ``[N, C, H, W]``, N >= 1.

        Returns
        -------
        self
        """
        x = check_uint8_images(train_uint8, "training images")
        if x.shape[0] < 1:
            raise ValueError("need at least one training image")
        v = _model_range(x)
        self.mean = v.mean(axis=0)
        self.std = np.maximum(v.std(axis=0), self.min_std)
        return self

    def _fitted(self) -> tuple[np.ndarray, np.ndarray]:
        if self.mean is None or self.std is None:
            raise ValueError("the model is not fitted; call fit(train_images) first")
        return self.mean, self.std

    @property
    def image_shape(self) -> tuple[int, int, int]:
        mean, _ = self._fitted()
        return tuple(int(s) for s in mean.shape)  # type: ignore[return-value]

    def log_likelihood(self, images_uint8: np.ndarray) -> np.ndarray:
        """log p(x) in nats per image, float64 [N] (summed over the dimensions)."""
        mean, std = self._fitted()
        x = check_uint8_images(images_uint8, "images")
        if x.shape[1:] != mean.shape:
            raise ValueError(
                f"images have shape {x.shape[1:]} per image, the model was fitted on {mean.shape}"
            )
        v = _model_range(x)
        means = np.broadcast_to(mean, v.shape)
        log_scales = np.broadcast_to(np.log(std), v.shape)
        ll = discretized_gaussian_log_likelihood(v, means=means, log_scales=log_scales)
        return ll.reshape(ll.shape[0], -1).sum(axis=1)

    def bits_per_dim(self, images_uint8: np.ndarray) -> np.ndarray:
        """Negative log-likelihood in bits per dimension, per image: float64 [N].

        ``-log p(x) / (D ln 2)`` with D = C·H·W, the units of the diffusion bound's ``total_bpd``;
        take ``.mean()`` for the dataset's number.
        """
        ll = self.log_likelihood(images_uint8)
        dims = math.prod(self.image_shape)
        return -ll / (dims * LN2)

    def sample(self, n: int, seed: int = 0) -> np.ndarray:
        """Draw ``n`` images, ``uint8 [n, C, H, W]``; image i depends on (seed, i) only.

        A draw from the discretized Gaussian with open outer bins is a continuous draw clipped to
        [-1, 1] and rounded to the nearest of the 256 levels. The noise is the core's
        counter-based :func:`refdiff.standard_normal`.
        """
        mean, std = self._fitted()
        n = check_int(n, "n", minimum=0)
        z = standard_normal(seed, np.arange(n, dtype=np.int64), 0, mean.shape, xp=npx)
        v = np.clip(mean + std * np.asarray(z), -1.0, 1.0)
        return np.rint((v + 1.0) * 127.5).astype(np.uint8)

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable parameters."""
        mean, std = self._fitted()
        return {"min_std": self.min_std, "mean": mean.tolist(), "std": std.tolist()}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> IndependentPixelModel:
        model = cls(d["min_std"])
        model.mean = np.asarray(d["mean"], dtype=np.float64)
        model.std = np.asarray(d["std"], dtype=np.float64)
        if model.mean.ndim != 3 or model.std.shape != model.mean.shape:
            raise ValueError("mean and std must both have shape [C, H, W]")
        return model

    def __repr__(self) -> str:
        shape = None if self.mean is None else self.image_shape
        return f"IndependentPixelModel(min_std={self.min_std:g}, image_shape={shape})"
