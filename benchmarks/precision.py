"""Reduced precision on the CPU: the speed of each variant and what it costs, in one run.

Table 1, speed: one forward of the cifar10-preset U-Net (Ho et al.'s 35.7 M parameters, random
weights: a fresh U-Net outputs zero), batch 8, on ``--threads`` threads: PyTorch eager float32,
PyTorch eager under ``torch.autocast("cpu", torch.bfloat16)``, and refdiff's files (float32 and
int8 under onnxruntime, the bfloat16 file under OpenVINO; OpenVINO running the float32 file in
float32 separates the engine from the precision). The runs are interleaved (each repeat runs
every engine once) and each row keeps its minimum over the repeats; ``spread`` is its median over
its minimum, how noisy the machine was. The last column is each output's relative RMS error
against the float32 file along sampling trajectories (denoiser error only: random weights).

Table 2, quality: the demo's digits model (``make demo`` writes runs/demo/model.onnx), sampled
with DPM-Solver++ 2M at 10 steps from the same seed by the float32 file and by each variant
(:func:`refdiff.evaluation.measure_drift`): each one's Fréchet distance to the held-out digits
in the digits classifier's features and its held-out bits/dim (full bound, paired noise).

    python benchmarks/precision.py                          # both tables (about 20 minutes)
    python benchmarks/precision.py --skip-quality --repeats 5
    python benchmarks/precision.py --plot docs/images/precision-drift.png

Needs the torch extra and OpenVINO (``pip install "refdiff[all]"``).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import torch
from refdiff.export import export_onnx
from refdiff.export.quantize import variant_error, write_variant

from refdiff import Diffusion
from refdiff.nn import preset, randomized_unet
from refdiff.runtime import OnnxDenoiser


class Autocast:
    """The PyTorch model under bf16 autocast as a NumPy denoiser, for its error on the same
    inputs as the files'."""

    def __init__(self, model: torch.nn.Module, diffusion: Diffusion):
        self.model, self.diffusion = model, diffusion

    def __call__(self, x: np.ndarray, t: np.ndarray) -> np.ndarray:
        with torch.no_grad(), torch.autocast("cpu", torch.bfloat16):
            out = self.model(torch.from_numpy(np.asarray(x, np.float32)), torch.from_numpy(t))
        return out.float().numpy()


def speed_table(args: argparse.Namespace, folder: Path) -> None:
    model = randomized_unet(preset("cifar10", dropout=0.0), 0)
    diffusion = Diffusion(image_shape=(3, 32, 32))
    fp32 = export_onnx(model, diffusion, folder / "cifar10.onnx")
    t0 = time.perf_counter()
    write_variant(
        fp32,
        folder / "cifar10-int8.onnx",
        "int8",
        calibration_images=args.calibration_images,
        calibration_steps=args.calibration_steps,
    )
    print(f"int8 variant written in {time.perf_counter() - t0:.0f} s", flush=True)
    write_variant(fp32, folder / "cifar10-bf16.onnx", "bfloat16")

    options = ort.SessionOptions()
    options.intra_op_num_threads = args.threads
    options.inter_op_num_threads = 1
    files = {
        "onnxruntime float32": fp32,
        "onnxruntime int8": folder / "cifar10-int8.onnx",
        "OpenVINO bfloat16": folder / "cifar10-bf16.onnx",
    }
    denoisers = {k: OnnxDenoiser(p, session_options=options) for k, p in files.items()}
    import openvino as ov

    core = ov.Core()
    ov_f32 = core.compile_model(
        str(fp32),
        "CPU",
        {
            "INFERENCE_PRECISION_HINT": "f32",
            "INFERENCE_NUM_THREADS": args.threads,
            "PERFORMANCE_HINT": "LATENCY",
        },
    ).create_infer_request()

    rng = np.random.default_rng(0)
    x = rng.standard_normal((args.batch, 3, 32, 32)).astype(np.float32)
    t = rng.integers(0, diffusion.num_timesteps, args.batch).astype(np.int64)
    xt, tt = torch.from_numpy(x), torch.from_numpy(t)

    def torch_fp32() -> None:
        with torch.no_grad():
            model(xt, tt)

    def torch_bf16() -> None:
        with torch.no_grad(), torch.autocast("cpu", torch.bfloat16):
            model(xt, tt)

    runs = {"PyTorch eager float32": torch_fp32, "PyTorch eager bf16 autocast": torch_bf16}
    for k, d in denoisers.items():
        runs[k] = lambda d=d: d(x, t)
    runs["OpenVINO float32 (same file)"] = lambda: ov_f32.infer({"x": x, "t": t})
    times: dict[str, list[float]] = {k: [] for k in runs}
    for fn in runs.values():
        fn()  # warm-up
    for _ in range(args.repeats):
        for k, fn in runs.items():
            t0 = time.perf_counter()
            fn()
            times[k].append(time.perf_counter() - t0)
    ref = denoisers["onnxruntime float32"]
    errors = {k: variant_error(ref, d) for k, d in denoisers.items() if d is not ref}
    errors["PyTorch eager bf16 autocast"] = variant_error(ref, Autocast(model, diffusion))

    best = {k: min(v) for k, v in times.items()}
    base, auto_ms = best["PyTorch eager float32"], best["PyTorch eager bf16 autocast"]
    print()
    print(
        f"Table 1: cifar10 preset forward, batch {args.batch}, {args.threads} threads, min of "
        f"{args.repeats} interleaved repeats (torch {torch.__version__}, onnxruntime "
        f"{ort.__version__}, OpenVINO {ov.__version__.split('-')[0]})"
    )
    print(
        f"| {'engine and precision':<30} | {'ms':>7} | {'spread':>6} | {'vs torch fp32':>13} | "
        f"{'vs torch bf16':>13} | {'rel. error':>10} |"
    )
    print(f"|{'-' * 32}|{'-' * 9}|{'-' * 8}|{'-' * 15}|{'-' * 15}|{'-' * 12}|")
    for k, v in times.items():
        err = errors.get(k)
        err_s = "" if err is None else f"{err:.3g}"
        print(
            f"| {k:<30} | {1000 * best[k]:>7.0f} | {np.median(v) / best[k]:>6.2f} | "
            f"{base / best[k]:>12.2f}x | {auto_ms / best[k]:>12.2f}x | {err_s:>10} |"
        )
    fastest = min((k for k in files), key=lambda k: best[k])
    print(
        f"fastest refdiff file: {fastest}, {best[fastest] / base:.2f} of PyTorch eager float32's "
        f"time (target <= 0.50), {best[fastest] / auto_ms:.2f} of bf16 autocast's (target <= 1)",
        flush=True,
    )


