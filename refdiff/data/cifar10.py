"""CIFAR-10 "python version" batches, as a folder or the ``.tar.gz`` as distributed, read through a
restricted unpickler that accepts NumPy arrays and nothing else."""

from __future__ import annotations

import io
import os
import pickle
import tarfile
import zlib
from collections.abc import Sequence
from pathlib import Path, PurePosixPath

import numpy as np

from .dataset import ImageDataset, check_split, existing_path

__all__ = ["UnsafeBatchError", "is_cifar10_source", "load_cifar10"]

_CIFAR_TRAIN_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))
_CIFAR_TEST_BATCHES = ("test_batch",)
_CIFAR_SUBFOLDER = "cifar-10-batches-py"


class UnsafeBatchError(pickle.UnpicklingError, ValueError):
    """A batch file that is not a readable pickle of NumPy arrays: truncated, corrupted, or asking
    for a global other than NumPy's (``os.system``, say). A ``ValueError`` too, so that the
    ``refdiff`` command reports it in one line like any other bad input."""


def _latin1_encode(text: str, encoding: str = "latin1") -> bytes:
    """``_codecs.encode`` restricted to latin-1: how Python 3 writes bytes in pickle protocol 2."""
    if encoding.lower().replace("_", "-") not in ("latin1", "latin-1"):
        raise UnsafeBatchError(f"refusing _codecs.encode with encoding {encoding!r}")
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
            raise UnsafeBatchError(
                f"refusing to load global {module}.{name}: only NumPy arrays are allowed"
            ) from None


def _unpickle_batch(raw: bytes, source: str) -> tuple[np.ndarray, np.ndarray]:
    """Decode one CIFAR-10 batch into images ``[n, 3, 32, 32]`` and labels ``[n]``."""
    try:
        batch = _RestrictedUnpickler(io.BytesIO(raw), encoding="bytes").load()
    except UnsafeBatchError as exc:
        raise UnsafeBatchError(f"{source}: {exc}; nothing in it was run") from None
    except (pickle.UnpicklingError, EOFError, ValueError, KeyError, IndexError, TypeError) as exc:
        # a truncated or corrupted pickle: "pickle data was truncated", "invalid load key", ...
        raise UnsafeBatchError(
            f"{source}: not a readable CIFAR-10 batch (truncated or corrupted pickle: {exc})"
        ) from None
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


def is_cifar10_source(path: str | os.PathLike[str]) -> bool:
    """True for a folder holding CIFAR-10 batches (itself or in ``cifar-10-batches-py``) and for a
    ``.tar.gz`` / ``.tgz`` / ``.tar`` file (read as the CIFAR-10 archive)."""
    p = Path(path)
    return (p.is_dir() and _cifar_folder(p) is not None) or _is_tar(p)


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
    UnsafeBatchError
        (a ``ValueError`` and a ``pickle.UnpicklingError``) If a batch is truncated or corrupted,
        or asks for anything other than NumPy arrays.
    """
    split = check_split(split)
    root = existing_path(path)
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
        except (tarfile.TarError, EOFError, OSError, zlib.error) as exc:
            raise ValueError(f"cannot read tar archive {str(root)!r}: {exc}") from None
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
