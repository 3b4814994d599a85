"""Dataset readers that return NumPy arrays.

Every image reader returns an :class:`ImageDataset`: ``uint8`` images of shape ``[N, C, H, W]``
(256 grey levels per channel, as the discretized decoder expects) plus optional ``int64`` labels.
:func:`to_model_range` maps them into the model's ``[-1, 1]`` and :func:`from_model_range` maps
samples back. The readers cover

* the 8x8 digits shipped with scikit-learn (:func:`load_digits`, nothing downloaded),
* folders of PNG/JPEG/BMP/WebP files (:func:`load_image_folder`),
* ``.npz`` archives (:func:`load_npz`),
* CIFAR-10 "python version" batches, as a folder or a ``.tar.gz`` (:func:`load_cifar10`),

and :func:`load_dataset` picks one from a string. Low-dimensional Gaussian mixtures
(:class:`GaussianMixture`, :func:`toy_mixture`) give toy data whose density, and the density of
every noised version of it, is known in closed form.

This module stands apart from the rest of refdiff: it imports neither torch nor any other refdiff
module, so any process (training, evaluation, the torch-free sampler) can use it.
"""

from __future__ import annotations

import io
import os
import pickle
import tarfile
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

__all__ = [
    "IMAGE_SUFFIXES",
    "TOY_MIXTURES",
    "GaussianMixture",
    "ImageDataset",
    "from_model_range",
    "load_cifar10",
    "load_dataset",
    "load_digits",
    "load_image_folder",
    "load_npz",
    "random_horizontal_flip",
    "to_model_range",
    "toy_mixture",
]

#: File suffixes (lower case) that :func:`load_image_folder` reads.
IMAGE_SUFFIXES = (".bmp", ".jpeg", ".jpg", ".png", ".webp")

#: Names accepted by :func:`toy_mixture`.
TOY_MIXTURES = ("bimodal1d", "ring8")

_SPLITS = ("train", "test", "all")
_CIFAR_TRAIN_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))
_CIFAR_TEST_BATCHES = ("test_batch",)
_CIFAR_SUBFOLDER = "cifar-10-batches-py"


# --------------------------------------------------------------------------------------------
# The dataset container
# --------------------------------------------------------------------------------------------


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


# --------------------------------------------------------------------------------------------
# Small validation helpers
# --------------------------------------------------------------------------------------------


def _check_split(split: object) -> str:
    if split not in _SPLITS:
        raise ValueError(f"split must be one of {_SPLITS}, got {split!r}")
    return split  # type: ignore[return-value]


def _check_nonneg_int(value: object, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 0:
        raise ValueError(f"{what} must be a non-negative integer, got {value!r}")
    return int(value)


def _existing_path(path: str | os.PathLike[str]) -> Path:
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"no such file or folder: {str(p)!r}")
    return p


# --------------------------------------------------------------------------------------------
# scikit-learn's digits
# --------------------------------------------------------------------------------------------


def load_digits(split: str = "train", *, test_fraction: float = 0.2, seed: int = 0) -> ImageDataset:
    """The 8x8 handwritten digits shipped with scikit-learn (1797 images, 10 classes).

    The source pixels are grey levels 0..16; they are mapped onto 8 bits by
    ``round(v * 255 / 16)``, so 0 -> 0 and 16 -> 255. Nothing is downloaded.

    Parameters
    ----------
    split : {"train", "test", "all"}
        Which part to return.
    test_fraction : float
        Fraction of each class that goes to the test split, in (0, 1).
    seed : int
        Seed of the split. The split is stratified: each class is shuffled with a generator seeded
        by ``seed`` and its first ``round(test_fraction * n_class)`` images go to "test". The same
        seed always gives the same split; "train" and "test" are disjoint and together are "all".
        Images keep their original order within each split.

    Returns
    -------
    ImageDataset
        Images of shape ``[N, 1, 8, 8]`` and labels 0..9.

    Raises
    ------
    ValueError
        For an unknown split, a fraction outside (0, 1) or a negative seed.
    """
    split = _check_split(split)
    if not isinstance(test_fraction, int | float) or not 0.0 < float(test_fraction) < 1.0:
        raise ValueError(f"test_fraction must lie in (0, 1), got {test_fraction!r}")
    seed = _check_nonneg_int(seed, "seed")

    # Imported here: scikit-learn is slow to import and only digits need it.
    from sklearn.datasets import load_digits as _sklearn_digits

    bunch = _sklearn_digits()
    levels = np.asarray(bunch.images, dtype=np.float64)  # [N, 8, 8], values 0..16
    images = np.rint(levels * (255.0 / 16.0)).astype(np.uint8)[:, None, :, :]
    labels = np.asarray(bunch.target, dtype=np.int64)
    if split == "all":
        return ImageDataset(images, labels, "digits")

    rng = np.random.default_rng(seed)
    is_test = np.zeros(len(labels), dtype=bool)
    for c in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == c))
        is_test[members[: round(test_fraction * len(members))]] = True
    if is_test.all() or not is_test.any():
        raise ValueError(f"test_fraction={test_fraction!r} leaves one split empty")
    keep = is_test if split == "test" else ~is_test
    return ImageDataset(images[keep], labels[keep], f"digits-{split}")