def digits_drift(model: Path, n: int) -> Callable[[Path, str], Any]:
    """``drift(variant_path, name)``: the drift report of a variant of the digits model
    ``model`` against it, DPM-Solver++ 2M at 10 steps, ``n`` samples, bits/dim on every held-out
    digit (also used by benchmarks/float32_below.py)."""
    from refdiff.data import load_digits
    from refdiff.evaluation import measure_drift

    if not model.exists():
        raise SystemExit(f"{model} does not exist: run `make demo` first, or pass --model")
    train, heldout = load_digits("train").images, load_digits("test").images
    ref = OnnxDenoiser(model)

    def drift(path: Path, name: str) -> Any:
        t0 = time.perf_counter()
        r = measure_drift(
            ref,
            OnnxDenoiser(path),
            sampler="dpmpp_2m",
            steps=10,
            n=n,
            heldout=heldout,
            train=train,
            reference_name=str(model),
            variant_name=name,
        )
        print(f"{name}: drift measured in {time.perf_counter() - t0:.0f} s", flush=True)
        print(r.table(), flush=True)
        return r

    return drift


def quality_table(args: argparse.Namespace, folder: Path) -> None:
    model = Path(args.model)
    drift = digits_drift(model, args.n)
    reports = []
    for name in ("int8", "bfloat16"):
        path = write_variant(model, folder / f"digits-{name}.onnx", name)
        reports.append((name, drift(path, name)))
    print()
    print(
        f"Table 2: the demo's digits model ({model}), DPM-Solver++ 2M, 10 steps, {args.n} "
        f"samples, seed 0; bits/dim on the {reports[0][1].bpd['images']} held-out digits"
    )
    print(
        "| variant  | FD float32 | FD variant | FD change | bits/dim float32 | bits/dim variant "
        "| difference | within targets |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for name, r in reports:
        b, f = r.bpd, r.fd
        print(
            f"| {name:<8} | {f['reference']:.4f} | {f['variant']:.4f} | "
            f"{100 * f['relative_change']:+.1f} % | {b['reference']:.4f} | {b['variant']:.4f} | "
            f"{b['difference']:+.4f} ± {b['stderr']:.4f} | {'yes' if r.ok else 'no'} |"
        )
    if args.plot:
        from refdiff.plots import plot_drift

        plot_drift(reports, args.plot, title=f"{model}: DPM-Solver++ 2M, 10 steps")
        print(f"wrote {args.plot}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=7, help="interleaved timed repeats")
    parser.add_argument("--calibration-images", type=int, default=8)
    parser.add_argument("--calibration-steps", type=int, default=25)
    parser.add_argument("--model", default="runs/demo/model.onnx", help="the digits model")
    parser.add_argument("--n", type=int, default=1000, help="samples per model (table 2)")
    parser.add_argument("--plot", default=None, help="write the drift plot here (.png)")
    parser.add_argument("--skip-speed", action="store_true")
    parser.add_argument("--skip-quality", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        if not args.skip_speed:
            speed_table(args, Path(tmp))
        if not args.skip_quality:
            quality_table(args, Path(tmp))


if __name__ == "__main__":
    main()
