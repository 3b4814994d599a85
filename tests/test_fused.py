"""The fused CUDA kernels equal the generic array-API path.

Without a GPU, the kernel source is compiled for the host (``-DRD_HOST``, no FMA contraction) and
its arithmetic is compared with the generic NumPy path; with a GPU, the real kernels are compared
with the generic CuPy path (``gpu`` marker).
"""

from __future__ import annotations

import ctypes
import shutil
import subprocess

import array_api_compat.numpy as npx
import numpy as np
import pytest

import refdiff as rd
from refdiff.fused import CUDA_SOURCE, step_arguments
from refdiff.noise import standard_normal

SCHED = rd.get_schedule("linear", 1000)


@pytest.fixture(scope="module")
def host_lib(tmp_path_factory):
    cxx = shutil.which("g++") or shutil.which("c++")
    if cxx is None:
        pytest.skip("no C++ compiler to build the kernel source for the host")
    d = tmp_path_factory.mktemp("fused")
    src, lib = d / "k.cpp", d / "k.so"
    src.write_text(CUDA_SOURCE)
    subprocess.run(
        [
            cxx,
            "-x",
            "c++",
            "-DRD_HOST",
            "-O2",
            "-ffp-contract=off",
            "-shared",
            "-fPIC",
            str(src),
            "-o",
            str(lib),
        ],
        check=True,
    )
    so = ctypes.CDLL(str(lib))
    f32p = np.ctypeslib.ndpointer(np.float32, flags="C_CONTIGUOUS")
    i64p = np.ctypeslib.ndpointer(np.int64, flags="C_CONTIGUOUS")
    i64, u64, u32, i32 = ctypes.c_int64, ctypes.c_uint64, ctypes.c_uint32, ctypes.c_int
    so.rd_standard_normal_f32.argtypes = [f32p, i64p, i64, i64, u64, u32]
    so.rd_plan_step_f32.argtypes = [f32p] * 6 + [i64p, i64, i64, i64, u64, u32, f32p, i32]
    return so


@pytest.mark.parametrize("shape", [(3, 8, 8), (1, 5, 3), (7,)])
def test_kernel_noise_equals_generic(host_lib, shape):
    idx = np.array([0, 5, 2**33 + 7, 123], dtype=np.int64)
    D = int(np.prod(shape))
    out = np.empty((4, *shape), np.float32)
    seed, step = 2**62 + 11, 417
    host_lib.rd_standard_normal_f32(out, idx, 4, D, seed, step)
    ref = standard_normal(seed, idx, step, shape, xp=npx, dtype=np.float32)
    np.testing.assert_allclose(out, ref, rtol=0, atol=2e-6)


def _host_step(lib, plan, k, x, out, history, seed, idx):
    """Step k of ``plan`` through the host-compiled kernel, as plan_step_cuda launches it."""
    coef, flags = step_arguments(plan, k, len(history[:2]))
    B, D = x.shape[0], int(np.prod(x.shape[1:]))
    x_new, x0 = np.empty_like(x), np.empty_like(x)
    h = [np.ascontiguousarray(a) for a in history[:2]] + [x, x]
    lib.rd_plan_step_f32(
        np.ascontiguousarray(x), np.ascontiguousarray(out), h[0], h[1], x_new, x0, idx,
        B, D, out[0].size, seed, int(plan.step_index[k]), coef, flags,
    )
    return x_new, x0


PLANS = [
    ("ddpm", "epsilon", "fixed_small", True, {}),
    ("ddpm", "epsilon", "fixed_large", False, {}),
    ("ddpm", "v", "learned_range", True, {}),
    ("ddpm", "x0", "learned", False, {}),
    ("ddim", "x0", "fixed_small", True, {"eta": 0.7}),
    ("euler", "v", "fixed_small", True, {}),
    ("dpmpp_2m", "epsilon", "learned_range", False, {}),
    ("dpmpp_3m", "v", "fixed_small", True, {"lower_order_final": False}),
    ("dpmpp_2m_sde", "epsilon", "fixed_small", True, {"eta": 0.5}),
]


