"""Images stored in NumPy ``.npz`` archives (read without pickles)."""

from __future__ import annotations

import os
import zipfile
from collections.abc import Sequence

import numpy as np

from .dataset import ImageDataset, existing_path

__all__ = ["load_npz", "open_npz"]


def _to_nchw(array: np.ndarray, layout: str) -> np.ndarray:
    if layout not in ("auto", "NCHW", "NHWC"):
        raise ValueError(f"layout must be 'auto', 'NCHW' or 'NHWC', got {layout!r}")
    if array.ndim == 3:
        return array[:, None, :, :]
    if array.ndim != 4:
        raise ValueError(
            f"images must have shape [N, H, W], [N, C, H, W] or [N, H, W, C], got {array.shape}"
        )
    if layout == "auto":
        channel_like = (1, 3, 4)
        nhwc = array.shape[3] in channel_like and array.shape[1] not in channel_like
        layout = "NHWC" if nhwc else "NCHW"
    return array.transpose(0, 3, 1, 2) if layout == "NHWC" else array


def _quantize(array: np.ndarray, value_range: Sequence[float] | None) -> np.ndarray:
    """Map values in ``value_range`` linearly onto 0..255 and round to ``uint8``."""
    if array.dtype == np.uint8 and value_range is None:
        return array
    if array.dtype == np.bool_ or not (
        np.issubdtype(array.dtype, np.integer) or np.issubdtype(array.dtype, np.floating)
    ):
        raise ValueError(f"images must have an integer or float dtype, got {array.dtype}")
    if value_range is None:
        value_range = (0.0, 255.0) if np.issubdtype(array.dtype, np.integer) else (-1.0, 1.0)
    if len(value_range) != 2:
        raise ValueError(f"value_range must be a pair (lo, hi), got {value_range!r}")
    lo, hi = (float(v) for v in value_range)
    if not (np.isfinite(lo) and np.isfinite(hi) and lo < hi):
        raise ValueError(f"value_range must be finite with lo < hi, got {value_range!r}")
    values = array.astype(np.float64)
    if not np.isfinite(values).all():
        raise ValueError(
            f"images contain {np.count_nonzero(~np.isfinite(values))} non-finite values"
        )
    found_lo, found_hi = values.min(), values.max()
    if found_lo < lo or found_hi > hi:
        raise ValueError(
            f"image values span [{found_lo:g}, {found_hi:g}], outside value_range "
            f"[{lo:g}, {hi:g}]; pass the range the data was stored in"
        )
    return np.rint((values - lo) * (255.0 / (hi - lo))).astype(np.uint8)


_ZIP_MAGIC = b"PK\x03\x04"  # an .npz file is a zip archive
_NPY_MAGIC = b"\x93NUMPY"


def open_npz(path: str | os.PathLike[str], what: str = "file") -> np.lib.npyio.NpzFile:
    """Open an ``.npz`` archive without pickles (use it as a context manager).

    Checks what the file is before NumPy does, so that an empty, truncated, ``.npy`` or other
    file is a ``ValueError`` that says so (NumPy alone would call a 2-byte file "pickled data").
    """
    file = existing_path(path)
    if not file.is_file():
        raise ValueError(f"the {what} {str(file)!r} is not a file")
    with open(file, "rb") as f:
        head = f.read(6)
    if not head:
        raise ValueError(f"the {what} {str(file)!r} is empty (0 bytes)")
    if head.startswith(_NPY_MAGIC):
        raise ValueError(f"the {what} {str(file)!r} holds a single .npy array, not a .npz archive")
    if not head.startswith(_ZIP_MAGIC):
        raise ValueError(
            f"the {what} {str(file)!r} is not an .npz archive (it starts with {head[:4]!r}, not "
            "a zip header; an .npz is written by numpy.savez or `refdiff sample`)"
        )
    try:
        with zipfile.ZipFile(file):  # its directory first: NumPy would leak the open file
            pass
        return np.load(file, allow_pickle=False)
    except (OSError, EOFError, ValueError, zipfile.BadZipFile) as exc:
        raise ValueError(f"cannot read the {what} {str(file)!r} as .npz: {exc}") from None


def load_npz(
    path: str | os.PathLike[str],
    *,
    key: str | None = None,
    layout: str = "auto",
    value_range: Sequence[float] | None = None,
) -> ImageDataset:
    """Images stored in a NumPy ``.npz`` archive.

    Parameters
    ----------
    path : str or os.PathLike
        The ``.npz`` file. It is read with ``allow_pickle=False``.
    key : str, optional
        The array holding the images. If None: ``"images"`` if present, else the only array.
    layout : {"auto", "NCHW", "NHWC"}
        Layout of a 4-D array. ``"auto"`` reads it as NHWC when the last dimension is 1, 3 or 4
        and dimension 1 is not, else as NCHW. A 3-D array ``[N, H, W]`` is one channel.
    value_range : (float, float), optional
        The interval ``[lo, hi]`` the stored values lie in; it is mapped linearly onto 0..255 and
        rounded. Default: ``(0, 255)`` for integer dtypes (so ``uint8`` is taken as it is) and
        ``(-1, 1)`` for floating dtypes.

    Returns
    -------
    ImageDataset
        Images ``[N, C, H, W]``; labels from the key ``"labels"`` when the archive has it.

    Raises
    ------
    FileNotFoundError
        If ``path`` does not exist.
    ValueError
        If the key is missing or ambiguous (the message lists the keys), the shape or layout is
        not one of the above, a value is not finite or lies outside ``value_range`` (the message
        gives the minimum and maximum found), or the labels do not match the images.
    """
    file = existing_path(path)
    with open_npz(file) as archive:
        keys = list(archive.files)
        if key is None:
            if "images" in keys:
                key = "images"
            elif len(keys) == 1:
                key = keys[0]
            else:
                raise ValueError(
                    f"{str(file)!r} holds {len(keys)} arrays {keys} and none is named 'images'; "
                    "name the one holding the images (key=, or --npz-key on the command line)"
                )
        elif key not in keys:
            raise ValueError(f"{str(file)!r} has no array {key!r}; available keys: {keys}")
        try:
            array = archive[key]
            labels = archive["labels"] if "labels" in keys and key != "labels" else None
        except (OSError, EOFError, ValueError, zipfile.BadZipFile) as exc:
            # a truncated archive, or an array of Python objects (pickles are refused)
            raise ValueError(f"cannot read the array {key!r} of {str(file)!r}: {exc}") from None

    images = np.ascontiguousarray(_quantize(_to_nchw(array, layout), value_range))
    if len(images) == 0:
        raise ValueError(f"{str(file)!r}: array {key!r} holds no images")
    if labels is not None:
        if labels.shape != (len(images),) or not np.issubdtype(labels.dtype, np.integer):
            raise ValueError(
                f"{str(file)!r}: 'labels' must be integers of shape ({len(images)},), got "
                f"{labels.dtype} {labels.shape}"
            )
        labels = labels.astype(np.int64)
    return ImageDataset(images, labels, f"npz:{file.name}")
