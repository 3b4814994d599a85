"""Evaluation of diffusion models: bits/dim through the bound, sample quality, toy-mixture checks.

- :mod:`.evaluate`: :func:`evaluate`, the one entry point (the trainer, ``refdiff eval`` and
  ``refdiff demo`` call it);
- :mod:`.likelihood`: held-out bits/dim through the core's bound;
- :mod:`.quality`: Fréchet distance, classifier confidence and coverage, memorisation;
- :mod:`.classifier`: the small digits classifier whose features the Fréchet distance uses;
- :mod:`.toys`: exact checks on Gaussian-mixture toys;
- :mod:`.shards`: a shard's per-image scores and the partial files ``refdiff eval --shard``
  writes and ``--merge`` joins;
- :mod:`.drift`: the drift harness, a reduced-precision variant against float32 step by step;
- :mod:`.cli`: the ``refdiff eval`` command (which imports torch only for a PyTorch checkpoint).

NumPy and SciPy only: no torch. See docs/evaluation.md.
"""

from __future__ import annotations

from .classifier import DigitsClassifier, digits_classifier, train_digits_classifier
from .drift import DriftReport, measure_drift
from .evaluate import evaluate, score_images
from .likelihood import BoundParts, bits_per_dim, bound_parts, importance_timestep_probs
from .quality import (
    digits_sample_quality,
    frechet_distance,
    frechet_distance_gaussians,
    memorisation_report,
    nearest_neighbour_distances,
)
from .shards import ImageScores, merge_partials, read_partial, save_partial
from .toys import toy_bound_gap, toy_mixture_report

__all__ = [
    "BoundParts",
    "DigitsClassifier",
    "DriftReport",
    "ImageScores",
    "bits_per_dim",
    "bound_parts",
    "digits_classifier",
    "digits_sample_quality",
    "evaluate",
    "frechet_distance",
    "frechet_distance_gaussians",
    "importance_timestep_probs",
    "measure_drift",
    "memorisation_report",
    "merge_partials",
    "nearest_neighbour_distances",
    "read_partial",
    "save_partial",
    "score_images",
    "toy_bound_gap",
    "toy_mixture_report",
    "train_digits_classifier",
]
