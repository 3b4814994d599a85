"""The 8x8 handwritten digits shipped with scikit-learn (nothing is downloaded)."""

from __future__ import annotations

import numpy as np

from .._deps import require
from .dataset import ImageDataset, check_nonneg_int, check_split

__all__ = ["load_digits"]


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
    split = check_split(split)
    if not isinstance(test_fraction, int | float) or not 0.0 < float(test_fraction) < 1.0:
        raise ValueError(f"test_fraction must lie in (0, 1), got {test_fraction!r}")
    seed = check_nonneg_int(seed, "seed")

    # Imported here: scikit-learn is slow to import and only digits need it.
    require("sklearn", "data", "the digits dataset")
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