# --------------------------------------------------------------------------------------------
# Folders of image files
# --------------------------------------------------------------------------------------------


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
    w, h = img.size
    scale = size / min(w, h)
    new_w, new_h = max(size, round(w * scale)), max(size, round(h * scale))
    if (new_w, new_h) != (w, h):
        img = img.resize((new_w, new_h), resample=Image.Resampling.LANCZOS)
    left, top = (new_w - size) // 2, (new_h - size) // 2
    return img.crop((left, top, left + size, top + size))


def _read_image(file: Path, channels: int, image_size: int | None) -> np.ndarray:
    """Decode one file into a ``uint8`` array ``[C, H, W]``."""
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
    folder = _existing_path(path)
    if not folder.is_dir():
        raise ValueError(f"not a folder: {str(folder)!r}")
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 or 3, got {channels!r}")
    if image_size is not None and (
        isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 1
    ):
        raise ValueError(f"image_size must be a positive integer or None, got {image_size!r}")

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


# --------------------------------------------------------------------------------------------
# .npz archives
# --------------------------------------------------------------------------------------------


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
    file = _existing_path(path)
    try:
        archive = np.load(file, allow_pickle=False)
    except (OSError, ValueError, zipfile.BadZipFile) as exc:
        raise ValueError(f"cannot read {str(file)!r} as a .npz archive: {exc}") from exc
    if not isinstance(archive, np.lib.npyio.NpzFile):
        raise ValueError(f"{str(file)!r} holds a single .npy array, not a .npz archive")
    with archive:
        keys = list(archive.files)
        if key is None:
            if "images" in keys:
                key = "images"
            elif len(keys) == 1:
                key = keys[0]
            else:
                raise ValueError(
                    f"{str(file)!r} holds {len(keys)} arrays {keys} and none is named 'images'; "
                    "pass key="
                )
        elif key not in keys:
            raise ValueError(f"{str(file)!r} has no array {key!r}; available keys: {keys}")
        array = archive[key]
        labels = archive["labels"] if "labels" in keys and key != "labels" else None

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


# --------------------------------------------------------------------------------------------
# CIFAR-10 python batches
# --------------------------------------------------------------------------------------------


def _latin1_encode(text: str, encoding: str = "latin1") -> bytes:
    """``_codecs.encode`` restricted to latin-1: how Python 3 writes bytes in pickle protocol 2."""
    if encoding.lower().replace("_", "-") not in ("latin1", "latin-1"):
        raise pickle.UnpicklingError(f"refusing _codecs.encode with encoding {encoding!r}")
    return text.encode("latin-1")


