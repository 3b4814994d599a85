"""int8 with the float32 network for the smallest t (``--float32-below K``): what it buys and
what it costs, in one run.

Table 1, speed: one forward of the cifar10-preset U-Net (random weights), batch ``--batch`` on
``--threads`` threads: the float32 file, the int8 file, and the joined file for a batch whose
timesteps are all >= K (the int8 branch of its ``If``) and all < K (the float32 branch), best of
``--repeats`` interleaved rounds; and the three files' sizes.

Table 2, quality: the demo's digits model (``make demo`` writes runs/demo/model.onnx) made into
int8 files for each K of ``--below`` (0: int8 alone), each sampled against the float32 file with
DPM-Solver++ 2M at 10 steps from the same seed (:func:`refdiff.evaluation.measure_drift`): the
bits/dim difference on the held-out digits (full bound, paired noise), the Fréchet distance's
change and the file size.

    python benchmarks/float32_below.py                      # both tables (about 6 minutes)
    python benchmarks/float32_below.py --skip-quality --repeats 9

Needs the torch extra (for the cifar10 export) and onnxruntime.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
from precision import digits_drift  # benchmarks/precision.py, beside this script
from refdiff.export import export_onnx
from refdiff.export.quantize import write_variant

from refdiff import Diffusion
from refdiff.nn import preset, randomized_unet
from refdiff.runtime import OnnxDenoiser


def _mib(path: Path) -> str:
    return f"{path.stat().st_size / 2**20:.1f} MiB"


def speed_table(args: argparse.Namespace, folder: Path) -> None:
    diffusion = Diffusion(image_shape=(3, 32, 32))
    T = diffusion.num_timesteps
    below = T // 20
    fp32 = export_onnx(randomized_unet(preset("cifar10", dropout=0.0), 0), diffusion,
                       folder / "cifar10.onnx")
    calibration = {"calibration_images": 2, "calibration_steps": 5}  # speed only
    int8 = write_variant(fp32, folder / "cifar10-int8.onnx", "int8", **calibration)
    joined = write_variant(
        fp32, folder / "cifar10-below.onnx", "int8", float32_below=below, **calibration
    )
    options = ort.SessionOptions()
    options.intra_op_num_threads = args.threads
    options.inter_op_num_threads = 1
    den = {p: OnnxDenoiser(p, session_options=options) for p in (fp32, int8, joined)}
    x = np.random.default_rng(0).standard_normal((args.batch, 3, 32, 32)).astype(np.float32)
    high, low = np.full(args.batch, T // 2, np.int64), np.full(args.batch, below // 2, np.int64)
    runs = {
        f"float32 file, t = {T // 2}": (fp32, high),
        f"int8 file, t = {T // 2}": (int8, high),
        f"int8, float32 below {below}: t = {T // 2} (int8 branch)": (joined, high),
        f"int8, float32 below {below}: t = {below // 2} (float32 branch)": (joined, low),
    }
    for path, t in runs.values():
        den[path](x, t)  # warm-up
    best = dict.fromkeys(runs, float("inf"))
    for _ in range(args.repeats):
        for name, (path, t) in runs.items():
            t0 = time.perf_counter()
            den[path](x, t)
            best[name] = min(best[name], time.perf_counter() - t0)
    base = best[f"float32 file, t = {T // 2}"]
    print(
        f"\nTable 1: cifar10 preset forward, batch {args.batch}, {args.threads} threads, best of "
        f"{args.repeats} interleaved rounds (onnxruntime {ort.__version__}); T = {T}"
    )
    print("| run | ms | vs float32 | file |")
    print("|---|---:|---:|---:|")
    for name, (path, _) in runs.items():
        print(f"| {name} | {1000 * best[name]:.0f} | {base / best[name]:.2f}x | {_mib(path)} |")


def quality_table(args: argparse.Namespace, folder: Path) -> None:
    model = Path(args.model)
    drift = digits_drift(model, args.n)
    rows = []
    for k in args.below:
        path = write_variant(model, folder / f"digits-int8-below{k}.onnx", "int8", float32_below=k)
        rows.append((k, drift(path, path.name), path))
    T = OnnxDenoiser(model).metadata.diffusion.num_timesteps
    print(
        f"\nTable 2: the demo's digits model ({model}, T = {T}, {_mib(model)}), DPM-Solver++ 2M, "
        f"10 steps, {args.n} samples, seed 0; bits/dim on the {rows[0][1].bpd['images']} "
        "held-out digits"
    )
    print("| K | bits/dim difference | Fréchet distance change | within targets | file |")
    print("|---:|---:|---:|---|---:|")
    for k, r, path in rows:
        b, f = r.bpd, r.fd
        print(
            f"| {k} | {b['difference']:+.4f} ± {b['stderr']:.4f} | "
            f"{100 * f['relative_change']:+.1f} % | {'yes' if r.ok else 'no'} | {_mib(path)} |"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=7, help="interleaved timed rounds")
    parser.add_argument("--model", default="runs/demo/model.onnx", help="the digits model")
    parser.add_argument("--below", type=int, nargs="+", default=[0, 5, 10, 20])
    parser.add_argument("--n", type=int, default=1000, help="samples per model (table 2)")
    parser.add_argument("--skip-speed", action="store_true")
    parser.add_argument("--skip-quality", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        if not args.skip_speed:
            speed_table(args, Path(tmp))
        if not args.skip_quality:
            quality_table(args, Path(tmp))


if __name__ == "__main__":
    main()
