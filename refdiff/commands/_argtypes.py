"""argparse ``type=`` converters shared by the subcommands (clear messages for bad numbers)."""

from __future__ import annotations

import argparse
import math


def non_negative_int(text: str) -> int:
    """An integer >= 0."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


def positive_int(text: str) -> int:
    """An integer >= 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer (>= 1), got {value}")
    return value


def value_range(text: str) -> tuple[float, float]:
    """``LO,HI`` -> (lo, hi), two finite numbers with lo < hi (e.g. ``0,1`` or ``-1,1``)."""
    parts = text.replace(" ", "").split(",")
    try:
        lo, hi = (float(p) for p in parts)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected two numbers LO,HI (the range the stored values lie in, e.g. 0,1), got {text!r}"
        ) from None
    if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
        raise argparse.ArgumentTypeError(f"expected LO < HI, both finite, got {text!r}")
    return lo, hi


def fraction(text: str) -> float:
    """A number strictly between 0 and 1."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number in (0, 1), got {text!r}") from None
    if not 0.0 < value < 1.0:
        raise argparse.ArgumentTypeError(f"must lie strictly between 0 and 1, got {text!r}")
    return value


def non_negative_float(text: str) -> float:
    """A finite number >= 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not (math.isfinite(value) and value >= 0):
        raise argparse.ArgumentTypeError(f"must be a finite number >= 0, got {text!r}")
    return value


def int_list(text: str) -> list[int]:
    """Comma-separated integers, e.g. ``1,2,2`` (empty text: an empty list)."""
    text = text.replace(" ", "").strip(",")
    if not text:
        return []
    try:
        return [int(v) for v in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated integers, got {text!r}"
        ) from None


def positive_int_list(text: str) -> tuple[int, ...]:
    """One or more comma-separated integers >= 1, e.g. ``1,3``."""
    values = int_list(text)
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected positive integers like 1,3, got {text!r}")
    return tuple(values)


def shard(text: str) -> tuple[int, int]:
    """``K/N`` -> (K, N), or ``auto``: the shard from the launcher's environment (torchrun,
    Slurm, MPI; :func:`refdiff.runtime.sampling.shard_from_environment`)."""
    from ..runtime.sampling import parse_shard

    try:
        return parse_shard(text)  # type: ignore[return-value]
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
