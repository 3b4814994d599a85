"""Fused CUDA kernels for CuPy: counter-based noise and the DDPM update in one pass.

The generic array-API path of an ancestral step reads and writes the batch about ten times
(x̂_0, its clip, the posterior mean, the noise draw through Philox in int64 arithmetic, the final
sum). Here one kernel reads x_t and ε̂ once and writes x_{t-1} once, drawing its Gaussian noise
inside the kernel from the same Philox4x32-10 stream as :func:`refdiff.noise.standard_normal`
(same key, same counters, same Box–Muller pairing), so the fused path equals the generic one and a
sample still depends only on (seed, sample index, step).

The CUDA source is also compiled for the host (``-DRD_HOST``) by the tests, so the kernel's
arithmetic is checked against the generic NumPy path on machines without a GPU; on a GPU the
``gpu``-marked tests compare the real kernel with the generic CuPy path.

Nothing here imports cupy at module level.
"""

from __future__ import annotations

import functools
import math
from typing import Any

import numpy as np

__all__ = ["CUDA_SOURCE", "ddpm_step_eps_cuda", "standard_normal_cuda"]

CUDA_SOURCE = r"""
typedef unsigned int rd_u32;
typedef unsigned long long rd_u64;
typedef long long rd_i64;
#ifdef RD_HOST
#include <math.h>
#define RD_FN static inline
#define RD_KERNEL extern "C"
#else
#define RD_FN __device__ __forceinline__
#define RD_KERNEL extern "C" __global__
#endif

/* Philox4x32-10 (Salmon et al. 2011), as refdiff.noise.philox4x32. */
RD_FN void rd_philox(rd_u32 c[4], rd_u32 k0, rd_u32 k1) {
    for (int r = 0; r < 10; ++r) {
        if (r) { k0 += 0x9E3779B9u; k1 += 0xBB67AE85u; }
        rd_u64 p0 = (rd_u64)0xD2511F53u * c[0];
        rd_u64 p1 = (rd_u64)0xCD9E8D57u * c[2];
        rd_u32 hi0 = (rd_u32)(p0 >> 32), lo0 = (rd_u32)p0;
        rd_u32 hi1 = (rd_u32)(p1 >> 32), lo1 = (rd_u32)p1;
        rd_u32 n0 = hi1 ^ c[1] ^ k0, n2 = hi0 ^ c[3] ^ k1;
        c[0] = n0; c[1] = lo1; c[2] = n2; c[3] = lo0;
    }
}

/* Four standard normals of quad q of sample `idx` at `step` (Box-Muller on word pairs 0-1, 2-3). */
RD_FN void rd_normal4(double z[4], rd_u64 seed, rd_i64 idx, rd_u32 step, rd_i64 q) {
    rd_u32 c[4] = {(rd_u32)q, step, (rd_u32)((rd_u64)idx & 0xFFFFFFFFu),
                     (rd_u32)((rd_u64)idx >> 32)};
    rd_philox(c, (rd_u32)(seed & 0xFFFFFFFFu), (rd_u32)(seed >> 32));
    const double inv = 1.0 / 4294967296.0, two_pi = 6.283185307179586;
    for (int h = 0; h < 2; ++h) {
        double u1 = ((double)c[2 * h] + 0.5) * inv, u2 = ((double)c[2 * h + 1] + 0.5) * inv;
        double r = sqrt(-2.0 * log(u1)), th = two_pi * u2;
        z[2 * h] = r * cos(th);
        z[2 * h + 1] = r * sin(th);
    }
}

/* One ancestral DDPM step from an epsilon prediction, float32, for quad q of sample b:
   x0 = r1 x - r2 eps (clipped); mean = c1 x0 + c2 x; out = mean + sigma z. */
RD_FN void rd_ddpm_quad(const float* x, const float* eps, float* out, const rd_i64* idx,
                        rd_i64 b, rd_i64 D, rd_u64 seed, rd_u32 step, rd_i64 q,
                        float r1, float r2, float c1, float c2, float sigma,
                        float lo, float hi, int clip, int noise) {
    double z[4] = {0.0, 0.0, 0.0, 0.0};
    if (noise) rd_normal4(z, seed, idx[b], step, q);
    for (int w = 0; w < 4; ++w) {
        rd_i64 j = 4 * q + w;
        if (j >= D) break;
        rd_i64 k = b * D + j;
        float xt = x[k];
        float x0 = r1 * xt;
        float e = r2 * eps[k];
        x0 = x0 - e;
        if (clip) x0 = x0 < lo ? lo : (x0 > hi ? hi : x0);
        float m1 = c1 * x0;
        float m2 = c2 * xt;
        float mean = m1 + m2;
        if (noise) { float s = sigma * (float)z[w]; mean = mean + s; }
        out[k] = mean;
    }
}

RD_FN void rd_normal_quad(float* out, const rd_i64* idx, rd_i64 b, rd_i64 D, rd_u64 seed,
                          rd_u32 step, rd_i64 q) {
    double z[4];
    rd_normal4(z, seed, idx[b], step, q);
    for (int w = 0; w < 4; ++w) {
        rd_i64 j = 4 * q + w;
        if (j >= D) break;
        out[b * D + j] = (float)z[w];
    }
}

#ifdef RD_HOST
RD_KERNEL void rd_ddpm_step_f32(const float* x, const float* eps, float* out, const rd_i64* idx,
                      rd_i64 B, rd_i64 D, rd_u64 seed, rd_u32 step,
                      float r1, float r2, float c1, float c2, float sigma,
                      float lo, float hi, int clip, int noise) {
    rd_i64 Q = (D + 3) / 4;
    for (rd_i64 b = 0; b < B; ++b)
        for (rd_i64 q = 0; q < Q; ++q)
            rd_ddpm_quad(x, eps, out, idx, b, D, seed, step, q, r1, r2, c1, c2, sigma, lo, hi, clip, noise);
}
RD_KERNEL void rd_standard_normal_f32(float* out, const rd_i64* idx, rd_i64 B, rd_i64 D, rd_u64 seed,
                            rd_u32 step) {
    rd_i64 Q = (D + 3) / 4;
    for (rd_i64 b = 0; b < B; ++b)
        for (rd_i64 q = 0; q < Q; ++q) rd_normal_quad(out, idx, b, D, seed, step, q);
}
#else
RD_KERNEL void rd_ddpm_step_f32(const float* x, const float* eps, float* out, const rd_i64* idx,
                                rd_i64 B, rd_i64 D, rd_u64 seed, rd_u32 step,
                                float r1, float r2, float c1, float c2, float sigma,
                                float lo, float hi, int clip, int noise) {
    rd_i64 Q = (D + 3) / 4;
    rd_i64 n = (rd_i64)blockIdx.x * blockDim.x + threadIdx.x;
    if (n >= B * Q) return;
    rd_ddpm_quad(x, eps, out, idx, n / Q, D, seed, step, n % Q, r1, r2, c1, c2, sigma, lo, hi, clip, noise);
}
RD_KERNEL void rd_standard_normal_f32(float* out, const rd_i64* idx, rd_i64 B, rd_i64 D,
                                      rd_u64 seed, rd_u32 step) {
    rd_i64 Q = (D + 3) / 4;
    rd_i64 n = (rd_i64)blockIdx.x * blockDim.x + threadIdx.x;
    if (n >= B * Q) return;
    rd_normal_quad(out, idx, n / Q, D, seed, step, n % Q);
}
#endif
"""