def _safe_globals() -> dict[tuple[str, str], object]:
    # Take the callables from numpy's own reductions, so this works on NumPy 1.x (numpy.core)
    # and 2.x (numpy._core) without importing the deprecated numpy.core.
    reconstruct = np.ndarray.__reduce__(np.empty(0))[0]
    frombuffer = np.empty(0, np.uint8).__reduce_ex__(5)[0]
    scalar = np.uint8(0).__reduce__()[0]
    allowed: dict[tuple[str, str], object] = {
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
        ("_codecs", "encode"): _latin1_encode,
    }
    for module in ("numpy.core", "numpy._core"):
        allowed[(f"{module}.multiarray", "_reconstruct")] = reconstruct
        allowed[(f"{module}.multiarray", "scalar")] = scalar
        allowed[(f"{module}.numeric", "_frombuffer")] = frombuffer
    return allowed


class _RestrictedUnpickler(pickle.Unpickler):
    """An unpickler that only rebuilds NumPy arrays, dtypes and scalars.

    Dicts, lists, strings, bytes and numbers need no globals; everything else (``os.system``,
    ``builtins.eval``, any class) is refused with :class:`pickle.UnpicklingError`, so a
    tampered batch file cannot run code.
    """

    _allowed = _safe_globals()

    def find_class(self, module: str, name: str) -> object:
        try:
            return self._allowed[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(
                f"refusing to load global {module}.{name}: only NumPy arrays are allowed"
            ) from None


def _unpickle_batch(raw: bytes, source: str) -> tuple[np.ndarray, np.ndarray]:
    """Decode one CIFAR-10 batch into images ``[n, 3, 32, 32]`` and labels ``[n]``."""
    try:
        batch = _RestrictedUnpickler(io.BytesIO(raw), encoding="bytes").load()
    except pickle.UnpicklingError as exc:
        raise pickle.UnpicklingError(f"{source}: {exc}") from exc
    except EOFError as exc:
        raise ValueError(f"{source}: truncated pickle") from exc
    if not isinstance(batch, dict) or b"data" not in batch or b"labels" not in batch:
        raise ValueError(f"{source}: not a CIFAR-10 batch (expected a dict with data and labels)")
    data, labels = batch[b"data"], np.asarray(batch[b"labels"])
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2:
        raise ValueError(f"{source}: data must be a uint8 array [n, 3072]")
    if data.shape[1] != 3 * 32 * 32:
        raise ValueError(f"{source}: data must have 3072 columns, got {data.shape[1]}")
    if labels.shape != (len(data),) or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"{source}: labels must be {len(data)} integers, got {labels.shape}")
    if len(labels) and (labels.min() < 0 or labels.max() > 9):
        raise ValueError(f"{source}: labels must lie in 0..9")
    # Each row is 1024 red, then 1024 green, then 1024 blue values, each plane row-major.
    return data.reshape(-1, 3, 32, 32), labels.astype(np.int64)


def _cifar_folder(path: Path) -> Path | None:
    """The folder holding the batches: ``path`` itself or its ``cifar-10-batches-py``."""
    for folder in (path, path / _CIFAR_SUBFOLDER):
        names = (*_CIFAR_TRAIN_BATCHES, *_CIFAR_TEST_BATCHES)
        if any((folder / name).is_file() for name in names):
            return folder
    return None


def _is_tar(path: Path) -> bool:
    return path.is_file() and path.name.lower().endswith((".tar.gz", ".tgz", ".tar"))


def _read_tar_members(path: Path, names: Sequence[str]) -> dict[str, bytes]:
    """Read the named batches from a tar, at its top level or one folder down (no extraction)."""
    wanted = set(names)
    found: dict[str, bytes] = {}
    with tarfile.open(path, "r:*") as tar:
        for member in tar:
            parts = PurePosixPath(member.name).parts
            parts = parts[1:] if parts[:1] == (".",) else parts
            if not member.isfile() or len(parts) > 2 or parts[-1] not in wanted:
                continue
            if parts[-1] in found:
                raise ValueError(f"{str(path)!r} holds more than one {parts[-1]!r}")
            extracted = tar.extractfile(member)
            assert extracted is not None  # a regular file always has data
            found[parts[-1]] = extracted.read()
    return found


