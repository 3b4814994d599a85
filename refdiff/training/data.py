"""The training data: the train / held-out split, and the order the trainer reads it in.

Digits and CIFAR-10 train on their train split and evaluate on their test split; image folders and
``.npz`` files hold out a fixed fraction of their images (:func:`load_training_data`). The data
stream (:class:`DataOrder`) is the concatenation of one seeded permutation of the training set per
epoch, so the global batch at step s is a pure function of (seed, s), the same on every process
and after a resume.

NumPy only: no torch.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..data import has_test_split, load_dataset, split_holdout
from ..runs.train_config import TrainConfig

__all__ = ["DataOrder", "Purpose", "derive_seed", "load_training_data"]


class Purpose:
    """The independent random streams of a run, each seeded by ``derive_seed(seed, purpose)``."""

    # 7 was the hold-out permutation's: refdiff.data.split_holdout keeps that seed
    INIT, DATA, HOST, NOISE, DROPOUT, SAMPLES = range(1, 7)


def derive_seed(*words: int) -> int:
    """A 64-bit seed derived from integers (NumPy's SeedSequence hashing)."""
    return int(np.random.SeedSequence([int(w) for w in words]).generate_state(1, np.uint64)[0])


def load_training_data(config: TrainConfig) -> tuple[np.ndarray, np.ndarray, str]:
    """``(train_uint8, heldout_uint8, name)`` for a config, checked against the U-Net's shape.

    Digits and CIFAR-10 use their train and test splits; other sources hold out
    ``holdout_fraction`` of their images (:func:`refdiff.data.split_holdout`: a fixed permutation,
    the same for every seed and for ``refdiff eval --split test``).
    """
    spec = config.data
    c = config.unet.in_channels
    try:
        if has_test_split(spec):
            # an .npz option given for these sources is refused by load_dataset, not ignored
            npz_options: dict[str, Any] = {
                "value_range": config.value_range,
                "npz_key": config.npz_key,
            }
            train = load_dataset(spec, split="train", **npz_options)
            held = load_dataset(spec, split="test", **npz_options)
            name = train.name
            train_u8, held_u8 = train.images, held.images
        else:
            ds = load_dataset(
                spec,
                split="all",
                image_size=config.image_size,
                channels=c if c in (1, 3) else 3,
                value_range=config.value_range,
                npz_key=config.npz_key,
            )
            train_u8, held_u8 = split_holdout(ds.images, config.holdout_fraction, source=repr(spec))
            name = ds.name
    except (ValueError, FileNotFoundError) as exc:
        raise type(exc)(f"cannot load the training data {spec!r}: {exc}") from exc
    got = tuple(train_u8.shape[1:])
    if got != config.image_shape:
        raise ValueError(
            f"the data {name!r} are {got[0]}x{got[1]}x{got[2]} (channels x height x width) but the "
            f"U-Net expects {'x'.join(map(str, config.image_shape))}: pick a matching --preset, "
            "set unet.in_channels / unet.image_size, or for an image folder pass --image-size "
            "and --channels"
        )
    return np.ascontiguousarray(train_u8), np.ascontiguousarray(held_u8), name


class DataOrder:
    """Which training images make up the global batch at each step.

    Epoch e is a permutation of the N training images seeded by (seed, e); the stream of images
    is the concatenation of the epochs, and the batch at step s is positions s·B … s·B+B-1.
    """

    def __init__(self, num_images: int, batch_size: int, seed: int) -> None:
        if num_images < 1:
            raise ValueError(f"need at least one training image, got {num_images}")
        self.num_images, self.batch_size, self.seed = num_images, batch_size, seed
        self._cache: dict[int, np.ndarray] = {}

    def permutation(self, epoch: int) -> np.ndarray:
        perm = self._cache.get(epoch)
        if perm is None:
            rng = np.random.default_rng(derive_seed(self.seed, Purpose.DATA, epoch))
            perm = rng.permutation(self.num_images)
            self._cache = {e: p for e, p in self._cache.items() if e >= epoch - 1}
            self._cache[epoch] = perm
        return perm

    def batch_indices(self, step: int) -> np.ndarray:
        """Training-set indices of the global batch at ``step`` (every process agrees)."""
        B, N = self.batch_size, self.num_images
        pos = step * B + np.arange(B, dtype=np.int64)
        epochs, within = pos // N, pos % N
        out = np.empty(B, dtype=np.int64)
        for e in np.unique(epochs):
            sel = epochs == e
            out[sel] = self.permutation(int(e))[within[sel]]
        return out
