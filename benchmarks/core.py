"""Core overhead on NumPy: refdiff's generic array-API path against hand-fused NumPy.

For a 128x3x32x32 float32 batch, times (median of repeats, one run):
  * q_sample:         x_t = √ᾱ_t x_0 + √(1-ᾱ_t) ε
  * one DDPM update:  x̂_0 = √(1/ᾱ_t) x_t - √(1/ᾱ_t - 1) ε̂, clipped; μ = c1 x̂_0 + c2 x_t;
                      x_{t-1} = μ + σ_t z   (the arithmetic of one ancestral step, model excluded)
and prints the ratio core / hand-fused. The hand-fused versions use in-place NumPy ufuncs with
scalar coefficients: the fastest plain-NumPy expression of the same arithmetic.

    python benchmarks/core.py [--repeats 50]
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

import refdiff as rd


def _time(fn, repeats: int) -> float:
    fn()  # warm-up
    out = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return statistics.median(out)


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--repeats", type=int, default=50)
    ap.add_argument("--batch", type=int, default=128)
    args = ap.parse_args()

    s = rd.get_schedule("linear", 1000)
    shape = (args.batch, 3, 32, 32)
    rng = np.random.default_rng(0)
    x0 = rng.uniform(-1, 1, shape).astype(np.float32)
    noise = rng.standard_normal(shape, dtype=np.float32)
    eps_hat = rng.standard_normal(shape, dtype=np.float32)
    z = rng.standard_normal(shape, dtype=np.float32)
    t_int = 500
    t = np.full(args.batch, t_int)
    buf = np.empty(shape, np.float32)
    buf2 = np.empty(shape, np.float32)

    a, b = (
        np.float32(s.sqrt_alphas_cumprod[t_int]),
        np.float32(s.sqrt_one_minus_alphas_cumprod[t_int]),
    )

    def q_core():
        return rd.q_sample(s, x0, t, noise)

    def q_fused():
        np.multiply(x0, a, out=buf)
        np.multiply(noise, b, out=buf2)
        np.add(buf, buf2, out=buf)
        return buf

    xt = q_core()
    r1, r2 = (
        np.float32(v[t_int]) for v in (s.sqrt_recip_alphas_cumprod, s.sqrt_recipm1_alphas_cumprod)
    )
    c1, c2 = np.float32(s.posterior_mean_coef1[t_int]), np.float32(s.posterior_mean_coef2[t_int])
    sig = np.float32(np.exp(0.5 * s.posterior_log_variance_clipped[t_int]))

    def step_core():
        p = rd.p_mean_variance(s, eps_hat, xt, t, clip_denoised=True)
        return p.mean + np.exp(0.5 * p.log_variance) * z

    def step_fused():
        np.multiply(xt, r1, out=buf)
        np.multiply(eps_hat, r2, out=buf2)
        np.subtract(buf, buf2, out=buf)
        np.clip(buf, -1, 1, out=buf)
        np.multiply(buf, c1, out=buf)
        np.multiply(xt, c2, out=buf2)
        np.add(buf, buf2, out=buf)
        np.multiply(z, sig, out=buf2)
        np.add(buf, buf2, out=buf)
        return buf

    np.testing.assert_allclose(q_core(), q_fused(), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(step_core(), step_fused(), rtol=1e-5, atol=1e-5)

    rows = []
    for name, core, fused in (
        ("q_sample", q_core, q_fused),
        ("DDPM update", step_core, step_fused),
    ):
        tc, tf = _time(core, args.repeats), _time(fused, args.repeats)
        rows.append((name, tc * 1e3, tf * 1e3, tc / tf))
    tn = _time(
        lambda: rd.standard_normal(0, np.arange(args.batch), 1, shape[1:], xp=np, dtype=np.float32),
        10,
    )
    tr = _time(lambda: rng.standard_normal(shape, dtype=np.float32), 10)

    print(f"refdiff core vs hand-fused NumPy, batch {shape}, float32, median of {args.repeats}")
    print(f"{'operation':<14} {'core ms':>9} {'fused ms':>9} {'ratio':>7}")
    for name, tc, tf, ratio in rows:
        print(f"{name:<14} {tc:9.2f} {tf:9.2f} {ratio:7.2f}")
    print(
        f"{'noise draw':<14} {tn * 1e3:9.2f} {tr * 1e3:9.2f} {tn / tr:7.2f}   (Philox per-sample vs NumPy PCG64 randn)"
    )


if __name__ == "__main__":
    main()
