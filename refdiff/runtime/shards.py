"""Shards of one run: their file names, what each records, and joining them back into one run.

A run of ``n`` samples (or of the bound over ``n`` images) split into shards
(:func:`~refdiff.runtime.sampling.shard_range`: contiguous blocks of the global indices) writes
one file per shard, named by :func:`shard_path` so that shards never overwrite each other
(``samples.png`` -> ``samples-shard02of08.png``). Each file records what identifies the run
(the model's fingerprint, the seed, the sampler, ...) and the global indices it holds;
:func:`check_shards` accepts a set of such files only when they come from one run, hold
disjoint indices and, unless a partial result is asked for, every index ``0 … n-1``. Joined
in index order they are the unsharded run, bit for bit: every sample and every per-image
term is a pure function of (seed, index).

No torch here.
"""

from __future__ import annotations

import glob
import json
import os
import zipfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .sampling import parse_shard

__all__ = [
    "JoinedSamples",
    "ShardRecord",
    "check_shards",
    "expand_paths",
    "format_ranges",
    "join_sample_files",
    "launcher_device",
    "read_sample_file",
    "sample_record",
    "shard_glob",
    "shard_path",
    "shard_tag",
]

#: What the sample files of one run must share (the keys of :func:`sample_record`).
SAMPLE_IDENTITY = ("model_fingerprint", "seed", "sampler", "steps", "spacing", "options", "n")


def launcher_device(device: str, env: Mapping[str, str] | None = None) -> str:
    """``"cuda"`` under torchrun is ``"cuda:$LOCAL_RANK"``: each process of a multi-GPU machine
    takes its own GPU, as the trainer's do. Any other device, or no ``LOCAL_RANK``, is kept.
    (Slurm binds a GPU per task with ``--gpus-per-task=1``: each task sees one, ``cuda``.)"""
    env = os.environ if env is None else env
    local = env.get("LOCAL_RANK", "").strip()
    if device.strip().lower() != "cuda" or not local:
        return device
    if not local.isdigit():
        raise ValueError(f"LOCAL_RANK={local!r} is not an integer >= 0")
    return f"cuda:{int(local)}"


def shard_tag(shard: tuple[int, int]) -> str:
    """``(2, 8)`` -> ``"shard02of08"``: zero-padded so that the files sort in shard order."""
    k, n = parse_shard(shard)  # type: ignore[misc]
    width = max(2, len(str(n)))
    return f"shard{k:0{width}d}of{n:0{width}d}"


def shard_path(path: str | os.PathLike[str], shard: tuple[int, int] | None) -> Path:
    """The file of ``shard`` for the output ``path``: ``samples.png`` -> ``samples-shard02of08.png``.

    Every sharded output carries its shard in its name (given as ``K/N`` or found by ``auto``),
    so the processes of one run, writing into one folder, never overwrite each other, and
    ``samples-shard*of08.npz`` finds them all. Unsharded (``None``), the path is unchanged; a
    name that already ends in the shard's tag is kept as it is.
    """
    p = Path(path)
    if shard is None:
        return p
    tag = shard_tag(shard)
    if p.stem.endswith(tag):
        return p
    return p.with_name(f"{p.stem}-{tag}{p.suffix}")


def shard_glob(path: str | os.PathLike[str], shard: tuple[int, int]) -> str:
    """The glob that finds every shard's file of the run that ``path`` (a shard's file, as
    :func:`shard_path` names it) belongs to: ``s-shard02of08.npz`` -> ``s-shard*of08.npz``."""
    p = Path(path)
    tag = shard_tag(shard)
    base = p.stem[: -len(tag)] if p.stem.endswith(tag) else f"{p.stem}-"
    return str(p.with_name(f"{base}shard*of{tag.split('of')[1]}{p.suffix}"))


