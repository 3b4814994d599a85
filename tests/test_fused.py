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
from refdiff.fused import CUDA_SOURCE
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
    i64, u64, u32, f32, i32 = (
        ctypes.c_int64,
        ctypes.c_uint64,
        ctypes.c_uint32,
        ctypes.c_float,
        ctypes.c_int,
    )
    so.rd_standard_normal_f32.argtypes = [f32p, i64p, i64, i64, u64, u32]
    so.rd_ddpm_step_f32.argtypes = (
        [f32p, f32p, f32p, i64p, i64, i64, u64, u32] + [f32] * 7 + [i32, i32]
    )
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


@pytest.mark.parametrize("t", [999, 500, 1, 0])
@pytest.mark.parametrize("variance", ["fixed_small", "fixed_large"])
def test_kernel_ddpm_step_equals_generic(host_lib, t, variance):
    rng = np.random.default_rng(t)
    B, shape = 5, (3, 4, 5)
    x = rng.standard_normal((B, *shape), dtype=np.float32)
    eps = rng.standard_normal((B, *shape), dtype=np.float32) * 3
    idx = np.arange(10, 10 + B, dtype=np.int64)
    seed = 99
    p = rd.p_mean_variance(SCHED, eps, x, t, clip_denoised=True, variance=variance)
    ref = p.mean
    if t > 0:
        ref = ref + np.exp(0.5 * p.log_variance) * standard_normal(
            seed, idx, t, shape, xp=npx, dtype=np.float32
        )
    log_var = (
        SCHED.posterior_log_variance_clipped
        if variance == "fixed_small"
        else SCHED.fixed_large_log_variance
    )[t]
    f32 = np.float32
    sigma = np.exp(f32(0.5) * f32(log_var), dtype=f32)
    out = np.empty_like(x)
    host_lib.rd_ddpm_step_f32(
        x,
        eps,
        out,
        idx,
        B,
        int(np.prod(shape)),
        seed,
        t,
        f32(SCHED.sqrt_recip_alphas_cumprod[t]),
        f32(SCHED.sqrt_recipm1_alphas_cumprod[t]),
        f32(SCHED.posterior_mean_coef1[t]),
        f32(SCHED.posterior_mean_coef2[t]),
        sigma,
        f32(-1),
        f32(1),
        1,
        int(t > 0),
    )
    np.testing.assert_allclose(out, ref, rtol=1e-6, atol=1e-6)


@pytest.mark.gpu
def test_cuda_kernels_equal_generic_cupy_path():
    import array_api_compat.cupy as cxp
    import cupy

    from refdiff.fused import ddpm_step_eps_cuda, standard_normal_cuda

    idx = cupy.arange(3, 131, dtype=cupy.int64)
    z = standard_normal_cuda(5, idx, 17, (3, 32, 32))
    ref = standard_normal(5, idx, 17, (3, 32, 32), xp=cxp, dtype=cupy.float32)
    np.testing.assert_allclose(z.get(), ref.get(), rtol=0, atol=2e-6)
    rng = np.random.default_rng(0)
    x = cupy.asarray(rng.standard_normal((128, 3, 32, 32), dtype=np.float32))
    eps = cupy.asarray(rng.standard_normal((128, 3, 32, 32), dtype=np.float32))
    for t in (999, 10, 0):
        out = ddpm_step_eps_cuda(SCHED, x, eps, t, seed=5, sample_indices=idx)
        p = rd.p_mean_variance(SCHED, eps, x, t, clip_denoised=True)
        want = p.mean
        if t > 0:
            want = want + cupy.exp(0.5 * p.log_variance) * standard_normal(
                5, idx, t, (3, 32, 32), xp=cxp, dtype=cupy.float32
            )
        np.testing.assert_allclose(out.get(), want.get(), rtol=1e-6, atol=1e-6)


@pytest.mark.gpu
def test_fused_ddpm_sampler_equals_generic_on_gpu():
    import array_api_compat.cupy as cxp
    import cupy

    s = rd.get_schedule("cosine", 50)
    oracle = rd.GaussianMixture.gaussian(np.zeros(12), 0.4)

    def den(x, t):
        return oracle.predict(s, x, t, "epsilon")

    shape = (16, 3, 2, 2)
    generic = rd.ddpm_sample(s, den, shape, seed=3, xp=cxp, dtype=cupy.float32)
    fused = rd.ddpm_sample(s, den, shape, seed=3, xp=cxp, dtype=cupy.float32, fused=True)
    np.testing.assert_allclose(fused.get(), generic.get(), rtol=1e-5, atol=1e-5)
