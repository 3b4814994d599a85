"""The dataset container and the pixel conventions shared by every reader.

:class:`ImageDataset` holds ``uint8`` images ``[N, C, H, W]`` (256 levels per channel, as the
discretized decoder expects) and optional ``int64`` labels; :func:`to_model_range` maps them into
the model's ``[-1, 1]`` and :func:`from_model_range` maps samples back.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .._checks import check_int

__all__ = [
    "SPLITS",
    "ImageDataset",
    "check_nonneg_int",
    "check_split",
    "check_uint8_images",
    "existing_path",
    "from_model_range",
    "random_horizontal_flip",
    "to_model_range",
]

#: The splits a reader can be asked for.
SPLITS = ("train", "test", "all")


@dataclass(frozen=True, eq=False, repr=False)
class ImageDataset:
    """Images as ``uint8`` arrays, with optional integer labels.

    ``eq=False``: comparing datasets element-wise is rarely meant, and ``==`` on arrays would
    not give a bool anyway.

    Parameters
    ----------
    images : numpy.ndarray
        ``uint8`` array of shape ``[N, C, H, W]``; 0 is black, 255 is full intensity.
    labels : numpy.ndarray or None
        ``int64`` array of shape ``[N]``, or None when the source has no labels.
    name : str
        A short description of the source, e.g. ``"digits-train"``.

    Raises
    ------
    ValueError
        If the dtypes or shapes are not the ones above.
    """

    images: np.ndarray
    labels: np.ndarray | None
    name: str

    def __post_init__(self) -> None:
        images = self.images
        if not isinstance(images, np.ndarray):
            raise ValueError(f"images must be a numpy.ndarray, got {type(images).__name__}")
        if images.dtype != np.uint8:
            raise ValueError(f"images must have dtype uint8, got {images.dtype}")
        if images.ndim != 4:
            raise ValueError(
                f"images must have 4 dimensions [N, C, H, W], got shape {images.shape}"
            )
        if min(images.shape[1:]) < 1:
            raise ValueError(f"images must have C, H, W >= 1, got shape {images.shape}")
        labels = self.labels
        if labels is not None:
            if not isinstance(labels, np.ndarray):
                raise ValueError(f"labels must be a numpy.ndarray or None, got {type(labels)}")
            if labels.dtype != np.int64:
                raise ValueError(f"labels must have dtype int64, got {labels.dtype}")
            if labels.shape != (images.shape[0],):
                raise ValueError(
                    f"labels must have shape ({images.shape[0]},) to match {images.shape[0]} "
                    f"images, got {labels.shape}"
                )
        if not isinstance(self.name, str):
            raise ValueError(f"name must be a str, got {type(self.name).__name__}")

    @property
    def shape(self) -> tuple[int, int, int]:
        """The shape ``(C, H, W)`` of one image."""
        _, c, h, w = self.images.shape
        return (c, h, w)

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def __repr__(self) -> str:
        labels = "none" if self.labels is None else "int64"
        return (
            f"ImageDataset(name={self.name!r}, n={len(self)}, shape={self.shape}, labels={labels})"
        )


def check_split(split: object) -> str:
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    return split


def check_nonneg_int(value: object, what: str) -> int:
    return check_int(value, what, minimum=0)


def existing_path(path: str | os.PathLike[str]) -> Path:
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"no such file or folder: {str(p)!r}")
    return p


def check_uint8_images(images: Any, what: str = "images") -> np.ndarray:
    """``images`` (an array, or an :class:`ImageDataset`'s) checked to be ``uint8 [N, C, H, W]``;
    a ``TypeError``/``ValueError`` naming ``what`` and what it got otherwise."""
    x = getattr(images, "images", images)
    if not isinstance(x, np.ndarray) or x.dtype != np.uint8:
        got = getattr(x, "dtype", type(x).__name__)
        raise TypeError(f"{what} must be uint8 images [N, C, H, W] (a NumPy array), got {got}")
    if x.ndim != 4:
        raise ValueError(f"{what} must have shape [N, C, H, W], got {tuple(x.shape)}")
    return x


def to_model_range(images_uint8: np.ndarray, dtype: np.dtype | type = np.float32) -> np.ndarray:
    """Map ``uint8`` pixels onto the model's range: ``x / 127.5 - 1``, so 0 -> -1 and 255 -> 1.

    Parameters
    ----------
    images_uint8 : numpy.ndarray
        ``uint8`` array of any shape.
    dtype : floating dtype
        Dtype of the result; computed in float64 and rounded once.

    Returns
    -------
    numpy.ndarray
        Values ``k / 127.5 - 1`` for k in 0..255: 256 evenly spaced levels in ``[-1, 1]``.

    Raises
    ------
    TypeError
        If the input is not ``uint8`` or ``dtype`` is not a floating dtype.
    """
    if not isinstance(images_uint8, np.ndarray) or images_uint8.dtype != np.uint8:
        got = getattr(images_uint8, "dtype", type(images_uint8).__name__)
        raise TypeError(f"to_model_range expects a uint8 numpy array, got {got}")
    dtype = np.dtype(dtype)
    if not np.issubdtype(dtype, np.floating):
        raise TypeError(f"dtype must be a floating dtype, got {dtype}")
    return (images_uint8.astype(np.float64) / 127.5 - 1.0).astype(dtype)


def from_model_range(x: np.ndarray) -> np.ndarray:
    """Map model-range values back to ``uint8``: clip to ``[-1, 1]``, ``(x + 1) * 127.5``, round.

    The inverse of :func:`to_model_range` on its 256 levels; other values go to the nearest level.

    Raises
    ------
    TypeError
        If ``x`` is not a floating-point numpy array.
    ValueError
        If ``x`` contains NaN (a diverged sample should not become a silent black pixel).
    """
    if not isinstance(x, np.ndarray) or not np.issubdtype(x.dtype, np.floating):
        got = getattr(x, "dtype", type(x).__name__)
        raise TypeError(f"from_model_range expects a floating-point numpy array, got {got}")
    if np.isnan(x).any():
        raise ValueError(f"from_model_range got {np.count_nonzero(np.isnan(x))} NaN values")
    values = np.clip(x.astype(np.float64), -1.0, 1.0)
    return np.rint((values + 1.0) * 127.5).astype(np.uint8)


def random_horizontal_flip(batch: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Mirror each image of a batch left-right with probability 1/2, independently.

    Parameters
    ----------
    batch : numpy.ndarray
        Array of shape ``[N, C, H, W]``, any dtype; not modified.
    rng : numpy.random.Generator
        Source of the N coin flips (one ``rng.random(N)`` call).

    Returns
    -------
    numpy.ndarray
        A new array of the same shape and dtype.
    """
    if not isinstance(rng, np.random.Generator):
        raise TypeError(f"rng must be a numpy.random.Generator, got {type(rng).__name__}")
    if not isinstance(batch, np.ndarray) or batch.ndim != 4:
        raise ValueError(
            f"batch must be a 4-D array [N, C, H, W], got {getattr(batch, 'shape', batch)}"
        )
    flip = rng.random(batch.shape[0]) < 0.5
    out = batch.copy()
    out[flip] = batch[flip, :, :, ::-1]
    return out
