"""Images per second of a generator file (the whole sampler in one ONNX graph) against refdiff's
Python loop around the denoiser's onnxruntime session, on the CPU, in one run.

For each preset (random weights; the tiny model at batch 16 and the DDPM CIFAR-10 architecture at
batch 2 by default) it exports the denoiser, builds the generator with the Loop layout and with
the steps unrolled, and times, interleaved and repeated, one call of each against
``refdiff.runtime.sample_array`` with the same sampler, steps, seed and threads. Ratios > 1 mean
the generator is faster. It also prints each file's size and checks the samples agree.

    python benchmarks/generator.py                                  # tiny @16, cifar10 @2
    python benchmarks/generator.py --presets tiny --repeats 7 --threads 1 --sampler dpmpp_2m
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from refdiff.export import export_onnx

from refdiff import Diffusion
from refdiff.graph.generator import build_generator
from refdiff.nn import UNetConfig, preset, randomized_unet
from refdiff.runtime import OnnxDenoiser, sample_array
from refdiff.runtime.generator import OnnxGenerator

BATCH = {"tiny": 16, "cifar10": 2}


def _options(threads: int) -> ort.SessionOptions:
    o = ort.SessionOptions()
    o.intra_op_num_threads = threads
    o.inter_op_num_threads = 1
    o.log_severity_level = 3
    return o


def _best(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def run_preset(name: str, args: argparse.Namespace, folder: Path) -> list[str]:
    cfg = preset(name)
    c, s = cfg.in_channels, cfg.image_size
    diffusion = Diffusion(
        {"name": "linear", "params": {}, "T": 1000},
        prediction="epsilon",
        variance="learned_range" if cfg.learn_sigma else "fixed_small",
        image_shape=(c, s, s),
    )
    den_path = export_onnx(randomized_unet(UNetConfig.from_dict(cfg.to_dict()), 0), diffusion, folder / f"{name}.onnx")
    den = OnnxDenoiser(den_path, session_options=_options(args.threads))
    choice = diffusion.choose_sampler(args.sampler, args.steps)
    model = onnx.load(str(den_path))
    gens = {}
    for layout in ("loop", "unrolled"):
        path = folder / f"{name}-{layout}.onnx"
        t0 = time.perf_counter()
        onnx.save(build_generator(model, choice, layout=layout), str(path))
        build = time.perf_counter() - t0
        gens[layout] = (OnnxGenerator(path, session_options=_options(args.threads)), path, build)
    B = BATCH[name] if args.batch is None else args.batch
    idx = np.arange(B)
    want = sample_array(den, B, sampler=choice, seed=1, batch_size=B, progress=False)
    for layout, (gen, _, _) in gens.items():
        got, _ = gen.run(1, idx)
        diff = float(np.abs(got - want).max())
        assert diff < 1e-3, (layout, diff)
    calls = {
        "python loop": lambda: sample_array(den, B, sampler=choice, seed=1, batch_size=B, progress=False),
        **{f"generator ({k})": (lambda g=g: g.run(1, idx)) for k, (g, _, _) in gens.items()},
    }
    best = {k: float("inf") for k in calls}
    for _ in range(args.repeats):  # interleaved: each round times every variant once
        for k, fn in calls.items():
            best[k] = min(best[k], _best(fn, 1))
    base = best["python loop"]
    rows = [
        f"| {name} | {B} | {k} | {1e3 * v:.1f} | {B / v:.1f} | {base / v:.2f} | "
        + (f"{gens[k[11:-1]][1].stat().st_size / 2**20:.1f} MiB, built in {gens[k[11:-1]][2]:.1f} s |" if k != "python loop" else f"{den_path.stat().st_size / 2**20:.1f} MiB (denoiser) |")
        for k, v in best.items()
    ]
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--presets", nargs="+", default=["tiny", "cifar10"], choices=sorted(BATCH))
    p.add_argument("--batch", type=int, default=None, help="batch for every preset (default: 16 tiny, 2 cifar10)")
    p.add_argument("--sampler", default="dpmpp_2m")
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=5)
    args = p.parse_args()
    print(
        f"{args.sampler}, {args.steps} steps, {args.threads} thread(s), best of {args.repeats} "
        f"interleaved rounds, onnxruntime {ort.__version__}\n"
    )
    print("| preset | batch | run | ms per batch | images/s | vs python loop | file |")
    print("|---|---:|---|---:|---:|---:|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.presets:
            for row in run_preset(name, args, Path(tmp)):
                print(row, flush=True)


if __name__ == "__main__":
    main()