_THREADS = 256


@functools.cache
def _module() -> Any:
    import cupy

    # --fmad=false: no fused multiply-add contraction, so float32 results round like the generic path.
    return cupy.RawModule(code=CUDA_SOURCE, options=("--fmad=false", "-std=c++11"))


def _check_batch(x: Any, name: str) -> tuple[int, int]:
    import cupy

    if not isinstance(x, cupy.ndarray):
        raise TypeError(f"{name} must be a CuPy array, got {type(x).__name__}")
    if x.dtype != cupy.float32 or not x.flags.c_contiguous:
        raise TypeError(f"{name} must be a C-contiguous float32 CuPy array, got {x.dtype}")
    return int(x.shape[0]), int(math.prod(x.shape[1:]))


def _indices(sample_indices: Any, B: int) -> Any:
    import cupy

    idx = cupy.ascontiguousarray(cupy.asarray(sample_indices), dtype=cupy.int64)
    if idx.shape != (B,):
        raise ValueError(f"sample_indices must have shape [{B}], got {idx.shape}")
    return idx


def standard_normal_cuda(seed: int, sample_indices: Any, step: int, shape: tuple[int, ...]) -> Any:
    """float32 noise ``[B, *shape]`` on the current CUDA device, equal to
    ``refdiff.noise.standard_normal(seed, sample_indices, step, shape, dtype=float32)``."""
    import cupy

    from .noise import check_seed

    seed = check_seed(seed)
    B = int(sample_indices.shape[0])
    D = int(math.prod(shape))
    out = cupy.empty((B, *shape), dtype=cupy.float32)
    idx = _indices(sample_indices, B)
    n = B * ((D + 3) // 4)
    if n:
        _module().get_function("rd_standard_normal_f32")(
            ((n + _THREADS - 1) // _THREADS,),
            (_THREADS,),
            (out, idx, np.int64(B), np.int64(D), np.uint64(seed), np.uint32(step)),
        )
    return out


def ddpm_step_eps_cuda(
    schedule: Any,
    x_t: Any,
    eps: Any,
    t: int,
    *,
    seed: int,
    sample_indices: Any,
    clip_denoised: bool = True,
    data_range: tuple[float, float] = (-1.0, 1.0),
    variance: str = "fixed_small",
    out: Any = None,
) -> Any:
    """One fused ancestral DDPM step from an ε-prediction with a fixed variance (float32, CuPy).

    Equals ``p_mean_variance(...).mean + σ_t · standard_normal(seed, idx, t, ...)`` of the generic
    path (no noise at index 0). ``out`` may be a preallocated float32 array (not aliasing ``eps``).
    """
    import cupy

    from .noise import check_seed

    seed = check_seed(seed)
    B, D = _check_batch(x_t, "x_t")
    if _check_batch(eps, "eps") != (B, D) or eps.shape != x_t.shape:
        raise ValueError(f"eps has shape {eps.shape}, expected {x_t.shape}")
    T = schedule.num_timesteps
    if isinstance(t, bool) or not isinstance(t, (int, np.integer)) or not 0 <= int(t) < T:
        raise ValueError(f"timestep {t!r} is not an integer index in [0, {T - 1}]")
    t = int(t)
    if schedule.zero_terminal_snr and t == T - 1:
        raise ValueError(
            "an ε-prediction cannot recover x_0 at the last step of a zero-terminal-SNR schedule"
        )
    if variance == "fixed_small":
        log_var = schedule.posterior_log_variance_clipped[t]
    elif variance == "fixed_large":
        log_var = schedule.fixed_large_log_variance[t]
    else:
        raise ValueError(
            f"the fused step supports fixed_small and fixed_large variances, not {variance!r}"
        )
    f32 = np.float32
    # Coefficients exactly as the generic path forms them: float64 tables cast to float32, then
    # σ = exp(0.5 · log σ²) in float32.
    sigma = np.exp(f32(0.5) * f32(log_var), dtype=f32)
    idx = _indices(sample_indices, B)
    if out is None:
        out = cupy.empty_like(x_t)
    n = B * ((D + 3) // 4)
    lo, hi = data_range
    _module().get_function("rd_ddpm_step_f32")(
        ((n + _THREADS - 1) // _THREADS,),
        (_THREADS,),
        (
            x_t,
            eps,
            out,
            idx,
            np.int64(B),
            np.int64(D),
            np.uint64(seed),
            np.uint32(t),
            f32(schedule.sqrt_recip_alphas_cumprod[t]),
            f32(schedule.sqrt_recipm1_alphas_cumprod[t]),
            f32(schedule.posterior_mean_coef1[t]),
            f32(schedule.posterior_mean_coef2[t]),
            f32(sigma),
            f32(lo),
            f32(hi),
            np.int32(bool(clip_denoised)),
            np.int32(t > 0),
        ),
    )
    return out
