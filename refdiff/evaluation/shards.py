"""The per-image scores of an evaluation, and the files that shards of one evaluation write.

:class:`ImageScores` holds what :func:`~refdiff.evaluation.evaluate.score_images` computes for a
set of images (or a shard of them): the bound's per-image pieces (:class:`BoundParts`), the
baseline's bits/dim per image, their global indices. :meth:`ImageScores.report` averages them;
the trainer's processes join theirs with a gather (:meth:`ImageScores.join`), and processes that
share nothing (``refdiff eval --shard K/N``, one per GPU or per job) write them with
:func:`save_partial`; :func:`merge_partials` reads such files, checks that they are shards of
one evaluation (same model fingerprint, data, split, images, seed, method) covering every image
once, and joins them in image order. Every average is taken over the joined per-image arrays in
image order, so the merged figures equal those of one process over all images, bit for bit.

A partial file is an ``.npz`` (per-image terms are float64 [m, T]: binary and exact):

================  =============================================================
``format``        ``refdiff.partial_evaluation/1``
``identity``      JSON: what every shard must share (model fingerprint, settings,
                  data spec and split, number of images, seed, method)
``about``         JSON: what was run where (model path, device, seconds)
``shard``         int64 [2]: K, N
``indices``       int64 [m]: the global indices of the shard's images
``baseline_bpd``  float64 [m]: the independent-pixel baseline per image
``bound_meta``    JSON: the scalar fields of :class:`BoundParts` (absent when
                  the bound was not computed)
``bound_<name>``  float64: its per-image arrays (``total``, ``terms`` [m, T], ...)
================  =============================================================

No torch here.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .._io import make_dir, to_jsonable, write_npz
from ..runtime.shards import ShardRecord, check_shards
from .likelihood import BoundParts

__all__ = ["FORMAT", "ImageScores", "Partial", "merge_partials", "read_partial", "save_partial"]

#: The format tag of a partial evaluation file.
FORMAT = "refdiff.partial_evaluation/1"


@dataclass
class ImageScores:
    """The scores of a set of images (:func:`~refdiff.evaluation.score_images`), per image.

    Attributes
    ----------
    indices : int64 array [m]
        The images' global indices.
    bound : BoundParts or None
        The bound's pieces per image; None when it was not computed.
    baseline_bpd : float64 array [m]
        The independent-pixel baseline's bits/dim.
    timestep_probs : float64 array [T] or None
        The Monte-Carlo estimate's timestep distribution (None: the schedule's).
    seconds : dict of str to float
        How long each part took.
    """

    indices: np.ndarray
    bound: BoundParts | None
    baseline_bpd: np.ndarray
    timestep_probs: np.ndarray | None = None
    seconds: dict[str, float] = field(default_factory=dict)

    def join(self, gather: Callable[[np.ndarray], np.ndarray]) -> ImageScores:
        """The scores of every process: ``gather`` concatenates an array over the processes in
        rank order (their shards are consecutive blocks, so that is image order)."""
        return dataclasses.replace(
            self,
            indices=gather(self.indices).astype(np.int64),
            bound=None if self.bound is None else self.bound.join(gather),
            baseline_bpd=gather(self.baseline_bpd),
        )

    @classmethod
    def concat(cls, parts: Sequence[ImageScores]) -> ImageScores:
        """Several shards' scores, concatenated in the order given (the seconds summed)."""
        first = parts[0]
        bounds = [p.bound for p in parts]
        seconds: dict[str, float] = {}
        for p in parts:
            for k, v in p.seconds.items():
                seconds[k] = seconds.get(k, 0.0) + v
        return cls(
            np.concatenate([p.indices for p in parts]),
            None if first.bound is None else BoundParts.concat(bounds),  # type: ignore[arg-type]
            np.concatenate([p.baseline_bpd for p in parts]),
            first.timestep_probs,
            seconds,
        )

    def take(self, order: np.ndarray) -> ImageScores:
        """The scores with the images reordered by ``order`` (int [m])."""
        bound = self.bound
        if bound is not None:
            bound = dataclasses.replace(
                bound,
                **{
                    k: getattr(bound, k)[order]
                    for k in BoundParts.PER_IMAGE
                    if getattr(bound, k) is not None
                },
            )
        return dataclasses.replace(
            self, indices=self.indices[order], bound=bound, baseline_bpd=self.baseline_bpd[order]
        )

    def report(self) -> dict[str, Any]:
        """``bits_per_dim`` (:meth:`BoundParts.summary`, None without the bound) and
        ``baseline`` (mean bits/dim and its standard error over the images)."""
        base = self.baseline_bpd
        return {
            "bits_per_dim": None if self.bound is None else self.bound.summary(),
            "baseline": {
                "name": "independent pixels (discretized Gaussian per position, fitted on train)",
                "bpd": float(base.mean()),
                "bpd_stderr": float(base.std(ddof=1) / np.sqrt(base.size))
                if base.size > 1
                else None,
            },
        }

    def method(self) -> dict[str, Any]:
        """What a shard's scores must share with the other shards': which parts of the bound,
        its seed, draws and timestep distribution (by the sha256 of its float64 bytes)."""
        b = self.bound
        probs = self.timestep_probs
        return {
            "full": b is not None and b.total is not None,
            "num_draws": 0 if b is None or b.mc_estimate is None else b.num_draws,
            "seed": None if b is None else b.seed,
            "mc_timesteps": None if b is None or b.mc_estimate is None else b.mc_timesteps,
            "timestep_probs_sha256": None
            if probs is None
            else hashlib.sha256(
                np.ascontiguousarray(probs, dtype=np.float64).tobytes()
            ).hexdigest(),
        }


