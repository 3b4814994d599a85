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
    "IMAGE_SUFFIXES",
    "SPLITS",
    "ImageDataset",
    "check_uint8_images",
    "from_model_range",
    "load_cifar10",
    "load_dataset",
    "load_digits",
    "load_image_folder",
    "load_npz",
    "random_horizontal_flip",
    "to_model_range",
]


def load_dataset(
    spec: str, *, split: str = "train", image_size: int | None = None, channels: int = 3
) -> ImageDataset:
    """Load a dataset named by a string.

    Parameters
    ----------
    spec : str
        ``"digits"`` (:func:`load_digits`); a ``.npz`` file (:func:`load_npz`); a ``.tar.gz`` /
        ``.tgz`` / ``.tar`` or a folder holding CIFAR-10 batches (:func:`load_cifar10`); any other
        folder (:func:`load_image_folder`).
    split : {"train", "test", "all"}
        For digits and CIFAR-10 as in those readers. An image folder or ``.npz`` file has no
        split: "train" and "all" give every image, "test" is an error.
    image_size : int, optional
        For image folders: resize and centre-crop to this size. For the other sources, which
        cannot be resized, it is only checked: it must be None or equal their size.
    channels : {3, 1}
        For image folders only: RGB or greyscale. The other sources keep their own channels.

    Returns
    -------
    ImageDataset

    Raises
    ------
    FileNotFoundError
        If ``spec`` is neither ``"digits"`` nor an existing path.
    ValueError
        As raised by the reader, or for a split the source does not have.
    """
    split = check_split(split)
    if spec == "digits":
        dataset = load_digits(split)
    else:
        path = Path(spec)
        if not path.exists():
            raise FileNotFoundError(
                f"no such file or folder: {spec!r} (built-in datasets: 'digits')"
            )
        is_image_folder = path.is_dir() and not is_cifar10_source(path)
        is_npz = path.is_file() and path.suffix.lower() == ".npz"
        if (is_image_folder or is_npz) and split == "test":
            raise ValueError(f"{spec!r} has no test split; use split='train' or 'all'")
        if is_image_folder:
            return load_image_folder(path, image_size=image_size, channels=channels)
        if is_npz:
            dataset = load_npz(path)
        elif is_cifar10_source(path):
            dataset = load_cifar10(path, split=split)
        else:
            raise ValueError(
                f"cannot tell the format of {spec!r}: expected 'digits', a .npz file, a CIFAR-10 "
                "folder or .tar.gz, or a folder of images"
            )
    if image_size is not None and dataset.shape[1:] != (image_size, image_size):
        raise ValueError(
            f"image_size={image_size} but {dataset.name} images are "
            f"{dataset.shape[2]}x{dataset.shape[1]}; only image folders are resized"
        )
    return dataset
