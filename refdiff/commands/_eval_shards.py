"""``refdiff eval`` at scale: several sample files joined into one set, the bound over a shard
of the images written as a partial result (``--shard K/N`` or ``auto``), and the partial
results merged into the report of one run (``--merge``). See docs/scale.md.

Nothing heavy at module level: ``refdiff --help`` stays instant.
"""

from __future__ import annotations

import argparse
import hashlib
import sys
import time
from pathlib import Path
from typing import Any

from ._argtypes import shard

__all__ = [
    "add_arguments",
    "check_shard_output",
    "images_sha256",
    "join_samples",
    "merged_report",
    "note_other_model",
    "save_shard",
]

SAMPLES_HINT = "; pass --allow-partial to score the samples present (the report names the rest)"
PARTS_HINT = (
    "; pass --allow-partial for the figures of the images present (the report names the rest)"
)


def add_arguments(p: argparse.ArgumentParser) -> None:
    """``--shard``, ``--merge`` and ``--allow-partial``."""
    p.add_argument(
        "--shard",
        metavar="K/N|auto",
        type=shard,
        default=None,
        help="score only shard K (from 0) of N of the images (a contiguous block, as `refdiff "
        "sample --shard`) and write its per-image results to --out (an .npz, named "
        "OUT-shardKKofNN.npz); 'auto': the shard from the launcher (torchrun, a Slurm array, "
        "srun, MPI). Join the shards with --merge",
    )
    p.add_argument(
        "--merge",
        metavar="PART",
        nargs="+",
        default=None,
        help="join the partial results of `refdiff eval --shard` (files or a quoted glob, e.g. "
        "'parts/eval-shard*.npz') into the report of one run over all the images, bit for bit; "
        "the data options are recorded in the parts, and MODEL, if given, is checked against "
        "them",
    )
    p.add_argument(
        "--allow-partial",
        action="store_true",
        help="with --samples or --merge: when some indices of the run are missing, report on "
        "those present (the report says which are missing) instead of stopping",
    )


def join_samples(args: argparse.Namespace) -> Any:
    """The ``--samples`` files (several, or a glob) joined in index order, or None."""
    from ..runtime.shards import expand_paths, join_sample_files

    if args.samples is None:
        return None
    paths = expand_paths(args.samples, "sample file")
    joined = join_sample_files(
        paths,
        key=getattr(args, "samples_key", "images"),
        allow_partial=args.allow_partial,
        partial_hint=SAMPLES_HINT,
    )
    if joined.missing.size:
        print(
            f"note: a partial set of samples: {joined.missing.size} of {joined.n} missing "
            f"({joined.describe()['missing_indices']}); the figures are those of the "
            f"{joined.images.shape[0]} present",
            file=sys.stderr,
        )
    return joined


def note_other_model(joined: Any, fingerprint: str) -> None:
    """Say so (on stderr) when the samples record another model than the one evaluated."""
    theirs = joined.identity.get("model_fingerprint")
    if theirs is not None and theirs != fingerprint:
        print(
            f"note: the samples were drawn from another model (sha256 {str(theirs)[:12]}…) than "
            f"MODEL (sha256 {fingerprint[:12]}…): an exported variant, say",
            file=sys.stderr,
        )


def check_shard_output(args: argparse.Namespace) -> Path | None:
    """The partial result's path of a ``--shard`` run (checked before any work), else None;
    the options a shard cannot honour are errors."""
    from .._io import check_output_file
    from ..runtime.shards import shard_path

    if args.merge is not None:
        if args.shard is not None or args.samples is not None:
            raise ValueError(
                "--merge joins the bound's partial results only; score the samples in a run of "
                "their own (refdiff eval MODEL --samples ... --no-full --mc-draws 0)"
                if args.samples is not None
                else "--merge and --shard do not go together: shard first, then merge"
            )
        return None
    if args.shard is None:
        return None
    if args.out is None or Path(args.out).suffix.lower() != ".npz":
        raise ValueError(
            "--shard writes the shard's per-image results for --merge: give --out PART.npz "
            f"(the shard is added to the name: PART-shard02of08.npz), got {args.out!r}"
        )
    if args.samples is not None or args.plot_terms is not None:
        raise ValueError(
            "--shard scores the bound only: score --samples in a run of their own, and plot the "
            "terms (--plot-terms) when merging"
        )
    if args.no_full and args.mc_draws == 0:
        raise ValueError("nothing to evaluate: --no-full together with --mc-draws 0")
    path = shard_path(args.out, args.shard)
    check_output_file(path, suffix=".npz", what="--out partial result")
    return path


def images_sha256(images: Any) -> str:
    """The sha256 of uint8 images' bytes (C order): which images a shard scored."""
    import numpy as np

    return hashlib.sha256(np.ascontiguousarray(images).tobytes()).hexdigest()


def save_shard(
    args: argparse.Namespace,
    path: Path,
    scores: Any,
    *,
    identity: dict[str, Any],
    about: dict[str, Any],
    num_images: int,
) -> None:
    """Write a shard's scores and say what it holds and how to merge."""
    from ..evaluation.shards import save_partial
    from ..runtime.shards import format_ranges, shard_glob

    k, n = args.shard
    save_partial(path, scores, shard=(k, n), num_images=num_images, identity=identity, about=about)
    b = scores.bound.summary() if scores.bound is not None else {}
    figures = ", ".join(
        f"{name} {b[key]:.4f}"
        for name, key in (("full bound", "bpd_full"), ("Monte-Carlo", "bpd_mc"))
        if b.get(key) is not None
    )
    print(
        f"shard {k}/{n}: images {format_ranges(scores.indices)} of {num_images}; bits/dim of "
        f"this shard alone: {figures}\nwrote {path}\nwhen every shard is done: refdiff eval "
        f"--merge '{shard_glob(path, (k, n))}' --out report.json"
    )


def merged_report(args: argparse.Namespace) -> dict[str, Any]:
    """The report of one run over all the images, from the ``--merge`` files."""
    from ..evaluation.shards import merge_partials
    from ..runtime.shards import expand_paths, format_ranges

    t0 = time.perf_counter()
    paths = expand_paths(args.merge, "partial result")
    scores, identity, parts, missing = merge_partials(
        paths, allow_partial=args.allow_partial, partial_hint=PARTS_HINT
    )
    if args.model is not None:
        from ..models import open_model

        fingerprint = open_model(args.model).fingerprint
        if fingerprint != identity["model"]["fingerprint"]:
            raise ValueError(
                f"the partial results are of another model (sha256 "
                f"{identity['model']['fingerprint'][:12]}…) than {args.model!r} (sha256 "
                f"{fingerprint[:12]}…)"
            )
    about = parts[0].about
    n = int(identity["num_images"])
    if missing.size:
        print(
            f"note: partial results: {missing.size} of {n} images missing "
            f"({format_ranges(missing)}); the figures are those of the "
            f"{scores.indices.size} present",
            file=sys.stderr,
        )
    data = {"spec": about.get("data_spec"), **identity["data"]}
    data["num_images"] = int(scores.indices.size)
    report = {
        "model": {**about["model"], "fingerprint": identity["model"]["fingerprint"]},
        "diffusion": identity["diffusion"],
        "data": data,
        **scores.report(),
        "sample_quality": None,
        "samples": None,
        "merged": {
            "files": [p.path for p in parts],
            "shards": [list(p.shard) for p in parts],
            "num_images": n,
            "missing": int(missing.size),
            "missing_indices": format_ranges(missing) if missing.size else None,
        },
        "seconds": {**scores.seconds, "merge": time.perf_counter() - t0},
    }
    return report