@dataclass(frozen=True)
class Partial:
    """A partial evaluation read from a file: its ``path``, ``scores``, ``shard`` (K, N),
    ``identity`` (what all shards share) and ``about`` (what was run where)."""

    path: str
    scores: ImageScores
    shard: tuple[int, int]
    identity: Mapping[str, Any]
    about: Mapping[str, Any]


def save_partial(
    path: str | os.PathLike[str],
    scores: ImageScores,
    *,
    shard: tuple[int, int],
    num_images: int,
    identity: Mapping[str, Any],
    about: Mapping[str, Any] | None = None,
) -> None:
    """Write a shard's ``scores`` as a partial evaluation file (``.npz``, whole or not at all).

    Parameters
    ----------
    path : str or PathLike
        The ``.npz`` file; its folder is created.
    scores : ImageScores
        The shard's scores.
    shard : (K, N)
        Which shard they are.
    num_images : int
        The images of the whole evaluation (all shards together).
    identity : mapping
        What identifies the evaluation (the model's fingerprint, its settings, the data spec and
        split); the scores' :meth:`~ImageScores.method` and ``num_images`` are added to it, and
        :func:`merge_partials` refuses files whose identities differ.
    about : mapping, optional
        Recorded with the scores, not compared between shards (``refdiff eval`` records the
        model's description and the data spec).
    """
    ident = {**identity, "num_images": int(num_images), "method": scores.method()}
    arrays: dict[str, Any] = {
        "format": np.asarray(FORMAT),
        "identity": np.asarray(json.dumps(to_jsonable(ident))),  # in order: checked so
        "about": np.asarray(json.dumps(to_jsonable(dict(about or {})), sort_keys=True)),
        "shard": np.asarray(shard, dtype=np.int64),
        "indices": np.asarray(scores.indices, dtype=np.int64),
        "baseline_bpd": np.asarray(scores.baseline_bpd, dtype=np.float64),
        "seconds": np.asarray(json.dumps(scores.seconds)),
    }
    if scores.timestep_probs is not None:
        arrays["timestep_probs"] = np.asarray(scores.timestep_probs, dtype=np.float64)
    if scores.bound is not None:
        meta = {}
        for f in dataclasses.fields(scores.bound):
            v = getattr(scores.bound, f.name)
            if f.name in BoundParts.PER_IMAGE:
                if v is not None:
                    arrays[f"bound_{f.name}"] = np.asarray(v)
            else:
                meta[f.name] = to_jsonable(v)
        arrays["bound_meta"] = np.asarray(json.dumps(meta))
    make_dir(Path(path).parent)
    write_npz(path, **arrays)


