"""Fused CUDA kernels for CuPy: one sampler step of any plan, with its noise, in one pass.

The generic array-API path of a plan step (:func:`refdiff.plans.run_plan`) reads and writes the
batch about ten times (x̂_0, its clip, each term of the combination, the noise draw through Philox
in int64 arithmetic, the final sum). Here one kernel reads x, the model output and the x̂_0
history once and writes the next x and x̂_0 once, drawing its Gaussian noise inside the kernel
from the same Philox4x32-10 stream as :func:`refdiff.noise.standard_normal` (same key, same
counters, same Box–Muller pairing). Its float32 arithmetic follows the generic loop's operation
by operation (no fused multiply-add: ``--fmad=false``), so the fused path equals the generic one
and a sample still depends only on (seed, sample index, step). Every plan runs on it: DDPM with
fixed or learned variances, DDIM, Euler, DPM-Solver++ 2M, 3M and 2M SDE; ``run_plan`` picks it on
CuPy in float32 with the built-in noise.

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

__all__ = ["CUDA_SOURCE", "plan_step_cuda"]

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

/* The flags of a plan step (set on the host from the plan's row, as the generic loop decides). */
#define RD_PX 1        /* pred_x != 0: x̂0 = px x + (po out); else x̂0 = po out */
#define RD_PO 2        /* pred_out != 1: multiply the output by po */
#define RD_CLIP 4      /* clip x̂0 to [lo, hi] */
#define RD_CX 8        /* x_coef != 0 */
#define RD_C0 16       /* the weights of x̂0_k, x̂0_{k-1}, x̂0_{k-2} are non-zero */
#define RD_C1 32
#define RD_C2 64
#define RD_NOISE 128   /* the step draws noise */
#define RD_LEARNED 256 /* the noise scale is exp(log var / 2) from the output's variance channels */
#define RD_RANGE 512   /* ... with log var = f vmax + (1 - f) vmin, f = (v + 1) / 2 */

/* c: px, po, lo, hi, cx, c0, c1, c2, cn, vmin, vmax (float32, cast from the plan's float64). */
RD_FN void rd_plan_quad(const float* x, const float* out, const float* h1, const float* h2,
                        float* x_new, float* x0_out, const rd_i64* idx, rd_i64 b, rd_i64 D,
                        rd_i64 Dout, rd_u64 seed, rd_u32 step, rd_i64 q, const float* c, int flags) {
    double z[4] = {0.0, 0.0, 0.0, 0.0};
    if (flags & RD_NOISE) rd_normal4(z, seed, idx[b], step, q);
    for (int w = 0; w < 4; ++w) {
        rd_i64 j = 4 * q + w;
        if (j >= D) break;
        rd_i64 k = b * D + j;
        float xt = x[k];
        float o = out[b * Dout + j];
        float y = (flags & RD_PO) ? o * c[1] : o;
        float x0 = y;
        if (flags & RD_PX) { float a = xt * c[0]; x0 = a + y; }
        if (flags & RD_CLIP) x0 = x0 < c[2] ? c[2] : (x0 > c[3] ? c[3] : x0);
        int any = 0;
        float acc = 0.0f;
        if (flags & RD_CX) { acc = xt * c[4]; any = 1; }
        if (flags & RD_C0) { float m = x0 * c[5]; acc = any ? acc + m : m; any = 1; }
        if (flags & RD_C1) { float m = h1[k] * c[6]; acc = any ? acc + m : m; any = 1; }
        if (flags & RD_C2) { float m = h2[k] * c[7]; acc = any ? acc + m : m; any = 1; }
        if (!any) acc = xt * 0.0f;
        if (flags & RD_NOISE) {
            float zf = (float)z[w];
            if (flags & RD_LEARNED) {
                float v = out[b * Dout + D + j];
                float lv = v;
                if (flags & RD_RANGE) {
                    float f = (v + 1.0f) / 2.0f;
                    float hi = f * c[10];
                    float lo = (1.0f - f) * c[9];
                    lv = hi + lo;
                }
                float s = expf(0.5f * lv);
                float n = s * zf;
                acc = acc + n;
            } else {
                float n = c[8] * zf;
                acc = acc + n;
            }
        }
        x_new[k] = acc;
        x0_out[k] = x0;
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
RD_KERNEL void rd_plan_step_f32(const float* x, const float* out, const float* h1,
                                const float* h2, float* x_new, float* x0_out, const rd_i64* idx,
                                rd_i64 B, rd_i64 D, rd_i64 Dout, rd_u64 seed, rd_u32 step,
                                const float* c, int flags) {
    rd_i64 Q = (D + 3) / 4;
    for (rd_i64 b = 0; b < B; ++b)
        for (rd_i64 q = 0; q < Q; ++q)
            rd_plan_quad(x, out, h1, h2, x_new, x0_out, idx, b, D, Dout, seed, step, q, c, flags);
}
RD_KERNEL void rd_standard_normal_f32(float* out, const rd_i64* idx, rd_i64 B, rd_i64 D, rd_u64 seed,
                            rd_u32 step) {
    rd_i64 Q = (D + 3) / 4;
    for (rd_i64 b = 0; b < B; ++b)
        for (rd_i64 q = 0; q < Q; ++q) rd_normal_quad(out, idx, b, D, seed, step, q);
}
#else
RD_KERNEL void rd_plan_step_f32(const float* x, const float* out, const float* h1,
                                const float* h2, float* x_new, float* x0_out, const rd_i64* idx,
                                rd_i64 B, rd_i64 D, rd_i64 Dout, rd_u64 seed, rd_u32 step,
                                const float* c, int flags) {
    rd_i64 Q = (D + 3) / 4;
    rd_i64 n = (rd_i64)blockIdx.x * blockDim.x + threadIdx.x;
    if (n >= B * Q) return;
    rd_plan_quad(x, out, h1, h2, x_new, x0_out, idx, n / Q, D, Dout, seed, step, n % Q, c, flags);
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
_FLAGS = {
    "px": 1,
    "po": 2,
    "clip": 4,
    "cx": 8,
    "c0": 16,
    "c1": 32,
    "c2": 64,
    "noise": 128,
    "learned": 256,
    "range": 512,
}


@functools.cache
def _module() -> Any:
    import cupy

    # --fmad=false: no fused multiply-add contraction, so float32 results round like the generic path.
    return cupy.RawModule(code=CUDA_SOURCE, options=("--fmad=false", "-std=c++11"))


def step_arguments(plan: Any, k: int, history: int) -> tuple[np.ndarray, int]:
    """The kernel's float32 coefficients [11] and flags for step ``k`` of ``plan`` with
    ``history`` earlier x̂0 at hand: the generic loop's float64 row cast to float32, and which of
    its terms it skips (a zero weight, or a weight of an x̂0 the run has not made yet)."""
    f32 = np.float32
    lo, hi = plan.clip if plan.clip is not None else (0.0, 0.0)
    d = [float(v) if j <= history else 0.0 for j, v in enumerate(plan.d_coef[k])]
    d += [0.0] * (3 - len(d))
    c = np.array(
        [
            plan.pred_x[k],
            plan.pred_out[k],
            lo,
            hi,
            plan.x_coef[k],
            *d,
            plan.noise_coef[k],
            plan.log_var_min[k],
            plan.log_var_max[k],
        ],
        dtype=f32,
    )
    on = {
        "px": plan.pred_x[k] != 0.0,
        "po": plan.pred_out[k] != 1.0,
        "clip": plan.clip is not None,
        "cx": plan.x_coef[k] != 0.0,
        "c0": d[0] != 0.0,
        "c1": d[1] != 0.0,
        "c2": d[2] != 0.0,
        "noise": plan.noise_coef[k] != 0.0,
        "learned": plan.learned_noise,
        "range": plan.learned_noise and plan.variance.value == "learned_range",
    }
    return c, sum(_FLAGS[name] for name, v in on.items() if v)


def _check_batch(x: Any, name: str) -> tuple[int, int]:
    import cupy

    if not isinstance(x, cupy.ndarray):
        raise TypeError(f"{name} must be a CuPy array, got {type(x).__name__}")
    if x.dtype != cupy.float32 or not x.flags.c_contiguous:
        raise TypeError(f"{name} must be a C-contiguous float32 CuPy array, got {x.dtype}")
    return int(x.shape[0]), int(math.prod(x.shape[1:]))


def plan_step_cuda(
    plan: Any, k: int, x: Any, out: Any, history: list[Any], *, seed: int, sample_indices: Any
) -> tuple[Any, Any]:
    """Step ``k`` of ``plan`` as one CUDA kernel: ``(x_next, x̂0_k)`` from x [B, C, ...], the
    model output [B, C or 2C, ...] and the earlier x̂0 (``history``, newest first), all
    C-contiguous float32 CuPy arrays on one device. Equals the generic step of
    :func:`refdiff.plans.run_plan` (float32, the same operations in the same order)."""
    import cupy

    from .noise import check_seed

    if plan.history > 3:
        raise ValueError(
            f"the fused step combines at most 3 x̂0 predictions, the plan {plan.history}"
        )
    seed = check_seed(seed)
    B, D = _check_batch(x, "x")
    Bo, Dout = _check_batch(out, "the model output")
    channels = 2 if plan.variance.learned else 1
    if Bo != B or Dout != channels * D:
        raise ValueError(f"the model output has shape {out.shape}, expected {channels} x {x.shape}")
    hist = history[:2]
    for h in hist:
        # the kernel reads each x̂0 with x's indexing: another shape would be read out of bounds
        _check_batch(h, "an x̂0 of the history")
        if h.shape != x.shape:
            raise ValueError(f"an x̂0 of the history has shape {h.shape}, expected {x.shape}")
    idx = cupy.ascontiguousarray(cupy.asarray(sample_indices), dtype=cupy.int64)
    if idx.shape != (B,):
        raise ValueError(f"sample_indices must have shape [{B}], got {idx.shape}")
    coef, flags = step_arguments(plan, k, len(hist))
    x_new, x0 = cupy.empty_like(x), cupy.empty_like(x)
    h1 = hist[0] if len(hist) > 0 else x  # unread unless its weight is non-zero
    h2 = hist[1] if len(hist) > 1 else x
    n = B * ((D + 3) // 4)
    _module().get_function("rd_plan_step_f32")(
        ((n + _THREADS - 1) // _THREADS,),
        (_THREADS,),
        (
            x,
            out,
            h1,
            h2,
            x_new,
            x0,
            idx,
            np.int64(B),
            np.int64(D),
            np.int64(Dout),
            np.uint64(seed),
            np.uint32(int(plan.step_index[k])),
            cupy.asarray(coef),
            np.int32(flags),
        ),
    )
    return x_new, x0
