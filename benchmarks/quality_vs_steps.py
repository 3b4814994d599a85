"""Sample quality against network calls on the demo's digits model, without PyTorch.

Samples the ONNX model with each sampler at each budget of network calls (Heun: 2·steps - 1
calls), scores every run with the digits measures (the Fréchet distance in refdiff's digits
classifier's features and the classifier's mean confidence), prints a Markdown table and the fewest
calls at which each sampler reaches DDPM-200's Fréchet distance within 10 %, and draws the plot.
DDPM and DDIM also run with 200 calls: DDPM-200 is the reference, DDIM-200 the probability-flow
ODE's own quality, which every deterministic sampler approaches.

    make demo                                  # trains and exports runs/demo/model.onnx (~6.5 min)
    python benchmarks/quality_vs_steps.py      # runs/demo/model.onnx, the table, the plot
    python benchmarks/quality_vs_steps.py model.onnx --n 2000 --calls 5 10 20 --samplers ddim heun

Every sampler starts from the same prior noise (seed, sample index): the comparison is paired.
Nothing here imports torch (refdiff.runtime runs the model with onnxruntime on NumPy arrays).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import refdiff as rd
from refdiff.data.digits import load_digits
from refdiff.evaluation.steps import calls_to_match, quality_table, quality_vs_steps
from refdiff.plots import plot_quality_vs_calls
from refdiff.runtime import OnnxDenoiser

SAMPLERS = tuple(rd.SAMPLERS)  # every registered sampler
CALLS = (3, 5, 7, 10, 15, 20, 30, 50)
REFERENCE = ("ddpm", 200)  # DDPM over all of the digits model's T = 200 steps
ODE_LIMIT = ("ddim", 200)  # where every deterministic sampler converges: the probability-flow ODE


def spacing_of(tokens: list[str], samplers: list[str]) -> dict[str, str]:
    """``["even", "dpmpp_3m=logsnr"]`` -> the spacing of each sampler; a sampler no token names
    runs on its registry entry's spacing (logsnr for dpmpp_3m, whose third-order extrapolation
    breaks down on even steps: docs/samplers.md)."""
    default, per = None, {}
    for token in tokens:
        name, sep, value = token.partition("=")
        if sep:
            per[name] = value
        else:
            default = token
    return {
        name: per.get(name, default or rd.SAMPLERS[name].spacing.value) for name in samplers
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("model", nargs="?", default="runs/demo/model.onnx", help="the ONNX model")
    p.add_argument("--n", type=int, default=1000, help="samples per run (default: 1000)")
    p.add_argument(
        "--repeats", type=int, default=4, help="runs per cell, seeds seed, seed+1, … (default: 4)"
    )
    p.add_argument("--calls", type=int, nargs="+", default=list(CALLS), help="budgets of calls")
    p.add_argument("--samplers", nargs="+", default=list(SAMPLERS), help="samplers to compare")
    p.add_argument(
        "--spacing",
        nargs="+",
        default=[],
        help="even, logsnr or karras for every sampler, and/or SAMPLER=SPACING for one\n"
        "(default: each sampler's own, from the registry: logsnr for dpmpp_3m, even for the others)",
    )
    p.add_argument("--seed", type=int, default=0, help="noise seed (default: 0)")
    p.add_argument("--threads", type=int, default=1, help="onnxruntime threads (default: 1)")
    p.add_argument("--batch-size", type=int, default=500, help="samples per model call")
    p.add_argument("--plot", default="docs/images/quality-vs-calls.png", help="the plot to write")
    p.add_argument("--json", default=None, help="also write the rows as JSON here")
    args = p.parse_args()

    model = Path(args.model)
    if not model.is_file():
        raise SystemExit(f"{model} not found: `make demo` trains and exports runs/demo/model.onnx")
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = args.threads
    options.inter_op_num_threads = 1
    denoiser = OnnxDenoiser(model, session_options=options)
    train, test = load_digits("train").images, load_digits("test").images

    def show(row: dict) -> None:
        print(
            f"  {row['sampler']:>13} {row['spacing']:>6} {row['calls']:>4} calls: "
            f"FD {row['fd']:.3f} ± {row['fd_std']:.3f}, confidence {row['confidence']:.3f} "
            f"({row['seconds']:.1f} s)",
            flush=True,
        )

    t0 = time.perf_counter()
    kw = {
        "n": args.n,
        "seed": args.seed,
        "repeats": args.repeats,
        "train": train,
        "test": test,
        "batch_size": args.batch_size,
        "progress": show,
    }
    spacing = spacing_of(args.spacing, args.samplers)
    rows = quality_vs_steps(
        denoiser, denoiser.diffusion, args.samplers, args.calls, spacing=spacing, **kw
    )
    for name, calls in (REFERENCE, ODE_LIMIT):
        if calls not in args.calls and calls <= denoiser.diffusion.num_timesteps:
            rows += quality_vs_steps(denoiser, denoiser.diffusion, [name], [calls], **kw)
    print(f"\n{model}: {denoiser.diffusion}")
    seeds = f"seeds {args.seed}..{args.seed + args.repeats - 1}"
    print(f"{args.repeats} runs of {args.n} samples per cell ({seeds}), means over the runs")
    print(f"{time.perf_counter() - t0:.0f} s in all\n")
    print("Fréchet distance (classifier confidence); [k]: the run made k calls\n")
    print(quality_table(rows))
    spread = sorted(r["fd_std"] / r["fd"] for r in rows)
    print(
        f"\nspread of one run's FD around the mean: median {100 * spread[len(spread) // 2]:.0f} %"
    )
    ref = [r for r in rows if (r["sampler"], r["calls"]) == REFERENCE]
    if ref:
        print(
            f"\nfewest calls to reach DDPM-200's Fréchet distance {ref[0]['fd']:.3f} "
            f"(± {ref[0]['fd_std']:.3f}) within 10 %:"
        )
        for name, calls in calls_to_match(rows, reference=REFERENCE).items():
            print(f"  {name:>13}: {calls if calls is not None else 'not within the sweep'}")
    title = f"{model.name}: {args.repeats} × {args.n} digits per point"
    plot_quality_vs_calls(rows, args.plot, reference=REFERENCE, title=title)
    print(f"\nwrote {args.plot}")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
