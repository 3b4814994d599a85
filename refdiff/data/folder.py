"""Folders of image files (PNG, JPEG, BMP, WebP), read with Pillow."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from .._checks import check_int
from .._deps import require
from .dataset import ImageDataset, existing_path

if TYPE_CHECKING:
    from PIL import Image

__all__ = ["IMAGE_SUFFIXES", "load_image_folder"]

#: File suffixes (lower case) that :func:`load_image_folder` reads.
IMAGE_SUFFIXES = (".bmp", ".jpeg", ".jpg", ".png", ".webp")


def _image_files(folder: Path) -> list[Path]:
    """Image files under ``folder``, recursively, sorted by relative path; hidden ones skipped."""
    found = []
    for p in folder.rglob("*"):
        rel = p.relative_to(folder)
        # Skip hidden files and folders (".DS_Store", macOS "._name.png" resource forks, ".git").
        if any(part.startswith(".") for part in rel.parts):
            continue
        if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file():
            found.append(rel)
    return [folder / rel for rel in sorted(found, key=lambda r: r.parts)]


def _to_mode(img: Image.Image, channels: int, file: Path) -> Image.Image:
    """Convert a decoded image to ``"RGB"`` (channels=3) or ``"L"`` (channels=1)."""
    from PIL import Image

    target = "RGB" if channels == 3 else "L"
    if img.mode.startswith("I"):
        # 16-bit (or 32-bit integer) grey: Pillow's convert() would clip to 0..255, not scale.
        values = np.asarray(img, dtype=np.int64)
        if values.min(initial=0) < 0 or values.max(initial=0) > 65535:
            raise ValueError(f"{str(file)!r}: integer image with values outside 0..65535")
        img = Image.fromarray(np.rint(values * (255.0 / 65535.0)).astype(np.uint8), mode="L")
    elif img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")  # avoids Pillow's warning for palette transparency
    if img.mode != target:
        img = img.convert(target)  # alpha, if any, is dropped
    return img


def _resize_and_crop(img: Image.Image, size: int) -> Image.Image:
    """Resize the shorter side to ``size`` (Lanczos) and centre-crop to ``size x size``."""
    from PIL import Image

    w, h = img.size
    scale = size / min(w, h)
    new_w, new_h = max(size, round(w * scale)), max(size, round(h * scale))
    if (new_w, new_h) != (w, h):
        img = img.resize((new_w, new_h), resample=Image.Resampling.LANCZOS)
    left, top = (new_w - size) // 2, (new_h - size) // 2
    return img.crop((left, top, left + size, top + size))


def _read_image(file: Path, channels: int, image_size: int | None) -> np.ndarray:
    """Decode one file into a ``uint8`` array ``[C, H, W]``."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    try:
        with Image.open(file) as img:
            img.load()
            img = ImageOps.exif_transpose(img)  # camera JPEGs: honour the orientation tag
            img = _to_mode(img, channels, file)
            if image_size is not None:
                img = _resize_and_crop(img, image_size)
            arr = np.asarray(img, dtype=np.uint8)
    except (OSError, UnidentifiedImageError, SyntaxError, Image.DecompressionBombError) as exc:
        # Pillow reports broken files as OSError (truncated data, unknown format) and, for some
        # plugins, SyntaxError; DecompressionBombError guards against huge pixel counts.
        raise ValueError(f"cannot read image file {str(file)!r}: {exc}") from exc
    if arr.ndim == 2:
        arr = arr[:, :, None]
    return np.ascontiguousarray(arr.transpose(2, 0, 1))


def load_image_folder(
    path: str | os.PathLike[str], *, image_size: int | None = None, channels: int = 3
) -> ImageDataset:
    """Every image file under a folder, recursively.

    Files with the suffixes in :data:`IMAGE_SUFFIXES` (any case) are read in the sorted order of
    their paths relative to ``path``, so the order does not depend on the file system. Hidden
    files and folders (names starting with ``"."``) are skipped. The EXIF orientation is applied,
    and alpha channels are dropped. 16-bit grey images are scaled to 8 bits.

    Parameters
    ----------
    path : str or os.PathLike
        The folder.
    image_size : int, optional
        If given, each image's shorter side is resized to ``image_size`` (Lanczos) and the centre
        ``image_size x image_size`` square is cropped. If None, every image must already have the
        same size.
    channels : {3, 1}
        3 converts to RGB, 1 to greyscale (ITU-R 601-2 luma, as Pillow's ``"L"`` mode).

    Returns
    -------
    ImageDataset
        Images of shape ``[N, channels, H, W]``, no labels.

    Raises
    ------
    FileNotFoundError
        If ``path`` does not exist.
    ValueError
        If ``path`` is not a folder or holds no images, if a file cannot be decoded (the message
        names it), or if ``image_size`` is None and two images differ in size (the message names
        both files and sizes).
    """
    require("PIL", "data", "reading image folders")
    folder = existing_path(path)
    if not folder.is_dir():
        raise ValueError(f"not a folder: {str(folder)!r}")
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 or 3, got {channels!r}")
    if image_size is not None:
        check_int(image_size, "image_size (or None)", minimum=1)

    files = _image_files(folder)
    if not files:
        raise ValueError(
            f"no image files ({', '.join(IMAGE_SUFFIXES)}) found under {str(folder)!r}"
        )
    first = _read_image(files[0], channels, image_size)
    # Preallocate once the first image fixes the shape: half the peak memory of stacking a list.
    images = np.empty((len(files), *first.shape), dtype=np.uint8)
    images[0] = first
    for i, file in enumerate(files[1:], start=1):
        arr = _read_image(file, channels, image_size)
        if arr.shape != first.shape:
            size_a = f"{first.shape[2]}x{first.shape[1]}"
            size_b = f"{arr.shape[2]}x{arr.shape[1]}"
            raise ValueError(
                f"images differ in size: {str(files[0])!r} is {size_a} (width x height) but "
                f"{str(file)!r} is {size_b}; pass image_size to resize and crop them"
            )
        images[i] = arr
    return ImageDataset(images, None, f"folder:{folder.name or folder}")
