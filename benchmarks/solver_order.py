"""The order of convergence of the deterministic samplers, measured against the exact solution.

For Gaussian data N(m, s² I) the probability-flow ODE has a closed form
(:meth:`refdiff.GaussianMixture.probability_flow`: it keeps (x_t - √ᾱ_t m)/√(ᾱ_t s² + 1 - ᾱ_t)
fixed). Each solver runs from the same x_T with N steps (N - 1 intervals doubling), in float64,
and its result is compared with the exact x̂_0 at the end of the exact flow; the table gives the
max error and log2 of successive error ratios (the measured order).

The schedule's log-SNR runs linearly from +8 to -12 over 4001 training indices, so that the
Karras steps, snapped to training indices, form one smooth family of meshes (on a T = 1000
schedule, snapping to integers perturbs the meshes and blurs the slopes).
tests/test_solvers.py asserts the same slopes within 0.15.

    python benchmarks/solver_order.py
    python benchmarks/solver_order.py --spacing logsnr --steps 17 33 65 129 257 513
"""

from __future__ import annotations

import argparse

import numpy as np

import refdiff as rd

ORDERS = {"euler": 1, "heun": 2, "dpmpp_2m": 2, "dpmpp_3m": 3}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--spacing", default="karras", help="even, logsnr or karras (default: karras)")
    p.add_argument("--steps", type=int, nargs="+", default=[17, 33, 65, 129, 257])
    args = p.parse_args()
    log_snr = np.linspace(8.0, -12.0, 4001)
    acp = 1.0 / (1.0 + np.exp(-log_snr))
    base = rd.Schedule(1.0 - acp / np.append(1.0, acp[:-1]))
    data = rd.GaussianMixture.gaussian(np.full(4, 0.3), 1.0)
    x_T = rd.standard_normal(0, np.arange(8), rd.noise.PRIOR_STEP, (4,), xp=np, dtype=np.float64)
    x_end = data.probability_flow(x_T, acp[-1], acp[0])
    exact = data.predict(base, x_end, np.zeros(8, dtype=np.int64), "x0")
    print(f"max error against the exact solution ({args.spacing} spacing), then log2 ratios\n")
    print("| sampler (order) | " + " | ".join(f"N = {n}" for n in args.steps) + " |")
    print("|---|" + "---:|" * len(args.steps))
    for name, order in ORDERS.items():
        errors = []
        for n in args.steps:
            s = base.respace(rd.select_timesteps(base, n, args.spacing))
            x = rd.sample(name, s, data.denoiser(base), x_T.shape, x_T=x_T, clip_denoised=False)
            errors.append(float(np.abs(x - exact).max()))
        print(f"| {name} ({order}) | " + " | ".join(f"{e:.2e}" for e in errors) + " |")
        slopes = -np.diff(np.log2(errors))
        print("| measured order | – | " + " | ".join(f"{v:.2f}" for v in slopes) + " |")


if __name__ == "__main__":
    main()