@pytest.mark.parametrize(("name", "prediction", "variance", "clip", "options"), PLANS)
def test_kernel_runs_every_plan_as_the_generic_loop(host_lib, name, prediction, variance, clip, options):
    """Every plan, run step by step through the kernel compiled for the host, gives the samples
    of the generic float32 loop (run_plan on NumPy): the same operations in the same order."""
    base = rd.get_schedule("linear", 100)
    d = rd.Diffusion(
        base, prediction=prediction, variance=variance, image_shape=(2, 3, 5), clip_denoised=clip
    )
    plan = d.plan(name, steps=12, **options)
    B, seed = 4, 2**40 + 3
    idx = np.arange(7, 7 + B, dtype=np.int64)
    rng = np.random.default_rng(0)
    w = rng.standard_normal((d.out_channels, 2)).astype(np.float32)

    def den(x, t):  # a smooth, t-dependent stand-in network with the right channels
        tt = (t.astype(np.float32) / 100.0)[:, None, None, None]
        mix = np.einsum("oc,bchw->bohw", w, x)
        return np.tanh(0.7 * np.concatenate([x] * (d.out_channels // 2), axis=1) + 0.3 * mix * tt)

    generic = rd.run_plan(plan, den, (B, 2, 3, 5), seed=seed, sample_indices=idx)
    x = standard_normal(seed, idx, rd.noise.PRIOR_STEP, (2, 3, 5), xp=npx, dtype=np.float32)
    history = []
    for k in range(plan.steps):
        out = den(x, np.full(B, plan.model_t[k], dtype=np.int64)).astype(np.float32)
        x, x0 = _host_step(host_lib, plan, k, x, out, history, seed, idx)
        history = [x0, *history][: plan.history - 1]
    tol = 2e-6 if plan.learned_noise else 0.0  # expf on the host vs NumPy's exp
    np.testing.assert_allclose(x, generic, rtol=0, atol=tol)


@pytest.mark.gpu
@pytest.mark.parametrize(("name", "prediction", "variance", "clip", "options"), PLANS)
def test_fused_plans_equal_the_generic_path_on_gpu(name, prediction, variance, clip, options):
    import array_api_compat.cupy as cxp
    import cupy

    s = rd.get_schedule("cosine", 50)
    d = rd.Diffusion(
        s, prediction=prediction, variance=variance, image_shape=(3, 2, 2), clip_denoised=clip
    )
    oracle = rd.GaussianMixture.gaussian(np.zeros(12), 0.4)

    def den(x, t):
        out = oracle.predict(s, x.reshape(x.shape[0], -1), t, prediction).reshape(x.shape)
        return cupy.concatenate([out, cupy.tanh(x)], axis=1) if d.variance.learned else out

    kw = {"seed": 3, "xp": cxp, "dtype": cupy.float32, "sampler": name, "steps": 20, **options}
    generic = d.sample(den, 16, fused=False, **kw)
    fused = d.sample(den, 16, fused=True, **kw)
    np.testing.assert_allclose(fused.get(), generic.get(), rtol=1e-5, atol=1e-5)


@pytest.mark.gpu
def test_fused_step_refuses_a_history_of_another_shape():
    """The kernel reads the earlier x̂0 with x's indexing, so one of another shape is an error
    (it was only checked for dtype and layout, and read out of bounds)."""
    import cupy

    from refdiff.fused import plan_step_cuda

    d = rd.Diffusion(rd.get_schedule("linear", 100), image_shape=(3, 2, 2))
    plan = d.plan("dpmpp_2m", steps=5)
    x = cupy.zeros((4, 3, 2, 2), dtype=cupy.float32)
    fewer = cupy.zeros((2, 3, 2, 2), dtype=cupy.float32)
    with pytest.raises(ValueError, match=r"history has shape \(2, 3, 2, 2\)"):
        plan_step_cuda(plan, 1, x, x.copy(), [fewer], seed=0, sample_indices=cupy.arange(4))


def test_cuda_source_compiles_for_the_gpu(tmp_path):
    """The device branch of the source (the one no host test runs) compiles with nvcc, with the
    options CuPy is given: syntax and types are checked even without a GPU."""
    nvcc = shutil.which("nvcc")
    if nvcc is None:
        pytest.skip("no nvcc to compile the CUDA source")
    src, ptx = tmp_path / "k.cu", tmp_path / "k.ptx"
    src.write_text(CUDA_SOURCE)
    subprocess.run(
        [nvcc, "-ptx", "-arch=sm_90", "--fmad=false", "-std=c++11", str(src), "-o", str(ptx)],
        check=True,
        capture_output=True,
    )
    text = ptx.read_text()
    assert ".entry rd_plan_step_f32" in text and ".entry rd_standard_normal_f32" in text
