"""Tests of refdiff.data: every reader on small files made here, nothing downloaded."""

from __future__ import annotations

import codecs
import os
import pickle
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from refdiff import data
from refdiff.data import (
    ImageDataset,
    from_model_range,
    load_cifar10,
    load_dataset,
    load_digits,
    load_image_folder,
    load_npz,
    random_horizontal_flip,
    to_model_range,
)

# --------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------


def save_rgb(path: Path, pixels: np.ndarray, **kwargs: object) -> None:
    """Write an [H, W, 3] uint8 array as an image file (format from the suffix)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels, mode="RGB").save(path, **kwargs)


def solid(h: int, w: int, rgb: tuple[int, int, int]) -> np.ndarray:
    return np.broadcast_to(np.array(rgb, dtype=np.uint8), (h, w, 3)).copy()


CIFAR_PER_BATCH = 3


def fake_batch(index: int, n: int = CIFAR_PER_BATCH) -> dict[bytes, object]:
    """A batch in the real CIFAR-10 layout: uint8 data [n, 3072], labels a list of ints."""
    rng = np.random.default_rng(index)
    return {
        b"batch_label": f"batch {index}".encode(),
        b"data": rng.integers(0, 256, size=(n, 3072), dtype=np.uint8),
        b"labels": [int(v) for v in rng.integers(0, 10, size=n)],
        b"filenames": [f"img{index}_{i}.png".encode() for i in range(n)],
    }


CIFAR_NAMES = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]


def write_cifar_folder(folder: Path, names: list[str] = CIFAR_NAMES) -> dict[str, dict]:
    folder.mkdir(parents=True, exist_ok=True)
    batches = {name: fake_batch(i) for i, name in enumerate(CIFAR_NAMES) if name in names}
    for name, batch in batches.items():
        (folder / name).write_bytes(pickle.dumps(batch))
    return batches


def write_cifar_tar(archive: Path, source: Path, arcname: str) -> None:
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(source, arcname=arcname)


# --------------------------------------------------------------------------------------------
# ImageDataset
# --------------------------------------------------------------------------------------------


def test_image_dataset_shape_len_repr():
    ds = ImageDataset(np.zeros((5, 3, 4, 6), np.uint8), np.arange(5, dtype=np.int64), "x")
    assert ds.shape == (3, 4, 6)
    assert len(ds) == 5
    assert "n=5" in repr(ds) and "(3, 4, 6)" in repr(ds)


@pytest.mark.parametrize(
    ("images", "labels", "match"),
    [
        (np.zeros((2, 1, 4, 4), np.float32), None, "uint8"),
        (np.zeros((2, 4, 4), np.uint8), None, "4 dimensions"),
        (np.zeros((2, 1, 4, 4), np.uint8), np.zeros(2, np.int32), "int64"),
        (np.zeros((2, 1, 4, 4), np.uint8), np.zeros(3, np.int64), r"shape \(2,\)"),
    ],
)
def test_image_dataset_validation(images, labels, match):
    with pytest.raises(ValueError, match=match):
        ImageDataset(images, labels, "bad")


# --------------------------------------------------------------------------------------------
# Digits
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def digits_all() -> ImageDataset:
    return load_digits("all")


def _rows(ds: ImageDataset) -> list[bytes]:
    """Each (label, image) as bytes, sorted: compares datasets as multisets."""
    return sorted(
        int(lab).to_bytes(1, "little") + img.tobytes()
        for img, lab in zip(ds.images, ds.labels, strict=True)
    )


def test_digits_shape_and_levels(digits_all):
    assert len(digits_all) == 1797
    assert digits_all.shape == (1, 8, 8)
    assert digits_all.images.dtype == np.uint8
    assert digits_all.labels.dtype == np.int64
    assert set(np.unique(digits_all.labels)) == set(range(10))
    # 0..16 mapped by round(v * 255 / 16): the ends reach 0 and 255, and 8 goes to 128.
    expected_levels = {round(v * 255 / 16) for v in range(17)}
    levels = set(np.unique(digits_all.images).tolist())
    assert levels <= expected_levels
    assert min(levels) == 0 and max(levels) == 255 and 128 in levels


def test_digits_split_partitions_all_and_is_deterministic(digits_all):
    train, test = load_digits("train", seed=3), load_digits("test", seed=3)
    assert len(train) + len(test) == len(digits_all)
    # As multisets, train + test == all: with the sizes adding up, they are disjoint and cover it.
    combined = ImageDataset(
        np.concatenate([train.images, test.images]),
        np.concatenate([train.labels, test.labels]),
        "combined",
    )
    assert _rows(combined) == _rows(digits_all)
    again = load_digits("test", seed=3)
    np.testing.assert_array_equal(again.images, test.images)
    np.testing.assert_array_equal(again.labels, test.labels)
    other = load_digits("test", seed=4)
    assert len(other) == len(test) and not np.array_equal(other.images, test.images)


def test_digits_split_is_stratified(digits_all):
    test = load_digits("test", test_fraction=0.25)
    for c in range(10):
        n_class = np.count_nonzero(digits_all.labels == c)
        assert np.count_nonzero(test.labels == c) == round(0.25 * n_class)


@pytest.mark.parametrize("split", ["val", "TRAIN", ""])
def test_digits_bad_split(split):
    with pytest.raises(ValueError, match=repr(split)):
        load_digits(split)


@pytest.mark.parametrize("fraction", [0.0, 1.0, -0.1, 1.5])
def test_digits_bad_fraction(fraction):
    with pytest.raises(ValueError, match=f"test_fraction.*{fraction}"):
        load_digits("train", test_fraction=fraction)


# --------------------------------------------------------------------------------------------
# Image folders
# --------------------------------------------------------------------------------------------


def test_image_folder_recursive_sorted_exact(tmp_path):
    colours = {
        "b/one.png": (10, 20, 30),
        "a/two.png": (40, 50, 60),
        "a/sub/three.PNG": (70, 80, 90),
        "z.bmp": (100, 110, 120),
        "y.webp": (130, 140, 150),
    }
    for rel, rgb in colours.items():
        kwargs = {"lossless": True} if rel.endswith(".webp") else {}
        save_rgb(tmp_path / rel, solid(4, 5, rgb), **kwargs)
    (tmp_path / "notes.txt").write_text("not an image")
    save_rgb(tmp_path / ".hidden" / "x.png", solid(9, 9, (1, 1, 1)))  # skipped, else size error
    ds = load_image_folder(tmp_path)
    order = sorted(colours, key=lambda r: Path(r).parts)
    assert order == ["a/sub/three.PNG", "a/two.png", "b/one.png", "y.webp", "z.bmp"]
    assert ds.images.shape == (5, 3, 4, 5) and ds.labels is None
    for img, rel in zip(ds.images, order, strict=True):
        np.testing.assert_array_equal(img[:, 0, 0], colours[rel])
        assert (img == img[:, :1, :1]).all()


def test_image_folder_greyscale_and_jpeg(tmp_path):
    save_rgb(tmp_path / "a.jpg", solid(8, 8, (200, 200, 200)), quality=95)
    save_rgb(tmp_path / "b.jpeg", solid(8, 8, (0, 0, 0)), quality=95)
    ds = load_image_folder(tmp_path, channels=1)
    assert ds.images.shape == (2, 1, 8, 8)
    assert abs(int(ds.images[0].mean()) - 200) <= 2 and ds.images[1].max() <= 2


def test_image_folder_16bit_and_palette_transparency(tmp_path):
    grey16 = np.array([[0, 65535, 128 * 257]], dtype=np.uint16)
    Image.fromarray(grey16).save(tmp_path / "a.png")
    palette = Image.new("P", (3, 1))
    palette.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    palette.putpixel((1, 0), 1)
    palette.save(tmp_path / "b.png", transparency=0)
    ds = load_image_folder(tmp_path, channels=3)  # no warning (warnings are errors here)
    np.testing.assert_array_equal(ds.images[0, :, 0, :], [[0, 255, 128]] * 3)
    np.testing.assert_array_equal(ds.images[1, :, 0, 1], [255, 0, 0])


def test_image_folder_resize_and_centre_crop(tmp_path):
    # 60 wide, 20 high: red | green | blue thirds. The shorter side goes to 10, so the image
    # becomes 30 x 10 and the centre crop keeps columns 10..19: the green third.
    pixels = np.concatenate(
        [solid(20, 20, (255, 0, 0)), solid(20, 20, (0, 255, 0)), solid(20, 20, (0, 0, 255))],
        axis=1,
    )
    save_rgb(tmp_path / "wide.png", pixels)
    save_rgb(tmp_path / "tall.png", solid(30, 12, (9, 9, 9)))
    ds = load_image_folder(tmp_path, image_size=10)
    assert ds.images.shape == (2, 3, 10, 10)
    wide = ds.images[1].astype(int)  # "tall.png" sorts first
    # Lanczos rings a little near the colour edges, hence the tolerance.
    green = np.broadcast_to(np.array([0, 255, 0])[:, None, None], (3, 10, 6))
    np.testing.assert_allclose(wide[:, :, 2:8], green, atol=3)
    assert (ds.images[0] == 9).all()


def test_image_folder_sizes_differ(tmp_path):
    save_rgb(tmp_path / "small.png", solid(4, 4, (0, 0, 0)))
    save_rgb(tmp_path / "large.png", solid(6, 5, (0, 0, 0)))
    with pytest.raises(ValueError, match=r"large\.png.*5x6.*small\.png.*4x4"):
        load_image_folder(tmp_path)


def test_image_folder_empty(tmp_path):
    (tmp_path / "readme.txt").write_text("nothing here")
    with pytest.raises(ValueError, match=f"no image files.*{tmp_path.name}"):
        load_image_folder(tmp_path)


def test_image_folder_unreadable(tmp_path):
    save_rgb(tmp_path / "good.png", solid(4, 4, (0, 0, 0)))
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n this is not a png")
    with pytest.raises(ValueError, match=r"cannot read image file.*broken\.png"):
        load_image_folder(tmp_path)


def test_image_folder_argument_errors(tmp_path):
    save_rgb(tmp_path / "a.png", solid(4, 4, (0, 0, 0)))
    with pytest.raises(ValueError, match="channels must be 1 or 3, got 2"):
        load_image_folder(tmp_path, channels=2)
    with pytest.raises(ValueError, match="image_size"):
        load_image_folder(tmp_path, image_size=0)
    with pytest.raises(FileNotFoundError, match="nowhere"):
        load_image_folder(tmp_path / "nowhere")
    with pytest.raises(ValueError, match=r"not a folder.*a\.png"):
        load_image_folder(tmp_path / "a.png")


# --------------------------------------------------------------------------------------------
# .npz
# --------------------------------------------------------------------------------------------


@pytest.fixture
def pixels_nchw() -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, size=(4, 3, 5, 6), dtype=np.uint8)


@pytest.mark.parametrize(
    ("store", "layout"),
    [
        (lambda a: a, "auto"),
        (lambda a: a.transpose(0, 2, 3, 1), "auto"),
        (lambda a: a, "NCHW"),
        (lambda a: a.transpose(0, 2, 3, 1), "NHWC"),
    ],
)
def test_npz_layouts(tmp_path, pixels_nchw, store, layout):
    np.savez(tmp_path / "x.npz", images=store(pixels_nchw), labels=np.arange(4, dtype=np.int32))
    ds = load_npz(tmp_path / "x.npz", layout=layout)
    np.testing.assert_array_equal(ds.images, pixels_nchw)
    assert ds.labels.dtype == np.int64
    np.testing.assert_array_equal(ds.labels, np.arange(4))


def test_npz_ambiguous_auto_is_nchw_and_layout_overrides(tmp_path):
    cube = np.arange(2 * 3 * 3 * 3, dtype=np.uint8).reshape(2, 3, 3, 3)
    np.savez(tmp_path / "x.npz", cube)
    np.testing.assert_array_equal(load_npz(tmp_path / "x.npz").images, cube)
    nhwc = load_npz(tmp_path / "x.npz", layout="NHWC").images
    np.testing.assert_array_equal(nhwc, cube.transpose(0, 3, 1, 2))
    with pytest.raises(ValueError, match="layout"):
        load_npz(tmp_path / "x.npz", layout="CHWN")


def test_npz_3d_is_one_channel_and_only_array_is_used(tmp_path):
    grey = np.arange(2 * 4 * 4, dtype=np.uint8).reshape(2, 4, 4)
    np.savez(tmp_path / "x.npz", something=grey)
    ds = load_npz(tmp_path / "x.npz")
    assert ds.images.shape == (2, 1, 4, 4) and ds.labels is None
    np.testing.assert_array_equal(ds.images[:, 0], grey)


def test_npz_float_and_int_ranges(tmp_path):
    np.savez(tmp_path / "f.npz", images=np.array([-1.0, 0.0, 1.0]).reshape(1, 1, 1, 3))
    np.testing.assert_array_equal(load_npz(tmp_path / "f.npz").images.ravel(), [0, 128, 255])
    np.savez(tmp_path / "u.npz", images=np.array([0.0, 0.5, 1.0]).reshape(1, 1, 1, 3))
    unit = load_npz(tmp_path / "u.npz", value_range=(0, 1)).images.ravel()
    np.testing.assert_array_equal(unit, [0, 128, 255])
    np.savez(tmp_path / "i.npz", images=np.array([0, 7, 255], np.int16).reshape(1, 1, 1, 3))
    np.testing.assert_array_equal(load_npz(tmp_path / "i.npz").images.ravel(), [0, 7, 255])


def test_npz_values_outside_range(tmp_path):
    np.savez(tmp_path / "f.npz", images=np.array([-0.5, 1.25]).reshape(1, 1, 1, 2))
    with pytest.raises(ValueError, match=r"\[-0\.5, 1\.25\].*\[-1, 1\]"):
        load_npz(tmp_path / "f.npz")
    np.savez(tmp_path / "i.npz", images=np.array([0, 300], np.int32).reshape(1, 1, 1, 2))
    with pytest.raises(ValueError, match=r"\[0, 300\].*\[0, 255\]"):
        load_npz(tmp_path / "i.npz")
    with pytest.raises(ValueError, match="value_range"):
        load_npz(tmp_path / "i.npz", value_range=(5, 5))


def test_npz_non_finite(tmp_path):
    np.savez(tmp_path / "f.npz", images=np.array([0.0, np.nan, np.inf]).reshape(1, 1, 1, 3))
    with pytest.raises(ValueError, match="2 non-finite"):
        load_npz(tmp_path / "f.npz")


def test_npz_key_errors(tmp_path):
    np.savez(tmp_path / "x.npz", a=np.zeros((1, 2, 2), np.uint8), b=np.zeros((1, 2, 2), np.uint8))
    with pytest.raises(ValueError, match=r"\['a', 'b'\]"):
        load_npz(tmp_path / "x.npz")
    with pytest.raises(ValueError, match=r"no array 'images'.*\['a', 'b'\]"):
        load_npz(tmp_path / "x.npz", key="images")
    assert load_npz(tmp_path / "x.npz", key="b").shape == (1, 2, 2)


def test_npz_not_an_archive(tmp_path):
    (tmp_path / "junk.npz").write_bytes(b"not a zip file at all")
    with pytest.raises(ValueError, match=r"junk\.npz' is not an \.npz archive"):
        load_npz(tmp_path / "junk.npz")
    # a 2-byte file (NumPy alone calls it "pickled data") and an empty one
    (tmp_path / "two.npz").write_bytes(b"PK")
    with pytest.raises(
        ValueError, match=r"two\.npz' is not an \.npz archive \(it starts with b'PK'"
    ):
        load_npz(tmp_path / "two.npz")
    (tmp_path / "empty.npz").write_bytes(b"")
    with pytest.raises(ValueError, match=r"empty\.npz' is empty \(0 bytes\)"):
        load_npz(tmp_path / "empty.npz")
    # a truncated archive
    np.savez(tmp_path / "whole.npz", images=np.zeros((4, 1, 8, 8), np.uint8))
    data = (tmp_path / "whole.npz").read_bytes()
    (tmp_path / "cut.npz").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match=r"cut\.npz"):
        load_npz(tmp_path / "cut.npz")
    with open(tmp_path / "single.npz", "wb") as f:
        np.save(f, np.zeros((1, 2, 2), np.uint8))
    with pytest.raises(ValueError, match=r"single \.npy array"):
        load_npz(tmp_path / "single.npz")


def test_npz_bad_shapes(tmp_path):
    np.savez(tmp_path / "x.npz", images=np.zeros((2, 3), np.uint8))
    with pytest.raises(ValueError, match=r"\[N, H, W\]"):
        load_npz(tmp_path / "x.npz")
    np.savez(tmp_path / "y.npz", images=np.zeros((2, 2, 2), np.uint8), labels=np.zeros(3, int))
    with pytest.raises(ValueError, match="labels"):
        load_npz(tmp_path / "y.npz")


# --------------------------------------------------------------------------------------------
# CIFAR-10
# --------------------------------------------------------------------------------------------


def _expected(batches: dict[str, dict], names: list[str]) -> tuple[np.ndarray, np.ndarray]:
    data_rows = np.concatenate([batches[n][b"data"] for n in names])
    labels = np.concatenate([batches[n][b"labels"] for n in names])
    return data_rows, labels


def _check_cifar(ds: ImageDataset, batches: dict[str, dict], names: list[str]) -> None:
    rows, labels = _expected(batches, names)
    assert ds.images.shape == (len(rows), 3, 32, 32)
    np.testing.assert_array_equal(ds.labels, labels)
    # Row layout: 1024 red, 1024 green, 1024 blue, each plane row-major.
    i, c, h, w = 1, 2, 5, 7
    assert ds.images[i, c, h, w] == rows[i, c * 1024 + h * 32 + w]
    np.testing.assert_array_equal(ds.images.reshape(len(rows), -1), rows)


@pytest.mark.parametrize("nested", [False, True])
def test_cifar_folder_splits(tmp_path, nested):
    folder = tmp_path / "cifar-10-batches-py" if nested else tmp_path
    batches = write_cifar_folder(folder)
    train = load_cifar10(tmp_path)
    _check_cifar(train, batches, CIFAR_NAMES[:5])
    _check_cifar(load_cifar10(tmp_path, split="test"), batches, CIFAR_NAMES[5:])
    _check_cifar(load_cifar10(tmp_path, split="all"), batches, CIFAR_NAMES)
    assert train.name == "cifar10-train"


@pytest.mark.parametrize("arcname", ["cifar-10-batches-py", "."])
def test_cifar_tar_gz(tmp_path, arcname):
    batches = write_cifar_folder(tmp_path / "src")
    archive = tmp_path / "cifar-10-python.tar.gz"
    write_cifar_tar(archive, tmp_path / "src", arcname)
    _check_cifar(load_cifar10(archive, split="test"), batches, CIFAR_NAMES[5:])
    _check_cifar(load_cifar10(archive), batches, CIFAR_NAMES[:5])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cifar-10-python.tar.gz", "src"]


def test_cifar_missing_batches(tmp_path):
    write_cifar_folder(tmp_path / "src", [n for n in CIFAR_NAMES if n != "data_batch_3"])
    with pytest.raises(ValueError, match=r"missing.*\['data_batch_3'\]"):
        load_cifar10(tmp_path / "src")
    assert len(load_cifar10(tmp_path / "src", split="test")) == CIFAR_PER_BATCH
    write_cifar_tar(tmp_path / "c.tar.gz", tmp_path / "src", "cifar-10-batches-py")
    with pytest.raises(ValueError, match=r"missing.*\['data_batch_3'\]"):
        load_cifar10(tmp_path / "c.tar.gz", split="all")
    with pytest.raises(ValueError, match="'valid'"):
        load_cifar10(tmp_path / "src", split="valid")


def test_cifar_python2_names_and_protocol_2(tmp_path):
    # The distributed batches were written by Python 2 and name numpy.core.multiarray; pickle
    # protocol 2 from Python 3 writes bytes through _codecs.encode(..., "latin1").
    batches = write_cifar_folder(tmp_path)
    raw = pickle.dumps(batches["test_batch"], protocol=2)
    raw = raw.replace(b"numpy._core.multiarray", b"numpy.core.multiarray")
    assert b"numpy.core.multiarray\n_reconstruct" in raw and b"_codecs" in raw
    (tmp_path / "test_batch").write_bytes(raw)
    _check_cifar(load_cifar10(tmp_path, split="test"), batches, ["test_batch"])


class _RunsShell:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"echo pwned > {self.marker}",))


class _Rot13:
    def __reduce__(self):
        return (codecs.encode, ("data", "rot13"))


def test_cifar_restricted_unpickler_refuses_code(tmp_path):
    marker = tmp_path / "pwned.txt"
    write_cifar_folder(tmp_path / "src")
    evil = {b"data": _RunsShell(marker), b"labels": [0]}
    (tmp_path / "src" / "data_batch_2").write_bytes(pickle.dumps(evil))
    with pytest.raises(pickle.UnpicklingError, match=r"data_batch_2.*refusing.*system"):
        load_cifar10(tmp_path / "src")
    assert not marker.exists()
    # The same file through the tar path.
    write_cifar_tar(tmp_path / "c.tar.gz", tmp_path / "src", "cifar-10-batches-py")
    with pytest.raises(pickle.UnpicklingError, match="refusing"):
        load_cifar10(tmp_path / "c.tar.gz")
    assert not marker.exists()
    # _codecs.encode is allowed only for latin-1, the one use pickle protocol 2 makes of it.
    (tmp_path / "src" / "test_batch").write_bytes(pickle.dumps({b"data": _Rot13()}, protocol=2))
    with pytest.raises(pickle.UnpicklingError, match="rot13"):
        load_cifar10(tmp_path / "src", split="test")


@pytest.mark.parametrize("flaw", ["truncated", "forbidden global"])
def test_a_bad_cifar_archive_is_one_line_from_the_cli(tmp_path, capsys, flaw):
    """A truncated pickle or an os.system global in a CIFAR-10 .tar.gz printed a traceback."""
    pytest.importorskip("torch")
    from refdiff.cli import main

    marker = tmp_path / "pwned.txt"
    write_cifar_folder(tmp_path / "src")
    batch = tmp_path / "src" / "data_batch_2"
    if flaw == "truncated":
        batch.write_bytes(batch.read_bytes()[:200])
    else:
        batch.write_bytes(pickle.dumps({b"data": _RunsShell(marker), b"labels": [0]}))
    write_cifar_tar(tmp_path / "c.tar.gz", tmp_path / "src", "cifar-10-batches-py")
    out = tmp_path / "run"
    code = main(["train", "--data", str(tmp_path / "c.tar.gz"), "--out", str(out), "--no-progress"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and len(err) == 1, err
    assert err[0].startswith("refdiff train: error: ") and "data_batch_2" in err[0]
    assert ("truncated" if flaw == "truncated" else "refusing to load global") in err[0]
    assert not marker.exists() and not out.exists()


def test_cifar_malformed_batch(tmp_path):
    write_cifar_folder(tmp_path)
    (tmp_path / "test_batch").write_bytes(pickle.dumps({b"data": np.zeros((2, 3072), np.uint8)}))
    with pytest.raises(ValueError, match="not a CIFAR-10 batch"):
        load_cifar10(tmp_path, split="test")
    bad = {b"data": np.zeros((2, 100), np.uint8), b"labels": [0, 1]}
    (tmp_path / "test_batch").write_bytes(pickle.dumps(bad))
    with pytest.raises(ValueError, match="3072"):
        load_cifar10(tmp_path, split="test")


# --------------------------------------------------------------------------------------------
# load_dataset
# --------------------------------------------------------------------------------------------


def test_load_dataset_dispatch(tmp_path):
    assert load_dataset("digits").name == "digits-train"
    assert load_dataset("digits", split="test", image_size=8).shape == (1, 8, 8)
    with pytest.raises(ValueError, match="only image folders are resized"):
        load_dataset("digits", image_size=16)

    # a .npz file has no split of its own: "test" is the held-out share the trainer holds out
    images = np.zeros((40, 1, 4, 4), np.uint8)
    images[:, 0, 0, 0] = np.arange(40)  # every image different
    np.savez(tmp_path / "x.npz", images=images)
    spec = str(tmp_path / "x.npz")
    train, test, every = (load_dataset(spec, split=s) for s in ("train", "test", "all"))
    assert (len(train), len(test), len(every)) == (38, 2, 40)
    assert train.shape == (1, 4, 4)
    rows = {r.tobytes() for r in every.images}
    assert {r.tobytes() for r in train.images} | {r.tobytes() for r in test.images} == rows
    assert not {r.tobytes() for r in train.images} & {r.tobytes() for r in test.images}
    want_train, want_test = data.split_holdout(every.images)
    np.testing.assert_array_equal(test.images, want_test)
    np.testing.assert_array_equal(train.images, want_train)
    assert len(load_dataset(spec, split="test", holdout_fraction=0.25)) == 10
    with pytest.raises(ValueError, match=r"hold-out fraction must lie in \(0, 1\), got 1.5"):
        load_dataset(spec, split="test", holdout_fraction=1.5)

    write_cifar_folder(tmp_path / "cifar" / "cifar-10-batches-py")
    write_cifar_tar(tmp_path / "c.tar.gz", tmp_path / "cifar", ".")
    assert load_dataset(str(tmp_path / "cifar"), split="test").name == "cifar10-test"
    assert len(load_dataset(str(tmp_path / "c.tar.gz"))) == 5 * CIFAR_PER_BATCH

    save_rgb(tmp_path / "imgs" / "a.png", solid(6, 8, (1, 2, 3)))
    folder = load_dataset(str(tmp_path / "imgs"), split="all", image_size=4, channels=1)
    assert folder.images.shape == (1, 1, 4, 4)
    with pytest.raises(ValueError, match=r"holds 1 image.*too few to hold 1 out"):
        load_dataset(str(tmp_path / "imgs"), split="test")
    for name in ("b", "c"):
        save_rgb(tmp_path / "imgs" / f"{name}.png", solid(6, 8, (1, 2, 3)))
    assert len(load_dataset(str(tmp_path / "imgs"), split="test", image_size=4)) == 1
    assert len(load_dataset(str(tmp_path / "imgs"), split="train", image_size=4)) == 2


def test_load_dataset_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="'digitz'"):
        load_dataset("digitz")
    with pytest.raises(FileNotFoundError, match=r"missing\.npz"):
        load_dataset(str(tmp_path / "missing.npz"))
    (tmp_path / "notes.txt").write_text("hi")
    with pytest.raises(ValueError, match=r"cannot tell the format.*notes\.txt"):
        load_dataset(str(tmp_path / "notes.txt"))
    with pytest.raises(ValueError, match="'dev'"):
        load_dataset("digits", split="dev")


# --------------------------------------------------------------------------------------------
# Pixel range and flips
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
def test_model_range_round_trip(dtype):
    levels = np.arange(256, dtype=np.uint8).reshape(1, 1, 16, 16)
    x = to_model_range(levels, dtype=dtype)
    assert x.dtype == dtype and x.shape == levels.shape
    assert x.min() == -1 and x.max() == 1
    np.testing.assert_allclose(x.ravel(), np.arange(256) / 127.5 - 1, rtol=0, atol=1e-3)
    np.testing.assert_array_equal(from_model_range(x), levels)


def test_from_model_range_clips_and_rounds():
    x = np.array([-3.0, -1.0, 1 / 255, 0.999, 2.0, np.inf, -np.inf])
    np.testing.assert_array_equal(from_model_range(x), [0, 0, 128, 255, 255, 255, 0])
    with pytest.raises(ValueError, match="1 NaN"):
        from_model_range(np.array([0.0, np.nan]))


def test_model_range_type_errors():
    with pytest.raises(TypeError, match="uint8"):
        to_model_range(np.zeros(3, np.float32))
    with pytest.raises(TypeError, match="uint8"):
        to_model_range(np.zeros(3, np.int64))
    with pytest.raises(TypeError, match="floating dtype"):
        to_model_range(np.zeros(3, np.uint8), dtype=np.int32)
    with pytest.raises(TypeError, match="floating-point"):
        from_model_range(np.zeros(3, np.uint8))


def test_random_horizontal_flip_probability_and_effect():
    n = 20_000
    batch = np.zeros((n, 2, 3, 4), np.int32)
    batch[..., :] = np.arange(4)  # each row reads 0 1 2 3; a flip makes it 3 2 1 0
    before = batch.copy()
    out = random_horizontal_flip(batch, np.random.default_rng(0))
    np.testing.assert_array_equal(batch, before)  # input untouched
    flipped = out[:, 0, 0, 0] == 3
    np.testing.assert_array_equal(out[flipped], before[flipped][..., ::-1])
    np.testing.assert_array_equal(out[~flipped], before[~flipped])
    # Flips ~ Binomial(n, 1/2): sd = sqrt(n) / 2 ~ 71. Six sd fails with probability < 2e-9
    # under a correct implementation, whatever the seed.
    assert abs(int(flipped.sum()) - n / 2) < 6 * np.sqrt(n) / 2
    again = random_horizontal_flip(batch, np.random.default_rng(0))
    np.testing.assert_array_equal(again, out)


def test_random_horizontal_flip_errors():
    with pytest.raises(TypeError, match="Generator"):
        random_horizontal_flip(np.zeros((1, 1, 2, 2)), np.random.RandomState(0))
    with pytest.raises(ValueError, match="4-D"):
        random_horizontal_flip(np.zeros((2, 2, 2)), np.random.default_rng(0))


def test_readers_import_neither_torch_nor_the_core():
    """The readers stand apart: no torch, no diffusion core (only the package's own modules, the
    optional-dependency helper and the argument checks)."""
    for file in sorted(Path(data.__file__).parent.glob("*.py")):
        lines = [ln.strip() for ln in file.read_text().splitlines()]
        imports = [ln for ln in lines if ln.startswith(("import ", "from "))]
        assert not [ln for ln in imports if "torch" in ln], file
        outside = [
            ln
            for ln in imports
            if ln.startswith("from ..") and not ln.startswith(("from .._deps", "from .._checks"))
        ]
        assert not outside and not [ln for ln in imports if "refdiff" in ln], (file, outside)