def load_cifar10(path: str | os.PathLike[str], *, split: str = "train") -> ImageDataset:
    """CIFAR-10, "CIFAR-10 python version", from a local folder or tar archive.

    Nothing is downloaded. The batches are pickles; they are read with an unpickler that only
    rebuilds NumPy arrays, so a tampered file raises instead of running code.

    Parameters
    ----------
    path : str or os.PathLike
        A folder holding ``data_batch_1`` .. ``data_batch_5`` and ``test_batch`` (directly or in
        a ``cifar-10-batches-py`` subfolder), or the ``.tar.gz`` as distributed (read in memory,
        not extracted).
    split : {"train", "test", "all"}
        "train" is the five data batches (50000 images), "test" the test batch (10000), "all"
        both, train first.

    Returns
    -------
    ImageDataset
        Images ``[N, 3, 32, 32]`` and labels 0..9.

    Raises
    ------
    FileNotFoundError
        If ``path`` does not exist.
    ValueError
        If batches are missing (the message names them) or malformed.
    pickle.UnpicklingError
        If a batch asks for anything other than NumPy arrays.
    """
    split = _check_split(split)
    root = _existing_path(path)
    names = {
        "train": _CIFAR_TRAIN_BATCHES,
        "test": _CIFAR_TEST_BATCHES,
        "all": _CIFAR_TRAIN_BATCHES + _CIFAR_TEST_BATCHES,
    }[split]

    if root.is_dir():
        folder = _cifar_folder(root) or root
        missing = [name for name in names if not (folder / name).is_file()]
        if missing:
            raise ValueError(f"CIFAR-10 batches missing from {str(folder)!r}: {missing}")
        raw = {name: (folder / name).read_bytes() for name in names}
        sources = {name: str(folder / name) for name in names}
    elif _is_tar(root):
        try:
            raw = _read_tar_members(root, names)
        except (tarfile.TarError, EOFError, OSError) as exc:
            raise ValueError(f"cannot read tar archive {str(root)!r}: {exc}") from exc
        missing = [name for name in names if name not in raw]
        if missing:
            raise ValueError(f"CIFAR-10 batches missing from {str(root)!r}: {missing}")
        sources = {name: f"{root}:{name}" for name in names}
    else:
        raise ValueError(f"expected a folder or a .tar.gz for CIFAR-10, got {str(root)!r}")

    parts = [_unpickle_batch(raw[name], sources[name]) for name in names]
    images = np.concatenate([p[0] for p in parts])
    labels = np.concatenate([p[1] for p in parts])
    return ImageDataset(images, labels, f"cifar10-{split}")


# --------------------------------------------------------------------------------------------
# One entry point
# --------------------------------------------------------------------------------------------


def load_dataset(
    spec: str, *, split: str = "train", image_size: int | None = None, channels: int = 3
) -> ImageDataset:
    """Load a dataset named by a string.

    Parameters
    ----------
    spec : str
        ``"digits"`` (:func:`load_digits`); a ``.npz`` file (:func:`load_npz`); a ``.tar.gz`` /
        ``.tgz`` / ``.tar`` or a folder holding CIFAR-10 batches (:func:`load_cifar10`); any other
        folder (:func:`load_image_folder`).
    split : {"train", "test", "all"}
        For digits and CIFAR-10 as in those readers. An image folder or ``.npz`` file has no
        split: "train" and "all" give every image, "test" is an error.
    image_size : int, optional
        For image folders: resize and centre-crop to this size. For the other sources, which
        cannot be resized, it is only checked: it must be None or equal their size.
    channels : {3, 1}
        For image folders only: RGB or greyscale. The other sources keep their own channels.

    Returns
    -------
    ImageDataset

    Raises
    ------
    FileNotFoundError
        If ``spec`` is neither ``"digits"`` nor an existing path.
    ValueError
        As raised by the reader, or for a split the source does not have.
    """
    split = _check_split(split)
    if spec == "digits":
        dataset = load_digits(split)
    else:
        path = Path(spec)
        if not path.exists():
            raise FileNotFoundError(
                f"no such file or folder: {spec!r} (built-in datasets: 'digits')"
            )
        is_image_folder = path.is_dir() and _cifar_folder(path) is None
        is_npz = path.is_file() and path.suffix.lower() == ".npz"
        if (is_image_folder or is_npz) and split == "test":
            raise ValueError(f"{spec!r} has no test split; use split='train' or 'all'")
        if is_image_folder:
            return load_image_folder(path, image_size=image_size, channels=channels)
        if is_npz:
            dataset = load_npz(path)
        elif path.is_dir() or _is_tar(path):
            dataset = load_cifar10(path, split=split)
        else:
            raise ValueError(
                f"cannot tell the format of {spec!r}: expected 'digits', a .npz file, a CIFAR-10 "
                "folder or .tar.gz, or a folder of images"
            )
    if image_size is not None and dataset.shape[1:] != (image_size, image_size):
        raise ValueError(
            f"image_size={image_size} but {dataset.name} images are "
            f"{dataset.shape[2]}x{dataset.shape[1]}; only image folders are resized"
        )
    return dataset


