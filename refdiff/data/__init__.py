"""Dataset readers that return NumPy arrays.

Every image reader returns an :class:`ImageDataset`: ``uint8`` images of shape ``[N, C, H, W]``
(256 grey levels per channel, as the discretized decoder expects) plus optional ``int64`` labels.
:func:`to_model_range` maps them into the model's ``[-1, 1]`` and :func:`from_model_range` maps
samples back. The readers, one module each:

* :mod:`.digits`: the 8x8 digits shipped with scikit-learn (nothing downloaded);
* :mod:`.folder`: folders of PNG/JPEG/BMP/WebP files (Pillow);
* :mod:`.npz`: ``.npz`` archives;
* :mod:`.cifar10`: CIFAR-10 "python version" batches, as a folder or a ``.tar.gz``;

and :func:`load_dataset` picks one from a string. This package stands apart from the rest of
refdiff: it imports neither torch nor the diffusion core, so any process (training, evaluation,
the torch-free sampler) can use it. A new reader is a module here plus a branch in
:func:`load_dataset`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .cifar10 import is_cifar10_source, load_cifar10
from .dataset import (
    SPLITS,
    ImageDataset,
    check_split,
    check_uint8_images,
    from_model_range,
    random_horizontal_flip,
    to_model_range,
)
from .digits import load_digits
from .folder import IMAGE_SUFFIXES, load_image_folder
from .npz import load_npz

__all__ = [
    "DEFAULT_HOLDOUT",
    "IMAGE_SUFFIXES",
    "SPLITS",
    "ImageDataset",
    "check_uint8_images",
    "from_model_range",
    "has_test_split",
    "load_cifar10",
    "load_dataset",
    "load_digits",
    "load_image_folder",
    "load_npz",
    "random_horizontal_flip",
    "split_holdout",
    "to_model_range",
]


#: The share of an image folder's or a ``.npz`` file's images held out for evaluation.
DEFAULT_HOLDOUT = 0.05
# The hold-out permutation's seed is fixed (it is NumPy's SeedSequence([7]), the trainer's
# hold-out stream): every run and every `refdiff eval` hold out the same images of a source.
_HOLDOUT_SEED = int(np.random.SeedSequence([7]).generate_state(1, np.uint64)[0])


def has_test_split(spec: str) -> bool:
    """True for sources with their own test split (the digits, CIFAR-10); image folders and
    ``.npz`` files hold out a share of their images instead (:func:`split_holdout`)."""
    return spec == "digits" or is_cifar10_source(spec)


def split_holdout(
    images: np.ndarray, fraction: float = DEFAULT_HOLDOUT, *, source: str = "the data"
) -> tuple[np.ndarray, np.ndarray]:
    """``(train, held_out)``: ``max(1, round(fraction · N))`` images chosen by a fixed seeded
    permutation are held out, the rest are for training; both keep the source's order."""
    if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not 0 < fraction < 1:
        raise ValueError(f"the hold-out fraction must lie in (0, 1), got {fraction!r}")
    n = len(images)
    n_held = max(1, round(fraction * n))
    if n - n_held < 1:
        raise ValueError(
            f"{source} holds {n} image(s): too few to hold {n_held} out for evaluation and "
            "train on the rest"
        )
    perm = np.random.default_rng(_HOLDOUT_SEED).permutation(n)
    return images[np.sort(perm[n_held:])], images[np.sort(perm[:n_held])]


def load_dataset(
    spec: str,
    *,
    split: str = "train",
    image_size: int | None = None,
    channels: int = 3,
    holdout_fraction: float = DEFAULT_HOLDOUT,
    value_range: tuple[float, float] | None = None,
    npz_key: str | None = None,
) -> ImageDataset:
    """Load a dataset named by a string.

    Parameters
    ----------
    spec : str
        ``"digits"`` (:func:`load_digits`); a ``.npz`` file (:func:`load_npz`); a ``.tar.gz`` /
        ``.tgz`` / ``.tar`` or a folder holding CIFAR-10 batches (:func:`load_cifar10`); any other
        folder (:func:`load_image_folder`).
    split : {"train", "test", "all"}
        For digits and CIFAR-10 as in those readers. An image folder or ``.npz`` file has no split
        of its own: "test" is its held-out share (``holdout_fraction`` of the images, a fixed
        permutation: the images the trainer holds out), "train" the rest, "all" every image.
    image_size : int, optional
        For image folders: resize and centre-crop to this size. For the other sources, which
        cannot be resized, it is only checked: it must be None or equal their size.
    channels : {3, 1}
        For image folders only: RGB or greyscale. The other sources keep their own channels.
    holdout_fraction : float
        The held-out share of a source without a test split.
    value_range : (lo, hi), optional
        For ``.npz`` files: the range the stored values lie in (see :func:`load_npz`).
    npz_key : str, optional
        For ``.npz`` files: the array holding the images (:func:`load_npz`'s ``key``).

    Returns
    -------
    ImageDataset

    Raises
    ------
    FileNotFoundError
        If ``spec`` is neither ``"digits"`` nor an existing path.
    ValueError
        As raised by the reader.
    """
    split = check_split(split)
    if spec == "digits":
        for name, value in (("a value range", value_range), ("an .npz key", npz_key)):
            if value is not None:
                raise ValueError(f"{name} applies to .npz files only, not to 'digits'")
        dataset = load_digits(split)
    else:
        path = Path(spec)
        if not path.exists():
            raise FileNotFoundError(
                f"no such file or folder: {spec!r} (built-in datasets: 'digits')"
            )
        is_npz = path.is_file() and path.suffix.lower() == ".npz"
        if value_range is not None and not is_npz:
            raise ValueError(f"a value range applies to .npz files only, not to {spec!r}")
        if npz_key is not None and not is_npz:
            raise ValueError(f"an .npz key applies to .npz files only, not to {spec!r}")
        if is_cifar10_source(path):
            dataset = load_cifar10(path, split=split)
        elif path.is_dir():
            dataset = load_image_folder(path, image_size=image_size, channels=channels)
        elif is_npz:
            dataset = load_npz(path, key=npz_key, value_range=value_range)
        else:
            raise ValueError(
                f"cannot tell the format of {spec!r}: expected 'digits', a .npz file, a CIFAR-10 "
                "folder or .tar.gz, or a folder of images"
            )
        if not is_cifar10_source(path) and split != "all":
            train, held = split_holdout(dataset.images, holdout_fraction, source=repr(spec))
            dataset = ImageDataset(
                held if split == "test" else train, None, f"{dataset.name} ({split})"
            )
    if image_size is not None and dataset.shape[1:] != (image_size, image_size):
        raise ValueError(
            f"image_size={image_size} but {dataset.name} images are "
            f"{dataset.shape[2]}x{dataset.shape[1]}; only image folders are resized"
        )
    return dataset
