"""Shared fixtures: the ``xp`` backend fixture, ``assert_close``, Hypothesis profiles."""

from __future__ import annotations

import importlib.util
import os

import numpy as np
import pytest
from array_api_compat import array_namespace, device, is_array_api_obj
from hypothesis import HealthCheck, settings

from refdiff._array import to_host

settings.register_profile(
    "ci",
    derandomize=True,
    deadline=None,
    print_blob=True,
    max_examples=40,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.register_profile("thorough", deadline=None, print_blob=True, max_examples=500)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


def _cuda_available() -> bool:
    if importlib.util.find_spec("cupy") is None:
        return False
    try:
        import cupy

        return cupy.cuda.runtime.getDeviceCount() > 0
    except Exception:
        return False


HAS_CUDA = _cuda_available()

if importlib.util.find_spec("torch") is not None:
    import torch

    # The test models are tiny: one thread avoids oversubscription on shared 2-core machines.
    torch.set_num_threads(1)


def pytest_collection_modifyitems(config, items):
    skip_gpu = pytest.mark.skip(reason="needs an NVIDIA GPU with CuPy")
    for item in items:
        if "gpu" in item.keywords and not HAS_CUDA:
            item.add_marker(skip_gpu)


def _backend_params():
    params = [pytest.param("numpy", id="numpy"), pytest.param("array_api_strict", id="strict")]
    torch_ok = importlib.util.find_spec("torch") is not None
    params.append(
        pytest.param(
            "torch",
            id="torch",
            marks=pytest.mark.skipif(not torch_ok, reason="torch not installed"),
        )
    )
    params.append(pytest.param("cupy", id="cupy", marks=pytest.mark.gpu))
    return params


@pytest.fixture(params=_backend_params())
def xp(request):
    """An array-API namespace: numpy, array_api_strict, torch (CPU) and cupy (under `gpu`)."""
    name = request.param
    if name == "numpy":
        import array_api_compat.numpy as mod
    elif name == "array_api_strict":
        import array_api_strict as mod
    elif name == "torch":
        import array_api_compat.torch as mod
    else:
        import array_api_compat.cupy as mod
    return mod


def to_numpy(x):
    """Host NumPy copy of an array of any backend (for comparisons only)."""
    return to_host(x)


def read_npz(path) -> dict:
    """Every array of an ``.npz`` file, read whole, the file closed: an ``np.load`` left open
    warns ResourceWarning on NumPy < 2 (the floor), which the suite turns into an error."""
    with np.load(path) as f:
        return {name: f[name] for name in f.files}


def default_rtol(dtype) -> float:
    name = str(dtype)
    if "float16" in name:
        return 2e-3
    if "float32" in name:
        return 2e-5
    return 1e-10


def assert_close(actual, desired, *, rtol=None, atol=0.0, xp=None, check_dtype=True):
    """Compare ``actual`` with ``desired``: namespace, dtype and shape first, then values.

    ``desired`` may be a NumPy array or an array of ``actual``'s namespace. The default tolerance
    depends on the dtype.
    """
    assert is_array_api_obj(actual), f"expected an array, got {type(actual)}"
    if xp is not None:
        assert array_namespace(actual).__name__.split(".")[-1] == xp.__name__.split(".")[-1], (
            f"namespace {array_namespace(actual).__name__} != {xp.__name__}"
        )
    if is_array_api_obj(desired) and not isinstance(desired, np.ndarray):
        assert type(actual) is type(desired)
        assert device(actual) == device(desired)
        if check_dtype:
            assert actual.dtype == desired.dtype, f"dtype {actual.dtype} != {desired.dtype}"
    a, d = to_numpy(actual), to_numpy(desired)
    assert a.shape == d.shape, f"shape {a.shape} != {d.shape}"
    if rtol is None:
        rtol = default_rtol(actual.dtype)
    np.testing.assert_allclose(a, d, rtol=rtol, atol=atol)