# --------------------------------------------------------------------------------------------
# Pixel range and augmentation
# --------------------------------------------------------------------------------------------


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


# --------------------------------------------------------------------------------------------
# Gaussian-mixture toys
# --------------------------------------------------------------------------------------------

# Samples are drawn in fixed blocks, each from its own generator seeded by (seed, block index):
# sample i is then a function of (seed, i) alone, whatever n is, and drawing stays vectorised.
_SAMPLE_BLOCK = 1024


def _frozen_float64(value: object, what: str) -> np.ndarray:
    arr = np.array(value, dtype=np.float64)  # a private copy, then made read-only
    if not np.isfinite(arr).all():
        raise ValueError(f"{what} must be finite")
    arr.flags.writeable = False
    return arr


@dataclass(frozen=True, eq=False)
class GaussianMixture:
    """A mixture of isotropic Gaussians in D dimensions.

    Its density, score and the density after Gaussian noising are known in closed form, which
    makes it the toy data on which exact quantities (the NLL, the optimal denoiser) can be checked.

    Parameters
    ----------
    weights : array_like
        Mixture weights, shape ``[K]``, positive, summing to 1 (within 1e-9).
    means : array_like
        Component means, shape ``[K, D]``.
    stds : array_like
        Component standard deviations (the same in every direction), shape ``[K]``, positive.

    Raises
    ------
    ValueError
        If a shape does not match or a value is out of its domain.
    """

    weights: np.ndarray
    means: np.ndarray
    stds: np.ndarray

    def __post_init__(self) -> None:
        weights = _frozen_float64(self.weights, "weights")
        means = _frozen_float64(self.means, "means")
        stds = _frozen_float64(self.stds, "stds")
        if weights.ndim != 1 or len(weights) < 1:
            raise ValueError(f"weights must have shape [K] with K >= 1, got {weights.shape}")
        k = len(weights)
        if means.ndim != 2 or means.shape[0] != k or means.shape[1] < 1:
            raise ValueError(f"means must have shape [{k}, D] with D >= 1, got {means.shape}")
        if stds.shape != (k,):
            raise ValueError(f"stds must have shape [{k}], got {stds.shape}")
        if (weights <= 0).any() or abs(weights.sum() - 1.0) > 1e-9:
            raise ValueError(f"weights must be positive and sum to 1, got {weights.tolist()}")
        if (stds <= 0).any():
            raise ValueError(f"stds must be positive, got {stds.tolist()}")
        object.__setattr__(self, "weights", weights)
        object.__setattr__(self, "means", means)
        object.__setattr__(self, "stds", stds)

    @property
    def dim(self) -> int:
        """The dimension D of a sample."""
        return int(self.means.shape[1])

    def sample(self, n: int, seed: int) -> np.ndarray:
        """Draw ``n`` samples; sample i depends only on ``(seed, i)``.

        So ``sample(10, s)[:5]`` equals ``sample(5, s)``: results do not depend on how many are
        drawn at once or how the work is split.

        Parameters
        ----------
        n : int
            Number of samples, >= 0.
        seed : int
            Non-negative seed.

        Returns
        -------
        numpy.ndarray
            float64 array ``[n, D]``.
        """
        n = _check_nonneg_int(n, "n")
        seed = _check_nonneg_int(seed, "seed")
        cumulative = np.cumsum(self.weights)
        blocks = []
        for b in range(-(-n // _SAMPLE_BLOCK)):
            rng = np.random.default_rng([seed, b])
            u = rng.random(_SAMPLE_BLOCK)
            z = rng.standard_normal((_SAMPLE_BLOCK, self.dim))
            # min(): the last cumulative weight may round to just under 1.
            k = np.minimum(np.searchsorted(cumulative, u, side="right"), len(self.weights) - 1)
            blocks.append(self.means[k] + self.stds[k, None] * z)
        if not blocks:
            return np.empty((0, self.dim), dtype=np.float64)
        return np.concatenate(blocks)[:n]

    def _component_log_probs(self, x: np.ndarray) -> np.ndarray:
        """``log w_k + log N(x; mu_k, s_k^2 I)``, shape ``[n, K]``."""
        x = np.asarray(x, dtype=np.float64)
        if x.ndim != 2 or x.shape[1] != self.dim:
            raise ValueError(f"x must have shape [n, {self.dim}], got {x.shape}")
        sq = ((x[:, None, :] - self.means[None, :, :]) ** 2).sum(axis=-1)
        var = self.stds**2
        return np.log(self.weights) - 0.5 * sq / var - 0.5 * self.dim * np.log(2.0 * np.pi * var)

    def log_prob(self, x: np.ndarray) -> np.ndarray:
        """Log density (nats) at each row of ``x`` (``[n, D]``); float64 ``[n]``."""
        comp = self._component_log_probs(x)
        top = comp.max(axis=1, keepdims=True)
        return (top + np.log(np.exp(comp - top).sum(axis=1, keepdims=True)))[:, 0]

    def score(self, x: np.ndarray) -> np.ndarray:
        """Gradient of the log density at each row of ``x`` (``[n, D]``); float64 ``[n, D]``."""
        comp = self._component_log_probs(x)
        resp = np.exp(comp - comp.max(axis=1, keepdims=True))
        resp /= resp.sum(axis=1, keepdims=True)  # posterior over components, [n, K]
        x = np.asarray(x, dtype=np.float64)
        per_comp = (self.means[None, :, :] - x[:, None, :]) / (self.stds**2)[None, :, None]
        return (resp[:, :, None] * per_comp).sum(axis=1)

    def noised(self, alpha_bar: float) -> GaussianMixture:
        """The law of ``sqrt(alpha_bar) x0 + sqrt(1 - alpha_bar) eps`` for x0 from this mixture.

        It is again a mixture: means scaled by ``sqrt(alpha_bar)``, variances
        ``alpha_bar s_k^2 + 1 - alpha_bar``, weights unchanged.

        Parameters
        ----------
        alpha_bar : float
            The cumulative product of (1 - beta), in (0, 1].
        """
        a = float(alpha_bar)
        if not 0.0 < a <= 1.0:
            raise ValueError(f"alpha_bar must lie in (0, 1], got {alpha_bar!r}")
        return GaussianMixture(
            self.weights, np.sqrt(a) * self.means, np.sqrt(a * self.stds**2 + (1.0 - a))
        )


def toy_mixture(name: str) -> GaussianMixture:
    """A preset Gaussian mixture, with values well inside ``[-1, 1]``.

    Parameters
    ----------
    name : {"ring8", "bimodal1d"}
        ``"ring8"``: 8 equally weighted 2-D Gaussians (std 0.05) evenly spaced on the circle of
        radius 0.7. ``"bimodal1d"``: 1-D Gaussians at -0.5 and +0.5 (std 0.15), weights 0.3 and
        0.7.

    Raises
    ------
    ValueError
        For an unknown name (the message lists the known ones).
    """
    if name == "ring8":
        angles = 2.0 * np.pi * np.arange(8) / 8
        means = 0.7 * np.stack([np.cos(angles), np.sin(angles)], axis=1)
        return GaussianMixture(np.full(8, 1 / 8), means, np.full(8, 0.05))
    if name == "bimodal1d":
        return GaussianMixture([0.3, 0.7], [[-0.5], [0.5]], [0.15, 0.15])
    raise ValueError(f"unknown toy mixture {name!r}; known: {list(TOY_MIXTURES)}")
