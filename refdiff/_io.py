"""Writing files whole or not at all, and one-line messages for the errors of doing so.

Every file refdiff writes (sample grids and arrays, reports, plots, ONNX models, checkpoints) goes
through :func:`atomic_path` (or the helpers built on it): the content is written to a temporary
name in the destination's own folder, flushed and fsync'ed, then renamed over the destination, and
the folder is fsync'ed. A crash, a ``kill -9`` or a full disk at any moment leaves either the old
file (or none) or the complete new one, never a truncated file under the final name; the
temporary file is removed on any error the process lives through.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import secrets
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "OutputError",
    "atomic_path",
    "check_output_file",
    "check_output_folder",
    "check_writable_folder",
    "create_temporary",
    "created_folder",
    "describe_os_error",
    "fsync_dir",
    "make_dir",
    "to_jsonable",
    "write_bytes",
    "write_json",
    "write_npz",
    "write_text",
]

#: Prefix of refdiff's temporary files and folders (hidden, and recognisable as leftovers).
TMP_PREFIX = ".refdiff-tmp-"


class OutputError(OSError):
    """A file or folder could not be written; the message names the path and the cause."""


def describe_os_error(exc: OSError, path: str | os.PathLike[str], action: str = "write") -> str:
    """``cannot write '<path>': No space left on device`` (one line, the cause in words)."""
    cause = exc.strerror or str(exc) or type(exc).__name__
    return f"cannot {action} {str(path)!r}: {cause}"


def fsync_dir(path: str | os.PathLike[str]) -> None:
    """fsync a folder, so that a rename inside it survives a power loss (no-op where a folder
    cannot be opened)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def unique_name(folder: Path, stem: str, suffix: str = "") -> Path:
    """A fresh hidden name ``TMP_PREFIX + stem + .<random> + suffix`` in ``folder``."""
    return folder / f"{TMP_PREFIX}{stem}.{secrets.token_hex(6)}{suffix}"


def create_temporary(folder: Path, stem: str, suffix: str = "") -> Path:
    """Create an empty file under a fresh hidden name in ``folder``, with the permissions the
    umask gives a new file (the kernel applies it: no global state is touched), and return it."""
    for _ in range(100):
        tmp = unique_name(folder, stem, suffix)
        try:
            os.close(os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666))
        except FileExistsError:
            continue
        return tmp
    raise FileExistsError(f"no free temporary name for {stem!r} in {str(folder)!r}")


def make_dir(path: str | os.PathLike[str]) -> Path:
    """Create ``path`` and its parents (permissions by the umask); an ``OutputError`` names it."""
    p = Path(path)
    try:
        p.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise OutputError(
            f"cannot create the folder {str(p)!r}: a file of that name exists"
        ) from None
    except OSError as exc:
        raise OutputError(describe_os_error(exc, p, "create the folder")) from None
    return p


