"""PNG grids and strips of uint8 images (NumPy and Pillow; no torch).

:func:`save_grid` lays ``[N, C, H, W]`` images out in rows, upscaled by nearest neighbour so that
small images (8x8 digits) stay visible and sharp; :func:`save_strip` puts the frames of one
trajectory (x_T … x_0, say) side by side.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np

from ._checks import check_int
from ._deps import require
from ._io import atomic_path, created_folder
from .data import check_uint8_images

__all__ = ["make_grid", "save_grid", "save_strip"]


def _check_images(images: object, what: str) -> np.ndarray:
    images = check_uint8_images(images, what)
    if images.shape[0] < 1:
        raise ValueError(f"{what}: need at least one image")
    if images.shape[1] not in (1, 3):
        raise ValueError(f"{what} must have 1 (grey) or 3 (RGB) channels, got {images.shape[1]}")
    return images


def make_grid(
    images: np.ndarray,
    *,
    nrow: int | None = None,
    scale: int = 1,
    pad: int = 2,
    pad_value: int = 128,
) -> np.ndarray:
    """The grid as a ``uint8`` array ``[H', W', C]`` (C = 1 or 3).

    Parameters
    ----------
    images : numpy.ndarray
        ``uint8 [N, C, H, W]``, C = 1 or 3.
    nrow : int, optional
        Images per row; default ``ceil(sqrt(N))`` (a square-ish grid).
    scale : int
        Nearest-neighbour upscaling factor of every image (e.g. 4 for 8x8 digits).
    pad : int
        Pixels between images and around the grid (after scaling).
    pad_value : int
        Grey level of the padding, 0..255.
    """
    images = _check_images(images, "images")
    n, c, h, w = images.shape
    nrow = math.ceil(math.sqrt(n)) if nrow is None else check_int(nrow, "nrow", minimum=1)
    scale = check_int(scale, "scale", minimum=1)
    pad = check_int(pad, "pad", minimum=0)
    pad_value = check_int(pad_value, "pad_value", minimum=0)
    if pad_value > 255:
        raise ValueError(f"pad_value must lie in 0..255, got {pad_value}")
    cols = min(nrow, n)
    rows = math.ceil(n / cols)
    hs, ws = h * scale, w * scale
    grid = np.full(
        (rows * hs + (rows + 1) * pad, cols * ws + (cols + 1) * pad, c), pad_value, np.uint8
    )
    big = images.repeat(scale, axis=2).repeat(scale, axis=3).transpose(0, 2, 3, 1)
    for i in range(n):
        r, q = divmod(i, cols)
        y, x = pad + r * (hs + pad), pad + q * (ws + pad)
        grid[y : y + hs, x : x + ws] = big[i]
    return grid


def save_grid(
    images: np.ndarray,
    path: str | os.PathLike[str],
    *,
    nrow: int | None = None,
    scale: int = 1,
    pad: int = 2,
    pad_value: int = 128,
) -> Path:
    """Write ``uint8 [N, C, H, W]`` images as one PNG grid and return its path.

    Parent folders are created. See :func:`make_grid` for the layout arguments.

    Raises
    ------
    TypeError, ValueError
        For images that are not ``uint8 [N, 1 or 3, H, W]`` or bad layout arguments.
    refdiff._io.OutputError
        (an ``OSError``) when the file cannot be written; the message names the path and the
        cause. The file is written whole or not at all (a temporary name, then a rename).
    """
    grid = make_grid(images, nrow=nrow, scale=scale, pad=pad, pad_value=pad_value)
    return _write_png(grid, Path(path))


def save_strip(
    frames: np.ndarray,
    path: str | os.PathLike[str],
    scale: int = 1,
    *,
    pad: int = 2,
    pad_value: int = 128,
) -> Path:
    """Write the frames ``uint8 [K, C, H, W]`` of a trajectory side by side in one PNG row."""
    frames = _check_images(frames, "frames")
    return save_grid(frames, path, nrow=frames.shape[0], scale=scale, pad=pad, pad_value=pad_value)


def _write_png(grid: np.ndarray, path: Path) -> Path:
    if path.suffix.lower() != ".png":
        raise ValueError(f"image grids are written as PNG; give a path ending in .png, got {path}")
    image = require("PIL.Image", "data", "writing PNG images").fromarray(
        grid[:, :, 0] if grid.shape[2] == 1 else grid
    )
    with created_folder(path.parent), atomic_path(path, suffix=".png") as tmp:
        image.save(tmp, format="PNG")
    return path
