"""How far the tanh approximation of Φ (Ho et al.'s and improved-diffusion's decoder) is from the
exact discretized-Gaussian log-likelihood, in nats per pixel.

The decoder L_0 = -log p(x_0 | x_1) of 8-bit data is log(Φ(b) - Φ(a)) over a pixel's bin. Ho et
al.'s code, and improved-diffusion's ``discretized_gaussian_log_likelihood`` after it, compute Φ
as 0.5 (1 + tanh(√(2/π) (x + 0.044715 x³))) and clamp each probability at 1e-12 before the log.
This script evaluates that formula (written here from the published equations) next to
refdiff's exact log-space decoder, for a pixel whose bin centre lies k standard deviations from
the predicted mean, in float64, and prints the absolute error in nats. A pixel k σ away is not
rare: with a predicted σ of a few levels, an error of a few levels is that far.

    python benchmarks/tanh_decoder.py
"""

from __future__ import annotations

import argparse
import math

import numpy as np

import refdiff as rd

CLAMP = 1e-12


def tanh_cdf(x: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x**3)))


def tanh_decoder(x: np.ndarray, means: np.ndarray, log_scales: np.ndarray) -> np.ndarray:
    """The tanh-approximated discretized Gaussian log-likelihood of 8-bit data in [-1, 1]."""
    inv = np.exp(-log_scales)
    centred = x - means
    cdf_plus = tanh_cdf(inv * (centred + 1.0 / 255.0))
    cdf_min = tanh_cdf(inv * (centred - 1.0 / 255.0))
    log_cdf_plus = np.log(np.maximum(cdf_plus, CLAMP))
    log_one_minus_cdf_min = np.log(np.maximum(1.0 - cdf_min, CLAMP))
    log_delta = np.log(np.maximum(cdf_plus - cdf_min, CLAMP))
    return np.where(x < -0.999, log_cdf_plus, np.where(x > 0.999, log_one_minus_cdf_min, log_delta))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--sigmas",
        type=float,
        nargs="+",
        default=[0.02, 0.1],
        help="predicted standard deviations (model units; the 256 levels are 2/255 apart)",
    )
    args = parser.parse_args()
    ks = np.array([1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 8.0, 10.0])
    print("|x - mean| / σ | " + " | ".join(f"σ = {s:g}" for s in args.sigmas) + " |")
    print("|---|" + "---|" * len(args.sigmas))
    for k in ks:
        errs = []
        for sigma in args.sigmas:
            x = np.array([0.0])
            means = np.array([-k * sigma])
            ls = np.log(np.array([sigma]))
            exact = rd.discretized_gaussian_log_likelihood(x, means=means, log_scales=ls)
            approx = tanh_decoder(x, means, ls)
            errs.append(abs(float(approx[0] - exact[0])))
        print(f"| {k:g} | " + " | ".join(f"{e:.2g} nats" for e in errs) + " |")


if __name__ == "__main__":
    main()
