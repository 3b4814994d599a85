"""The torch-free helpers of training and evaluation: the per-pixel baseline (refdiff.baseline)
and the PNG grids (refdiff.images)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from refdiff.baseline import IndependentPixelModel
from refdiff.data import load_digits
from refdiff.images import make_grid, save_grid, save_strip


def test_baseline_is_the_per_pixel_discretized_gaussian():
    train = load_digits("train").images
    model = IndependentPixelModel().fit(train)
    v = train.astype(np.float64) / 127.5 - 1
    np.testing.assert_allclose(model.mean, v.mean(0))
    np.testing.assert_allclose(model.std, np.maximum(v.std(0), 1 / 255))
    test = load_digits("test").images
    bpd = model.bits_per_dim(test)
    assert bpd.shape == (len(test),) and np.all(np.isfinite(bpd))
    assert 3.0 < bpd.mean() < 6.0  # about 4.6 bits/dim on the held-out digits


def test_baseline_probabilities_of_all_256_levels_sum_to_one():
    rng = np.random.default_rng(0)
    model = IndependentPixelModel().fit(rng.integers(0, 256, (20, 1, 1, 2), dtype=np.uint8))
    levels = np.arange(256, dtype=np.uint8)
    grid = np.stack(np.meshgrid(levels, levels, indexing="ij"), -1).reshape(-1, 1, 1, 2)
    total = np.exp(model.log_likelihood(grid)).sum()
    assert total == pytest.approx(1.0, abs=1e-9)


def test_baseline_samples_depend_on_seed_and_index_only():
    model = IndependentPixelModel().fit(load_digits("train").images)
    a = model.sample(10, seed=3)
    assert a.dtype == np.uint8 and a.shape == (10, 1, 8, 8)
    np.testing.assert_array_equal(model.sample(4, seed=3), a[:4])
    assert not np.array_equal(model.sample(4, seed=4), a[:4])
    restored = IndependentPixelModel.from_dict(json.loads(json.dumps(model.to_dict())))
    np.testing.assert_array_equal(restored.sample(10, seed=3), a)


def test_baseline_errors():
    with pytest.raises(ValueError, match="not fitted"):
        IndependentPixelModel().bits_per_dim(np.zeros((1, 1, 2, 2), np.uint8))
    with pytest.raises(TypeError, match="uint8"):
        IndependentPixelModel().fit(np.zeros((1, 1, 2, 2)))
    model = IndependentPixelModel().fit(np.zeros((2, 1, 2, 2), np.uint8))
    with pytest.raises(ValueError, match="fitted on"):
        model.bits_per_dim(np.zeros((1, 1, 3, 3), np.uint8))


def test_grid_layout_and_scaling(tmp_path):
    images = np.arange(5 * 3 * 2 * 2, dtype=np.uint8).reshape(5, 3, 2, 2)
    grid = make_grid(images, nrow=3, scale=2, pad=1, pad_value=7)
    assert grid.shape == (2 * 4 + 3, 3 * 4 + 4, 3)
    np.testing.assert_array_equal(
        grid[1:5, 1:5], images[0].repeat(2, 1).repeat(2, 2).transpose(1, 2, 0)
    )
    assert grid[0, 0, 0] == 7
    path = save_grid(images[:, :1], tmp_path / "a" / "b" / "grid.png", scale=4)
    with Image.open(path) as img:
        assert img.mode == "L" and img.size == (3 * 8 + 4 * 2, 2 * 8 + 3 * 2)
    strip = save_strip(images, tmp_path / "strip.png", scale=1, pad=0)
    with Image.open(strip) as img:
        assert img.size == (5 * 2, 2)
        np.testing.assert_array_equal(np.asarray(img)[:, 2:4], images[1].transpose(1, 2, 0))


def test_grid_errors(tmp_path):
    ok = np.zeros((2, 1, 4, 4), np.uint8)
    with pytest.raises(TypeError, match="uint8"):
        save_grid(ok.astype(np.float32), tmp_path / "x.png")
    with pytest.raises(ValueError, match="channels"):
        save_grid(np.zeros((2, 2, 4, 4), np.uint8), tmp_path / "x.png")
    with pytest.raises(ValueError, match=r"\.png"):
        save_grid(ok, tmp_path / "x.jpg")
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(OSError, match=r"cannot create the folder .*a file of that name exists"):
        save_grid(ok, blocker / "grid.png")