def sample_record(
    choice: Any,
    *,
    n: int,
    shard: tuple[int, int] | None,
    model_fingerprint: str,
    model: str | os.PathLike[str] | None = None,
) -> dict[str, Any]:
    """What a sample file records beside its images and indices (``info`` of
    :func:`~refdiff.runtime.save_samples`, which records the seed itself): the sampler choice
    (``SamplerChoice.to_dict()``, or that mapping itself: sampler, steps, spacing, options as
    sorted JSON), the run's
    ``n``, the shard ``[K, N]`` (``[0, 1]`` unsharded), the model's fingerprint (see
    :mod:`refdiff.models`) and, for people, its path."""
    chosen = dict(choice) if isinstance(choice, Mapping) else choice.to_dict()
    k, count = (0, 1) if shard is None else parse_shard(shard)  # type: ignore[misc]
    return {
        "sampler": chosen["sampler"],
        "steps": int(chosen["steps"]),
        "spacing": chosen["spacing"],
        "options": json.dumps(chosen["options"], sort_keys=True),
        "n": int(n),
        "shard": np.array([k, count], dtype=np.int64),
        "model_fingerprint": str(model_fingerprint),
        "model": None if model is None else str(model),
    }


def expand_paths(patterns: Iterable[str | os.PathLike[str]], what: str = "file") -> list[str]:
    """Each pattern as it is when such a file exists, else its glob matches (sorted), so
    ``'parts/*.npz'`` works quoted or not. A pattern that matches nothing is a
    ``FileNotFoundError`` naming it; a file given twice counts once."""
    out: list[str] = []
    seen: set[tuple[int, int]] = set()
    for pattern in patterns:
        text = os.fspath(pattern)
        if Path(text).exists():
            found = [text]
        elif glob.has_magic(text):
            found = sorted(glob.glob(text))
            if not found:
                raise FileNotFoundError(f"no {what} matches {text!r}")
        else:
            raise FileNotFoundError(f"no such {what}: {text!r}")
        for f in found:
            st = os.stat(f)
            if (st.st_dev, st.st_ino) not in seen:
                seen.add((st.st_dev, st.st_ino))
                out.append(f)
    return out


def format_ranges(indices: np.ndarray, limit: int = 6) -> str:
    """Sorted integers as ranges: ``[0, 1, 2, 5, 7, 8]`` -> ``"0..2, 5, 7..8"`` (the first
    ``limit`` ranges, then how many more)."""
    idx = np.asarray(indices, dtype=np.int64)
    if idx.size == 0:
        return "none"
    breaks = np.flatnonzero(np.diff(idx) != 1)
    starts = np.concatenate([[idx[0]], idx[breaks + 1]])
    stops = np.concatenate([idx[breaks], [idx[-1]]])
    parts = [f"{a}" if a == b else f"{a}..{b}" for a, b in zip(starts, stops, strict=True)]
    more = len(parts) - limit
    return ", ".join(parts[:limit]) + (f" and {more} more range(s)" if more > 0 else "")


@dataclass(frozen=True)
class ShardRecord:
    """One file of a sharded run: its ``path``, the ``identity`` every file of the run must
    share (a flat mapping of JSON-like values), the global ``indices`` it holds (int64 [m]) and
    the ``shard`` (K, N) it says it is (None when it does not say)."""

    path: str
    identity: Mapping[str, Any]
    indices: np.ndarray
    shard: tuple[int, int] | None = None