@contextlib.contextmanager
def created_folder(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Create the folder ``path`` (and its missing parents) for the writes in the block; if the
    block raises, the folders this call created are removed again while they are empty, so a
    first write that fails (a full disk) leaves no empty folder behind."""
    p = Path(path)
    created = []
    q = p
    while not q.exists() and q != q.parent:
        created.append(q)
        q = q.parent
    make_dir(p)
    try:
        yield p
    except BaseException:
        for folder in created:  # the deepest first
            try:
                folder.rmdir()
            except OSError:  # not empty (another writer), or already gone
                break
        raise


def check_output_file(
    path: str | os.PathLike[str], *, suffix: str | None = None, what: str = "output"
) -> Path:
    """Check, before any work, that a file can be written at ``path``; create nothing.

    ``path`` must not be a folder (and end in ``suffix`` if given); its nearest existing ancestor
    must be a folder in which a file can be created (probed with a temporary file, removed at
    once: permission bits alone do not tell, as root or on a read-only mount); an existing file
    must be writable. Missing folders are created only when the file is written. Problems are a
    ``ValueError`` (the name) or an :class:`OutputError` (the file system), naming the path.
    """
    p = Path(path)
    if suffix is not None and p.suffix.lower() != suffix:
        raise ValueError(f"the {what} must be a {suffix} file, got {str(p)!r}")
    if p.is_dir():
        raise ValueError(f"the {what} {str(p)!r} is a folder; give a file name")
    _check_creatable(p, what)
    if p.exists() and not os.access(p, os.W_OK):
        raise OutputError(f"cannot write the {what} {str(p)!r}: the file is read-only")
    return p


def check_output_folder(path: str | os.PathLike[str], *, what: str = "output folder") -> Path:
    """Check, before any work, that files can be written in the folder ``path`` (which may not
    exist yet); create nothing. See :func:`check_output_file`."""
    p = Path(path)
    if p.exists() and not p.is_dir():
        raise OutputError(f"cannot use the {what} {str(p)!r}: it is a file, not a folder")
    if p.is_dir():
        check_writable_folder(p, what=f"the {what} {str(p)!r}")
    else:
        _check_creatable(p, what)
    return p


def _check_creatable(p: Path, what: str) -> None:
    """The nearest existing ancestor of ``p`` must be a folder one can create files in."""
    ancestor = p.parent
    while not ancestor.exists() and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise OutputError(
            f"cannot write the {what} {str(p)!r}: {str(ancestor)!r} is a file, not a folder"
        )
    check_writable_folder(ancestor, what=f"the {what} {str(p)!r}")


def check_writable_folder(folder: str | os.PathLike[str], *, what: str | None = None) -> None:
    """Raise ``OutputError`` unless a file can be created in ``folder`` (which must exist).

    Probes with a temporary file: permission bits alone do not tell (root, read-only mounts).
    """
    try:
        with tempfile.NamedTemporaryFile(dir=folder, prefix=TMP_PREFIX):
            pass
    except OSError as exc:
        message = describe_os_error(exc, folder, "write into the folder")
        raise OutputError(message if what is None else f"cannot write {what}: {message}") from None


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str], *, suffix: str = "") -> Iterator[Path]:
    """Yield a temporary path beside ``path``; when the block ends without an error, the file
    written there is fsync'ed and renamed to ``path`` (replacing it), and the folder fsync'ed.

    The folder must exist. The temporary file gets the permissions a new file would get (the
    umask), keeps ``suffix`` (for writers that look at the extension: ``.png``, ``.npz``), and is
    removed if the block raises. An ``OSError`` in the block, the sync or the rename (a full
    disk, a read-only folder) becomes an :class:`OutputError` naming ``path`` and the cause.
    """
    final = Path(path)
    try:
        tmp = create_temporary(final.parent, final.name, suffix)
    except OSError as exc:
        raise OutputError(describe_os_error(exc, final)) from None
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, final)
        fsync_dir(final.parent)
    except OutputError:
        raise
    except OSError as exc:
        raise OutputError(describe_os_error(exc, final)) from None
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


def write_bytes(path: str | os.PathLike[str], data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically (see :func:`atomic_path`)."""
    final = Path(path)
    with atomic_path(final) as tmp, open(tmp, "wb") as f:
        f.write(data)
    return final


def write_npz(path: str | os.PathLike[str], **arrays: Any) -> Path:
    """Write NumPy arrays as an uncompressed ``.npz`` archive at ``path``, atomically."""
    final = Path(path)
    with atomic_path(final, suffix=".npz") as tmp:
        np.savez(tmp, **arrays)
    return final


def write_text(path: str | os.PathLike[str], text: str) -> Path:
    """Write UTF-8 ``text`` to ``path`` atomically."""
    return write_bytes(path, text.encode("utf-8"))


def write_json(path: str | os.PathLike[str], obj: Any, *, indent: int | None = 1) -> Path:
    """Write ``obj`` (through :func:`to_jsonable`) as JSON with a final newline to ``path``,
    atomically."""
    return write_text(path, json.dumps(to_jsonable(obj), indent=indent) + "\n")


def to_jsonable(obj: Any) -> Any:
    """``obj`` with NumPy arrays and scalars turned into lists and Python numbers (for JSON);
    non-finite floats become None (JSON has no NaN)."""
    if isinstance(obj, Mapping):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return to_jsonable(obj.tolist())
    if isinstance(obj, np.generic):
        return to_jsonable(obj.item())
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj
