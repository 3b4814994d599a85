"""What a large run costs: network calls per image, GFLOP per call, CPU seconds per image.

For each U-Net preset (random weights, exported to ONNX once) this prints the floating-point
operations of one network call on one image (counted by PyTorch's FlopCounterMode, a
multiply-add counted as 2), then times ``refdiff.runtime.sample_images`` (onnxruntime on the
CPU, the default sampler) at 10 and 20 network calls per image, on ``batch`` and on ``2 * batch``
images, and gives seconds per image and per network call on one image, the ratios that show how
the cost grows with steps and with images, and the time of 50,000 images on one such process.
Then it times the costliest score of CIFAR-10-sized samples, the memorisation check (each
sample's nearest neighbour among 50,000 training images, ``refdiff.evaluation``), on
``--score-queries`` random 3x32x32 images. Every figure comes from this one run; the repeats are
interleaved and the best is kept.

    python benchmarks/scale.py                                  # tiny and cifar10 presets
    python benchmarks/scale.py --presets cifar10 --batch 4 --threads 2 --repeats 3
    python benchmarks/scale.py --presets tiny --score-queries 0   # sampling only

docs/scale.md quotes its output. Timings on a shared machine are noisy: compare the ratios of
one run, not numbers across runs.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
from refdiff.export import export_onnx
from torch.utils.flop_counter import FlopCounterMode

from refdiff import DEFAULT_SAMPLER, Diffusion
from refdiff.evaluation import nearest_neighbour_distances
from refdiff.nn import preset, randomized_unet
from refdiff.runtime import OnnxDenoiser, sample_images

BATCH = {"tiny": 64, "cifar10": 4}
CALLS = (10, 20)


def flops_per_call(model: torch.nn.Module, shape: tuple[int, int, int]) -> float:
    """Floating-point operations of one forward pass on one image."""
    x = torch.zeros(1, *shape)
    t = torch.zeros(1, dtype=torch.int64)
    with torch.no_grad(), FlopCounterMode(display=False) as fc:
        model(x, t)
    return float(fc.get_total_flops())


def bench(name: str, args: argparse.Namespace, folder: Path) -> list[dict]:
    model = randomized_unet(preset(name, dropout=0.0), 0).eval()
    cfg = model.config
    shape = (cfg.in_channels, cfg.image_size, cfg.image_size)
    gflop = flops_per_call(model, shape) / 1e9
    params = sum(p.numel() for p in model.parameters()) / 1e6
    path = folder / f"{name}.onnx"
    export_onnx(model, Diffusion(image_shape=shape), path)
    options = ort.SessionOptions()
    options.intra_op_num_threads = args.threads
    options.inter_op_num_threads = 1
    den = OnnxDenoiser(path, session_options=options)
    batch = args.batch or BATCH[name]
    cases = [(calls, n) for calls in CALLS for n in (batch, 2 * batch)]

    def run(calls: int, n: int) -> None:
        sample_images(den, n, steps=calls, batch_size=batch, progress=False)

    run(CALLS[0], batch)  # warm-up: onnxruntime's first run
    best = {case: float("inf") for case in cases}
    for _ in range(args.repeats):
        for case in cases:  # interleaved: a slow moment hits every case alike
            t0 = time.perf_counter()
            run(*case)
            best[case] = min(best[case], time.perf_counter() - t0)
    rows = []
    for calls, n in cases:
        per_image = best[(calls, n)] / n
        rows.append(
            {
                "preset": name,
                "params_M": params,
                "gflop_per_call": gflop,
                "batch": batch,
                "images": n,
                "calls": calls,
                "s_per_image": per_image,
                "s_per_call": per_image / calls,
                "steps_ratio": best[(calls, n)] / best[(CALLS[0], n)],
                "images_ratio": best[(calls, n)] / best[(calls, batch)],
                "h_50k": per_image * 50_000 / 3600,
            }
        )
    return rows


def score_seconds(queries: int, train: int = 50_000) -> float:
    """Seconds of the nearest-training-image distances of ``queries`` CIFAR-sized images."""
    rng = np.random.default_rng(0)
    ref = rng.integers(0, 256, (train, 3, 32, 32), dtype=np.uint8)
    q = rng.integers(0, 256, (queries, 3, 32, 32), dtype=np.uint8)
    t0 = time.perf_counter()
    nearest_neighbour_distances(q, ref)
    return time.perf_counter() - t0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--presets", nargs="*", default=["tiny", "cifar10"], help="none: scores only")
    p.add_argument("--batch", type=int, default=None, help="images per call (default per preset)")
    p.add_argument("--threads", type=int, default=2, help="onnxruntime intra-op threads")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument(
        "--score-queries",
        type=int,
        default=1024,
        help="CIFAR-sized images whose nearest training image (of 50,000) is timed; 0 skips",
    )
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    print(
        f"sampler {DEFAULT_SAMPLER} (one network call per step), onnxruntime "
        f"{ort.__version__} on the CPU, {args.threads} thread(s), best of {args.repeats}\n"
    )
    head = (
        f"{'preset':<8} {'params':>7} {'GFLOP/call':>10} {'batch':>5} {'images':>6} {'calls':>5} "
        f"{'s/image':>9} {'s/call/image':>12} {'x steps':>8} {'x images':>8} {'50k images':>10}"
    )
    print(head)
    print("-" * len(head))
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.presets:
            for r in bench(name, args, Path(tmp)):  # printed as each preset finishes
                print(
                    f"{r['preset']:<8} {r['params_M']:>6.2f}M {r['gflop_per_call']:>10.4g} "
                    f"{r['batch']:>5} {r['images']:>6} {r['calls']:>5} {r['s_per_image']:>9.4g} "
                    f"{r['s_per_call']:>12.4g} {r['steps_ratio']:>8.2f} {r['images_ratio']:>8.2f} "
                    f"{r['h_50k']:>9.3g}h",
                    flush=True,
                )
    print(
        "\nx steps: time over the time of 10 calls on as many images; x images: time over the "
        "time of one batch at as many calls; 50k images: 50,000 x s/image, one process",
        flush=True,
    )
    if args.score_queries:
        sec = score_seconds(args.score_queries)
        per = sec / args.score_queries
        print(
            f"\nmemorisation check, CIFAR-sized: {args.score_queries} images against 50,000 "
            f"training images in {sec:.1f} s ({per * 1e3:.1f} ms per image); 50,000 samples and "
            f"10,000 held-out images: {per * 60_000 / 60:.1f} min"
        )


if __name__ == "__main__":
    main()
