"""Evaluation of diffusion models: bits/dim through the bound, sample quality, toy-mixture checks.

NumPy only (no torch): :mod:`.metrics` holds the measures, :mod:`.classifier` the small digits
classifier whose features the Fréchet distance uses, and :mod:`.cli` the ``refdiff eval`` command
(which imports torch only to evaluate a PyTorch checkpoint). See docs/evaluation.md.
"""

from __future__ import annotations

from .classifier import DigitsClassifier, digits_classifier, train_digits_classifier
from .metrics import (
    bits_per_dim,
    digits_sample_quality,
    frechet_distance,
    frechet_distance_gaussians,
    importance_timestep_probs,
    memorisation_report,
    nearest_neighbour_distances,
    to_jsonable,
    toy_bound_gap,
    toy_mixture_report,
)

__all__ = [
    "DigitsClassifier",
    "bits_per_dim",
    "digits_classifier",
    "digits_sample_quality",
    "frechet_distance",
    "frechet_distance_gaussians",
    "importance_timestep_probs",
    "memorisation_report",
    "nearest_neighbour_distances",
    "to_jsonable",
    "toy_bound_gap",
    "toy_mixture_report",
    "train_digits_classifier",
]