def read_partial(path: str | os.PathLike[str]) -> Partial:
    """Read a file written by :func:`save_partial`.

    Parameters
    ----------
    path : str or PathLike
        The ``.npz`` file.

    Returns
    -------
    Partial
        Its path, scores, shard, identity and ``about``.

    Raises
    ------
    ValueError
        For any other file, or a damaged one; the message names it.
    """
    from ..data.npz import open_npz

    p = os.fspath(path)
    with open_npz(p, "partial evaluation") as npz:
        keys = set(npz.files)
        tag = str(npz["format"]) if "format" in keys else None
        if tag != FORMAT:
            raise ValueError(
                f"{p!r} is not a partial evaluation written by `refdiff eval --shard` (format "
                f"{tag!r}, expected {FORMAT!r})"
            )
        try:
            identity = json.loads(str(npz["identity"]))
            about = json.loads(str(npz["about"]))
            seconds = json.loads(str(npz["seconds"]))
            k, n = (int(v) for v in npz["shard"])
            indices = np.asarray(npz["indices"], dtype=np.int64)
            base = np.asarray(npz["baseline_bpd"], dtype=np.float64)
            probs = npz["timestep_probs"] if "timestep_probs" in keys else None
            bound = None
            if "bound_meta" in keys:
                meta = json.loads(str(npz["bound_meta"]))
                names = {f.name: f for f in dataclasses.fields(BoundParts)}
                kwargs: dict[str, Any] = {
                    k2: tuple(v) if isinstance(v, list) else v
                    for k2, v in meta.items()
                    if k2 in names
                }
                for k2 in BoundParts.PER_IMAGE:
                    if f"bound_{k2}" in keys:
                        kwargs[k2] = np.asarray(npz[f"bound_{k2}"])
                bound = BoundParts(**kwargs)
        except (KeyError, ValueError, TypeError) as exc:
            raise ValueError(f"the partial evaluation {p!r} is damaged: {exc}") from None
    m = indices.shape[0]
    sizes = [base.shape[0]] + [
        getattr(bound, k).shape[0]
        for k in BoundParts.PER_IMAGE
        if bound is not None and getattr(bound, k) is not None
    ]
    if any(s != m for s in sizes):
        raise ValueError(f"the partial evaluation {p!r} is damaged: {m} indices, arrays of {sizes}")
    scores = ImageScores(indices, bound, base, probs, seconds)
    return Partial(p, scores, (k, n), identity, about)


def merge_partials(
    paths: Sequence[str | os.PathLike[str]],
    *,
    allow_partial: bool = False,
    partial_hint: str = "",
) -> tuple[ImageScores, Mapping[str, Any], list[Partial], np.ndarray]:
    """Read partial evaluation files and join them into the scores of the whole evaluation.

    They must share their identity (model fingerprint, settings, data, split, number of images,
    seed, method: a difference is named with both files), hold disjoint images and, unless
    ``allow_partial``, every image (the missing ones are named, with their shards).

    Parameters
    ----------
    paths : sequence of str or PathLike
        The partial evaluation files (:func:`save_partial`), in any order.
    allow_partial : bool
        Join what is there when images are missing, instead of refusing.
    partial_hint : str
        Appended to the error about missing images (how to allow them, for the command line).

    Returns
    -------
    scores, identity, partials, missing
        The joined :class:`ImageScores` in image order, the shared identity, the files read
        (in image order) and the indices missing (empty unless ``allow_partial``).
    """
    parts = [read_partial(p) for p in paths]
    if not parts:
        raise ValueError("no partial evaluation files to merge")
    records = [ShardRecord(p.path, p.identity, p.scores.indices, p.shard) for p in parts]
    n = int(parts[0].identity["num_images"])
    order, missing = check_shards(
        records,
        n,
        what="partial evaluations",
        allow_partial=allow_partial,
        partial_hint=partial_hint,
    )
    joined = ImageScores.concat([p.scores for p in parts]).take(order)
    parts.sort(key=lambda p: int(p.scores.indices.min()))
    return joined, parts[0].identity, parts, missing
