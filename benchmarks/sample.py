"""CPU sampling time per step: the runtime (onnxruntime + NumPy) against PyTorch eager, and the
parity errors of the float32 and float16 exports.

For each U-Net preset, a model with random weights (a fresh U-Net outputs exactly zero) is
exported to ONNX twice (float32, float16) and checked with ``verify_onnx``; then DDIM sampling
runs with the core's sampler on the PyTorch model (torch backend) and with
``refdiff.runtime.sample_array`` on the exported models (NumPy backend), both on the same number
of threads, and the table gives milliseconds per sampling step (denoiser call + sampler update)
and their ratios, all measured in this one run.

    python benchmarks/sample.py                       # tiny and cifar10 presets
    python benchmarks/sample.py --presets tiny --threads 1 --repeats 5

Timings on a shared machine are noisy: compare the ratios of one run, not numbers across runs.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import array_api_compat.torch as torch_xp
import onnxruntime as ort
import torch
from refdiff.export import export_onnx, verify_onnx

from refdiff import Diffusion, ddim_sample
from refdiff.nn import UNet, preset, randomized_unet
from refdiff.runtime import OnnxDenoiser, sample_array

BATCH = {"tiny": 16, "cifar10": 2}


def random_model(name: str, seed: int = 0) -> UNet:
    return randomized_unet(preset(name, dropout=0.0), seed)


def best_of(fn, repeats: int) -> float:
    fn()  # warm-up (allocations, onnxruntime's first run)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def bench(name: str, args: argparse.Namespace, folder: Path) -> dict:
    model = random_model(name)
    cfg = model.config
    diffusion = Diffusion(image_shape=(cfg.in_channels, cfg.image_size, cfg.image_size))
    row: dict = {"preset": name, "batch": args.batch or BATCH[name], "steps": args.steps}
    for fp16 in (False, True):
        tag = "fp16" if fp16 else "fp32"
        path = folder / f"{name}-{tag}.onnx"
        t0 = time.perf_counter()
        export_onnx(model, diffusion, path, fp16=fp16)
        row[f"export_{tag}_s"] = time.perf_counter() - t0
        row[f"size_{tag}_mb"] = path.stat().st_size / 2**20
        report = verify_onnx(model, path, raise_on_failure=False)
        row[f"parity_{tag}"] = (report.max_abs, report.max_rel, report.ok)
        print(report.table(), flush=True)

    n, steps = row["batch"], args.steps
    schedule = diffusion.sampling_schedule(steps)
    shape = (n, *diffusion.image_shape)

    def run_torch() -> None:
        with torch.no_grad():
            ddim_sample(
                schedule,
                lambda x, t: model(x, t),
                shape,
                seed=0,
                xp=torch_xp,
                dtype=torch.float32,
                sample_indices=torch.arange(n),
            )

    options = ort.SessionOptions()
    options.intra_op_num_threads = args.threads
    options.inter_op_num_threads = 1
    runs = {"torch": run_torch}
    for tag in ("fp32", "fp16"):
        den = OnnxDenoiser(folder / f"{name}-{tag}.onnx", session_options=options)
        runs[f"ort_{tag}"] = lambda den=den: sample_array(
            den, n, sampler="ddim", steps=steps, batch_size=n, progress=False
        )
    for key, fn in runs.items():
        row[f"{key}_ms"] = 1000 * best_of(fn, args.repeats) / steps
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--presets", nargs="+", default=["tiny", "cifar10"])
    parser.add_argument("--batch", type=int, default=None, help="default: 16 tiny, 2 cifar10")
    parser.add_argument("--steps", type=int, default=10, help="DDIM steps per timed run")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs (best is kept)")
    parser.add_argument(
        "--threads", type=int, default=torch.get_num_threads(), help="for both runtimes"
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(
        f"torch {torch.__version__}, onnxruntime {ort.__version__}, {args.threads} thread(s), "
        f"DDIM {args.steps} steps, best of {args.repeats}"
    )
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.presets:
            rows.append(bench(name, args, Path(tmp)))

    print()
    print("CPU time per sampling step (denoiser + sampler update), ms; ratio = torch / onnxruntime")
    head = (
        f"{'preset':<8} {'batch':>5} {'torch':>9} {'ort fp32':>9} {'ratio':>6} "
        f"{'ort fp16':>9} {'ratio':>6}"
    )
    print(head)
    for r in rows:
        print(
            f"{r['preset']:<8} {r['batch']:>5} {r['torch_ms']:>9.2f} {r['ort_fp32_ms']:>9.2f} "
            f"{r['torch_ms'] / r['ort_fp32_ms']:>6.2f} {r['ort_fp16_ms']:>9.2f} "
            f"{r['torch_ms'] / r['ort_fp16_ms']:>6.2f}"
        )
    print()
    print("parity against PyTorch float32 (verify_onnx: batch 1 and 3, t = 0, T/2, T-1)")
    print(
        f"{'preset':<8} {'fp32 max abs':>12} {'max rel':>9} {'fp16 max abs':>12} {'max rel':>9} "
        f"{'MiB fp32':>8} {'fp16':>6} {'export s':>8}"
    )
    for r in rows:
        a32, r32, _ = r["parity_fp32"]
        a16, r16, _ = r["parity_fp16"]
        print(
            f"{r['preset']:<8} {a32:>12.3g} {r32:>9.3g} {a16:>12.3g} {r16:>9.3g} "
            f"{r['size_fp32_mb']:>8.1f} {r['size_fp16_mb']:>6.1f} {r['export_fp32_s']:>8.1f}"
        )
    not_ok = [
        f"{r['preset']} {t}" for r in rows for t in ("fp32", "fp16") if not r[f"parity_{t}"][2]
    ]
    if not_ok:
        print(f"PARITY FAILED: {', '.join(not_ok)}")


if __name__ == "__main__":
    main()