def _flatten(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested mappings as one level of dotted keys (``data.split``), for messages that name the
    one value that differs."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, Mapping):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _differs(a: Any, b: Any) -> bool:
    return json.dumps(a, sort_keys=True, default=str) != json.dumps(b, sort_keys=True, default=str)


def check_shards(
    records: Sequence[ShardRecord],
    n: int,
    *,
    what: str = "shards",
    allow_partial: bool = False,
    partial_hint: str = "",
) -> tuple[np.ndarray, np.ndarray]:
    """Check that ``records`` are shards of one run of ``n`` items, and order them.

    Every record must have the same ``identity`` (a key that differs is named with both files and
    both values), hold indices in ``[0, n)``, none held twice (the two files are named with the
    indices they share), and, unless ``allow_partial``, every index must be held (the missing ones
    are named as ranges, with the shards they are when the files say their shard count).

    Returns
    -------
    order : numpy.ndarray
        int64 [m]: the permutation that puts the concatenated indices of ``records`` (in the
        order given) in increasing order.
    missing : numpy.ndarray
        int64: the indices no record holds (empty for a complete set).
    """
    if not records:
        raise ValueError(f"no {what} to join")
    first = records[0]
    mine = _flatten(first.identity)
    for rec in records[1:]:
        theirs = _flatten(rec.identity)
        for key in [*mine, *(k for k in theirs if k not in mine)]:  # the first's order
            a, b = mine.get(key), theirs.get(key)
            if _differs(a, b):
                raise ValueError(
                    f"cannot join {what} of different runs: {key} differs: {first.path!r} has "
                    f"{a!r}, {rec.path!r} has {b!r}"
                )
    owner = np.concatenate(
        [np.full(r.indices.shape[0], i, dtype=np.int64) for i, r in enumerate(records)]
    )
    index = np.concatenate([np.asarray(r.indices, dtype=np.int64) for r in records])
    bad = (index < 0) | (index >= n)
    if bad.any():
        f = records[int(owner[np.argmax(bad)])].path
        raise ValueError(
            f"{f!r} holds indices outside 0..{n - 1} ({format_ranges(np.unique(index[bad]))}) "
            f"for a run of n = {n}"
        )
    order = np.argsort(index, kind="stable")
    ordered = index[order]
    twice = np.flatnonzero(np.diff(ordered) == 0)
    if twice.size:
        i = twice[0]
        a, b = sorted({int(owner[order[i]]), int(owner[order[i + 1]])})
        both = np.intersect1d(records[a].indices, records[b].indices)
        where = (
            f"{records[a].path!r} and {records[b].path!r} both hold"
            if a != b
            else f"{records[a].path!r} holds twice"
        )
        raise ValueError(
            f"cannot join {what}: overlapping indices: {where} indices {format_ranges(both)} "
            f"({both.size if a != b else 'some'} of them); each index must come from one shard"
        )
    missing = np.setdiff1d(np.arange(n, dtype=np.int64), ordered, assume_unique=True)
    if missing.size and not allow_partial:
        counts = {r.shard[1] for r in records if r.shard is not None}
        shards = ""
        if len(counts) == 1:
            count = counts.pop()
            held = {r.shard for r in records}
            lost = [k for k in range(count) if (k, count) not in held]
            if lost:
                shards = f" (shard{'s' if len(lost) > 1 else ''} {_shard_list(lost, count)})"
        raise ValueError(
            f"incomplete {what}: {missing.size} of {n} indices missing: "
            f"{format_ranges(missing)}{shards}{partial_hint}"
        )
    return order, missing


def _shard_list(ks: list[int], count: int, limit: int = 8) -> str:
    shown = ", ".join(f"{k}/{count}" for k in ks[:limit])
    return shown + (f" and {len(ks) - limit} more" if len(ks) > limit else "")


# -- sample files ----------------------------------------------------------------------------


def _scalar(v: np.ndarray) -> Any:
    v = np.asarray(v)
    if v.ndim == 0:
        return v.item()
    return v.tolist()


def read_sample_file(
    path: str | os.PathLike[str], key: str = "images"
) -> tuple[np.ndarray, dict[str, Any]]:
    """The uint8 images [N, C, H, W] under ``key`` in an .npz file, and every other entry as
    a plain value (``indices`` stays an int64 array).

    Raises
    ------
    FileNotFoundError
        No such file.
    ValueError
        An empty or unreadable file, no ``key`` array, no images, or not uint8 [N, C, H, W].
    """
    from ..data.npz import open_npz

    p = os.fspath(path)
    if not Path(p).exists():
        raise FileNotFoundError(f"no such sample file: {p!r}")
    with open_npz(p, "sample file") as npz:
        keys = list(npz.files)
        try:
            images = npz[key] if key in keys else None
            info = {k: npz[k] for k in keys if k != key}
        except (OSError, EOFError, ValueError, zipfile.BadZipFile) as exc:
            raise ValueError(f"cannot read the sample file {p!r}: {exc}") from None
    if images is None:
        raise ValueError(
            f"the sample file {p!r} has no {key!r} array (it holds {keys}); `refdiff sample` "
            "writes the uint8 images under 'images'"
        )
    if images.dtype != np.uint8 or images.ndim != 4:
        raise ValueError(
            f"the samples in {p!r} must be uint8 images [N, C, H, W], got {images.dtype} "
            f"{list(images.shape)}"
        )
    if images.shape[0] == 0:
        raise ValueError(f"the sample file {p!r} holds no images (shape {list(images.shape)})")
    meta = {
        k: (np.asarray(v, dtype=np.int64) if k == "indices" else _scalar(v))
        for k, v in info.items()
    }
    if "indices" in meta and meta["indices"].shape != (images.shape[0],):
        raise ValueError(
            f"the sample file {p!r} holds {images.shape[0]} images but "
            f"{meta['indices'].shape} indices"
        )
    return images, meta


@dataclass(frozen=True)
class JoinedSamples:
    """Sample files joined into one set: the ``images`` (uint8 [m, C, H, W]) in index order,
    their ``indices``, the run's ``identity`` (empty for one file without a record), the
    ``paths``, the run's ``n`` and the ``missing`` indices (empty for a complete run)."""

    images: np.ndarray
    indices: np.ndarray
    identity: Mapping[str, Any]
    paths: tuple[str, ...]
    n: int
    missing: np.ndarray

    def describe(self) -> dict[str, Any]:
        """JSON-ready: what a report says about the samples it scored."""
        first = self.paths[0]
        return {
            "path": first if len(self.paths) == 1 else f"{first} and {len(self.paths) - 1} more",
            "paths": list(self.paths),
            "num_samples": int(self.images.shape[0]),
            "n": self.n,
            "missing": int(self.missing.size),
            "missing_indices": format_ranges(self.missing) if self.missing.size else None,
            **{k: v for k, v in self.identity.items()},
        }


def join_sample_files(
    paths: Sequence[str | os.PathLike[str]],
    *,
    allow_partial: bool = False,
    partial_hint: str = "",
    key: str = "images",
) -> JoinedSamples:
    """Read the sample files ``paths`` (shards of one run, as ``refdiff sample --shard`` writes
    them; the images under ``key``) and join them in index order; see :func:`check_shards` for
    what is refused.

    One file is taken as it is, whatever it records (an .npz of images of any origin). Several
    files must each record the run (:data:`SAMPLE_IDENTITY`: the model's fingerprint, seed,
    sampler, steps, spacing, options, n) and their indices.
    """
    files = [os.fspath(p) for p in paths]
    if not files:
        raise ValueError("no sample files given")
    read = [(f, *read_sample_file(f, key)) for f in files]
    shapes = {tuple(images.shape[1:]) for _, images, _ in read}
    if len(shapes) > 1:
        raise ValueError(f"the sample files hold images of different shapes {sorted(shapes)}")
    if len(read) == 1:
        f, images, meta = read[0]
        identity = {k: meta[k] for k in SAMPLE_IDENTITY if k in meta}
        n = int(meta.get("n", len(images)))
        if "indices" not in meta or "n" not in meta:
            idx = np.arange(images.shape[0], dtype=np.int64)
            return JoinedSamples(images, idx, identity, (f,), images.shape[0], idx[:0])
        records = [ShardRecord(f, identity, meta["indices"], _shard_of(meta))]
    else:
        records = []
        for f, _images, meta in read:
            absent = [k for k in (*SAMPLE_IDENTITY, "indices") if k not in meta]
            if absent:
                raise ValueError(
                    f"cannot join {f!r} with other sample files: it does not record {absent} "
                    "(files written by `refdiff sample` of this version record them)"
                )
            identity = {k: meta[k] for k in SAMPLE_IDENTITY}
            records.append(ShardRecord(f, identity, meta["indices"], _shard_of(meta)))
        n = int(records[0].identity["n"])
    order, missing = check_shards(
        records, n, what="sample files", allow_partial=allow_partial, partial_hint=partial_hint
    )
    images = np.concatenate([im for _, im, _ in read])[order]
    indices = np.concatenate([r.indices for r in records])[order]
    return JoinedSamples(images, indices, dict(records[0].identity), tuple(files), n, missing)


def _shard_of(meta: Mapping[str, Any]) -> tuple[int, int] | None:
    s = meta.get("shard")
    if isinstance(s, list) and len(s) == 2:
        try:
            return parse_shard((int(s[0]), int(s[1])))
        except (TypeError, ValueError):
            return None
    return None
