"""The in-graph Philox noise (refdiff.graph.standard_normal) under onnxruntime against
refdiff.noise.standard_normal on NumPy: time per draw and their ratio, and how far the graph's
Gaussians are from NumPy's.

For each batch (16 x (1, 8, 8), the tiny model's; 2 x (3, 32, 32), the cifar10 preset's) a graph
with inputs seed, indices, step and the float32 noise as output runs on onnxruntime's CPU
provider (``--threads`` intra-op threads), interleaved with the NumPy function on the same
arguments; each timing is the minimum over ``--repeats`` rounds of ``--calls`` calls. Then both
draw ``--check`` seeds x steps of a larger batch, and the worst float64 difference (absolute, and in
units of the last place of max(|z|, 1)) and the count of float32 values that differ are printed.

    python benchmarks/graph_noise.py
    python benchmarks/graph_noise.py --threads 2 --repeats 9

Timings on a shared machine are noisy: compare the ratios of one run, not numbers across runs.
"""

from __future__ import annotations

import argparse
import time

import array_api_compat.numpy as xp
import numpy as np
import onnxruntime as ort

from refdiff.graph import GraphBuilder, standard_normal
from refdiff.noise import PRIOR_STEP
from refdiff.noise import standard_normal as np_standard_normal

CASES = [(16, (1, 8, 8)), (2, (3, 32, 32))]


def noise_session(shape, dtype, threads: int) -> ort.InferenceSession:
    g = GraphBuilder("noise")
    seed = g.input("seed", np.int64, ())
    indices = g.input("indices", np.int64, ("batch",))
    step = g.input("step", np.int64, ())
    z = standard_normal(g, seed, indices, step, shape, dtype=dtype)
    g.output(z, "noise", dtype=dtype, shape=("batch", *shape))
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    model = g.to_model()
    return ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])


def feeds(seed: int, indices: np.ndarray, step: int) -> dict:
    return {"seed": np.array(seed), "indices": indices, "step": np.array(step)}


def timings(fns: dict, repeats: int, calls: int) -> dict:
    """Minimum time per call of each function, the functions interleaved round by round."""
    for fn in fns.values():
        fn()  # warm-up
    best = dict.fromkeys(fns, float("inf"))
    for _ in range(repeats):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            for _ in range(calls):
                fn()
            best[name] = min(best[name], (time.perf_counter() - t0) / calls)
    return best


def accuracy(threads: int, n_seeds: int) -> dict:
    """Worst float64 difference and float32 mismatches over seeds x steps x a 64 x (3, 32, 32)
    batch with indices around 2**32."""
    shape = (3, 32, 32)
    indices = np.arange(2**32 - 32, 2**32 + 32, dtype=np.int64)
    s64, s32 = noise_session(shape, np.float64, threads), noise_session(shape, np.float32, threads)
    worst_abs = worst_ulp = 0.0
    mismatched = total = 0
    for seed in range(n_seeds):
        seed = seed * 0x9E3779B97F4A7C15 % 2**63
        for step in (0, 1, 500, PRIOR_STEP):
            want = np_standard_normal(seed, indices, step, shape, xp=xp)
            (z64,) = s64.run(None, feeds(seed, indices, step))
            (z32,) = s32.run(None, feeds(seed, indices, step))
            diff = np.abs(z64 - want)
            worst_abs = max(worst_abs, float(diff.max()))
            ulp = np.spacing(np.maximum(np.abs(want), 1.0))  # a value near 0 comes from cos
            worst_ulp = max(worst_ulp, float((diff / ulp).max()))
            mismatched += int((z32 != want.astype(np.float32)).sum())
            total += want.size
    return {"values": total, "abs": worst_abs, "ulp": worst_ulp, "f32_mismatched": mismatched}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=1, help="onnxruntime intra-op threads")
    parser.add_argument("--repeats", type=int, default=7, help="rounds; the minimum is kept")
    parser.add_argument("--calls", type=int, default=50, help="calls per round")
    parser.add_argument("--check", type=int, default=4, help="seeds of the accuracy check")
    args = parser.parse_args()
    print(f"onnxruntime {ort.__version__}, {args.threads} thread(s), NumPy {np.__version__}")
    print(f"{'batch':>16}  {'graph ms':>9}  {'numpy ms':>9}  {'graph/numpy':>11}")
    for batch, shape in CASES:
        sess = noise_session(shape, np.float32, args.threads)
        indices = np.arange(batch, dtype=np.int64) + 1000
        f = feeds(123, indices, 17)
        best = timings(
            {
                "graph": lambda s=sess, f=f: s.run(None, f),
                "numpy": lambda i=indices, s=shape: np_standard_normal(
                    123, i, 17, s, xp=xp, dtype=np.float32
                ),
            },
            args.repeats,
            args.calls,
        )
        label = f"{batch} x {shape}"
        ratio = best["graph"] / best["numpy"]
        print(f"{label:>16}  {1e3 * best['graph']:9.3f}  {1e3 * best['numpy']:9.3f}  {ratio:11.2f}")
    acc = accuracy(args.threads, args.check)
    print(
        f"accuracy over {acc['values']} values: float64 worst |graph - numpy| = {acc['abs']:.3g} "
        f"({acc['ulp']:.0f} ulp of max(|z|, 1)); float32 values that differ: {acc['f32_mismatched']}"
    )


if __name__ == "__main__":
    main()
