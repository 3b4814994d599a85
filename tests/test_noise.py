"""Counter-based Philox noise: known answers, distribution, and the same bits on every backend."""

from __future__ import annotations

import array_api_compat.numpy as npx
import numpy as np
import pytest
from conftest import to_numpy
from scipy import stats

from refdiff.noise import PRIOR_STEP, philox4x32, standard_normal, uniform_open

# Random123's known-answer vectors for philox4x32 with 10 rounds: counter, key, result.
KAT = [
    ([0, 0, 0, 0], (0, 0), [0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8]),
    ([0xFFFFFFFF] * 4, (0xFFFFFFFF, 0xFFFFFFFF), [0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD]),
    (
        [0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344],
        (0xA4093822, 0x299F31D0),
        [0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1],
    ),
]


@pytest.mark.parametrize("counter, key, expected", KAT)
def test_philox_known_answers(xp, counter, key, expected):
    words = philox4x32([xp.asarray([c], dtype=xp.int64) for c in counter], key, xp)
    assert [int(to_numpy(w)[0]) for w in words] == expected


def test_normality_and_independence():
    z = standard_normal(123, np.arange(200), 5, (3, 8, 8), xp=npx)
    flat = z.ravel()
    assert stats.kstest(flat, "norm").pvalue > 1e-4
    # different steps, samples and seeds are uncorrelated
    z2 = standard_normal(123, np.arange(200), 6, (3, 8, 8), xp=npx).ravel()
    z3 = standard_normal(124, np.arange(200), 5, (3, 8, 8), xp=npx).ravel()
    n = flat.size
    for other in (z2, z3, np.roll(flat, 192)):
        assert abs(np.corrcoef(flat, other)[0, 1]) < 5 / np.sqrt(n)
    u = uniform_open(0, np.arange(1000), 0, 8, npx)
    assert u.min() > 0 and u.max() < 1
    assert stats.kstest(u.ravel(), "uniform").pvalue > 1e-4


def test_value_depends_only_on_seed_index_step():
    full = standard_normal(9, np.arange(50), 3, (5,), xp=npx)
    part = standard_normal(9, np.array([49, 7]), 3, (5,), xp=npx)
    np.testing.assert_array_equal(part, full[[49, 7]])
    big = standard_normal(9, np.array([2**40 + 3]), PRIOR_STEP, (5,), xp=npx)
    assert np.all(np.isfinite(big))


def test_same_bits_on_every_backend(xp):
    ref = standard_normal(2**63 + 5, np.arange(7), 11, (2, 3, 3), xp=npx)
    got = standard_normal(2**63 + 5, xp.arange(7, dtype=xp.int64), 11, (2, 3, 3), xp=xp)
    np.testing.assert_allclose(to_numpy(got), ref, rtol=1e-14, atol=1e-14)
    got32 = standard_normal(
        2**63 + 5, xp.arange(7, dtype=xp.int64), 11, (2, 3, 3), xp=xp, dtype=xp.float32
    )
    assert got32.dtype == xp.float32


def test_bad_seed_and_step():
    with pytest.raises(ValueError, match="seed"):
        standard_normal(-1, np.arange(2), 0, (2,), xp=npx)
    with pytest.raises(TypeError, match="seed"):
        standard_normal("0", np.arange(2), 0, (2,), xp=npx)
    with pytest.raises(ValueError, match="step"):
        standard_normal(0, np.arange(2), -1, (2,), xp=npx)


def test_sample_indices_must_be_integers():
    """A fractional index would select another sample's noise without a word."""
    import array_api_compat.numpy as npx

    with pytest.raises(TypeError, match=r"sample_indices must be an integer array.*float64"):
        standard_normal(0, np.array([0.5]), 0, (2,), xp=npx)
    with pytest.raises(TypeError, match="sample_indices must be an integer array"):
        standard_normal(0, [0, 1], 0, (2,), xp=npx)
    ok = standard_normal(0, np.array([0, 1]), 0, (2,), xp=npx)
    assert ok.shape == (2, 2)
