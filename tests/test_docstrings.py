"""Docstrings completed from another function's (refdiff._docstrings.parameters_from)."""

from __future__ import annotations

import inspect

import pytest

import refdiff as rd
from refdiff._docstrings import _entries, _names, _sections, parameters_from
from refdiff.evaluation import evaluate, score_images
from refdiff.runtime import sample_array, sample_images


def _source(a, b, c, d=0):
    """The source.

    Parameters
    ----------
    a : int
        Source's a.
    b, c : float
        Source's b and c,
        over two lines.
    d : int
        Source's d.

    Returns
    -------
    int
        Source's result.
    """


def test_own_entries_win_the_rest_comes_from_the_source_in_signature_order():
    @parameters_from(_source)
    def f(c, a, *, e=1, b=2):
        """Mine.

        Parameters
        ----------
        a : str
            Mine's a.
        e : bool
            Mine's e.

        Raises
        ------
        ValueError
            Mine's error.
        """

    text, sections = _sections(inspect.cleandoc(f.__doc__))
    assert text.strip() == "Mine."
    assert list(sections) == ["Parameters", "Returns", "Raises"]
    entries = _entries(sections["Parameters"])
    assert [_names(e) for e in entries] == [["b", "c"], ["a"], ["e"]]  # b, c where c stands
    assert "over two lines" in entries[0] and "Mine's a" in entries[1]
    assert "Source's result" in sections["Returns"] and "Mine's error" in sections["Raises"]


def test_own_returns_stay():
    @parameters_from(_source)
    def f(a):
        """Mine.

        Returns
        -------
        str
            Mine's result.
        """

    _, sections = _sections(inspect.cleandoc(f.__doc__))
    assert "Mine's result" in sections["Returns"] and "Source" not in sections["Returns"]
    assert [_names(e) for e in _entries(sections["Parameters"])] == [["a"]]


def _parameters(func):
    """{name: its entry} of ``func``'s Parameters section."""
    body = _sections(inspect.cleandoc(func.__doc__))[1]["Parameters"]
    return {n: e for e in _entries(body) for n in _names(e)}


@pytest.mark.parametrize(
    "func",
    [*(spec.function for spec in rd.SAMPLERS.values()), sample_array, sample_images, score_images],
    ids=lambda f: f.__name__,
)
def test_shared_parameters_are_documented_once_each(func):
    """Every parameter of the functions that borrow entries is documented exactly once, with a
    Returns section: what help() and the reference site show."""
    _, sections = _sections(inspect.cleandoc(func.__doc__))
    names = [n for e in _entries(sections["Parameters"]) for n in _names(e)]
    assert sorted(names) == sorted(inspect.signature(func).parameters)
    assert sections["Returns"].strip()


def test_the_borrowed_entries_are_the_sources_and_own_ones_stay():
    assert _parameters(rd.dpmpp_2m_sde_sample)["seed"] == _parameters(rd.ddpm_sample)["seed"]
    assert _parameters(rd.dpmpp_2m_sde_sample)["eta"] != _parameters(rd.ddim_sample)["eta"]
    assert _parameters(sample_images)["shard"] == _parameters(sample_array)["shard"]
    assert _parameters(score_images)["shard"] != _parameters(evaluate)["shard"]
