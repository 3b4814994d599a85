"""refdiff.plots: every plot is a valid PNG of a sensible size with something drawn on it."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from refdiff import get_schedule
from refdiff.plots import (
    plot_bound_terms,
    plot_loss,
    plot_quality_vs_calls,
    plot_samples_vs_data,
    plot_schedule,
)


def _check_png(path, min_size=(500, 300)):
    with Image.open(path) as im:
        im.verify()  # a complete, uncorrupted PNG
    with Image.open(path) as im:
        assert im.format == "PNG"
        w, h = im.size
        assert w >= min_size[0] and h >= min_size[1] and w <= 2000 and h <= 2000
        pixels = np.asarray(im.convert("L"))
    assert pixels.std() > 5  # something is drawn, not a blank canvas


def test_plot_schedule_one_and_several(tmp_path):
    out = plot_schedule(get_schedule("linear", 200), tmp_path / "a" / "schedule.png")
    assert out == tmp_path / "a" / "schedule.png"
    _check_png(out)
    several = {
        "linear": get_schedule("linear", 100),
        "cosine": get_schedule("cosine", 100),
        "cosine, zero terminal SNR": get_schedule("cosine", 100, zero_terminal_snr=True),
    }
    _check_png(plot_schedule(several, tmp_path / "schedules.png"))


def test_plot_loss(tmp_path):
    steps = np.arange(0, 600, 5)
    rng = np.random.default_rng(0)
    losses = 0.05 + np.exp(-steps / 100) + 0.01 * rng.random(steps.size)
    _check_png(plot_loss(steps, losses, tmp_path / "loss.png"))
    _check_png(plot_loss([0], [0.5], tmp_path / "one.png"))  # a single logged point
    with pytest.raises(ValueError, match="equal length"):
        plot_loss([0, 1], [0.5], tmp_path / "bad.png")
    with pytest.raises(ValueError, match="logarithmic"):
        plot_loss([0, 1], [0.0, np.nan], tmp_path / "bad.png")


def test_plot_bound_terms(tmp_path):
    t = np.arange(100)
    terms = 0.02 * np.exp(-t / 10) + 1e-4
    terms[0] = 0.7
    terms[50] = 0.0  # a term that rounds to zero is skipped on the log axis
    _check_png(plot_bound_terms(terms, tmp_path / "terms.png", prior_bpd=1e-5))
    with pytest.raises(ValueError, match="finite"):
        plot_bound_terms([np.nan, 1.0], tmp_path / "bad.png")


def test_plot_samples_vs_data(tmp_path):
    rng = np.random.default_rng(0)
    a = rng.integers(0, 256, (20, 1, 8, 8), dtype=np.uint8)
    b = rng.integers(0, 256, (30, 3, 8, 8), dtype=np.uint8)
    _check_png(plot_samples_vs_data(a, b, tmp_path / "svd.png"))
    with pytest.raises(TypeError, match="uint8"):
        plot_samples_vs_data(a.astype(float), b, tmp_path / "bad.png")


def test_paths_must_be_png(tmp_path):
    with pytest.raises(ValueError, match=r"\.png"):
        plot_loss([0, 1], [1.0, 0.5], tmp_path / "loss.jpg")
    assert not (tmp_path / "loss.jpg").exists()


def test_plot_quality_vs_calls(tmp_path):
    rows = [
        {
            "sampler": s,
            "spacing": "even",
            "calls": c,
            "fd": fd / c**0.5 + 0.2,
            "confidence": 0.9,
            "fd_floor": 0.1,
        }
        for s, fd in (("ddpm", 8.0), ("heun", 4.0))
        for c in (5, 10, 200)
    ]
    _check_png(plot_quality_vs_calls(rows, tmp_path / "q.png"))
    _check_png(plot_quality_vs_calls(rows[:3], tmp_path / "no-ref.png", reference=None))
    with pytest.raises(ValueError, match="row 0 has no 'fd'"):
        plot_quality_vs_calls(
            [{"sampler": "ddpm", "spacing": "even", "calls": 5}], tmp_path / "b.png"
        )
    with pytest.raises(ValueError, match="no rows"):
        plot_quality_vs_calls([], tmp_path / "b.png")
