"""``refdiff demo``: the main job end to end on scikit-learn's digits.

1. plot the schedule;
2. train the ``tiny`` U-Net on the digits with the core's losses (PyTorch, CPU);
3. export the EMA weights to ONNX (fp32 and fp16) and check parity against PyTorch;
4. in a separate process where ``import torch`` fails: sample from the ONNX model (the reverse loop
   in NumPy around onnxruntime), draw one sample's trajectory, evaluate held-out bits/dim through
   the core's bound, the per-pixel baseline, and the sample quality (Fréchet distance with its floor
   and ceiling, confidence, class coverage, memorisation);
5. plot the training loss and the bound's per-timestep terms;
6. write report.md and report.json with every figure and the time of each stage.

Nothing heavy is imported at module level: ``refdiff --help`` stays fast and the torch-free stage
can import this module with torch blocked.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from .._deps import require
from .._io import check_output_folder, created_folder, write_text
from ._argtypes import non_negative_int, positive_int

__all__ = ["add_parser", "run", "run_demo", "torch_free_stage"]

MARKER = ".refdiff-demo"
#: The demo's wall time on a 2-core CPU after the install, as README.md measures it (two fresh-clone
#: runs of `make demo`: 6 min 31 s idle, 6 min 13 s beside a busy process).
MEASURED_MINUTES = 6.5
#: The budgets of network calls of the demo's quality-vs-calls sweep, over every registered sampler
#: on its own spacing (200 = T: the reference, DDPM over every step). benchmarks/quality_vs_steps.py
#: runs a larger one.
SWEEP_CALLS = (5, 10, 20, 50, 200)
_BLOCK_TORCH = (
    "import sys\n"
    "class _NoTorch:\n"
    "    def find_spec(self, name, path=None, target=None):\n"
    "        if name == 'torch' or name.startswith('torch.'):\n"
    "            raise ImportError('torch is blocked in the torch-free stage of refdiff demo')\n"
    "        return None\n"
    "sys.meta_path.insert(0, _NoTorch())\n"
)


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "demo",
        help="train, export, sample without PyTorch and evaluate on the digits (about "
        f"{MEASURED_MINUTES} min on 2 CPU cores)",
        description=(
            "The whole pipeline on scikit-learn's 8x8 digits (shipped with scikit-learn, nothing\n"
            "is downloaded): train the tiny U-Net, export it to ONNX, sample from the ONNX model in\n"
            "a process without PyTorch, evaluate, and write a run folder with PNGs, plots and a\n"
            f"report. It takes about {MEASURED_MINUTES} minutes on a 2-core CPU (measured after "
            "`make install`;\nREADME.md has the runs), and says what each of its six stages does "
            "as it starts it."
        ),
        epilog="example:\n  refdiff demo --out runs/demo\n  refdiff demo --out runs/quick --steps 200 --eval-images 64",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--out", default="runs/demo", help="run folder to write (default: runs/demo)")
    p.add_argument(
        "--steps",
        type=positive_int,
        default=None,
        help="training steps (default: the digits recipe's)",
    )
    p.add_argument(
        "--n-samples",
        type=positive_int,
        default=256,
        help="samples to draw and evaluate, at least 2 (default: 256)",
    )
    p.add_argument(
        "--eval-images",
        type=positive_int,
        default=256,
        help="held-out images for the full bound (default: 256)",
    )
    p.add_argument(
        "--seed",
        type=non_negative_int,
        default=0,
        help="seed of training and sampling (default: 0)",
    )
    p.add_argument(
        "--threads",
        type=positive_int,
        default=1,
        help="CPU threads of PyTorch and onnxruntime (default: 1: for this small model one "
        "thread is as fast as two on an idle machine, and it does not collapse when another "
        "process competes for the cores; the figures depend on it, so keep it to compare runs)",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    if args.n_samples < 2:
        raise ValueError(f"--n-samples must be >= 2 (for a Fréchet distance), got {args.n_samples}")
    run_demo(
        Path(args.out),
        steps=args.steps,
        n_samples=args.n_samples,
        eval_images=args.eval_images,
        seed=args.seed,
        threads=args.threads,
        progress=not args.no_progress,
    )
    return 0


def _prepare_out(out: Path) -> None:
    check_output_folder(out, what="--out folder")
    if out.exists() and any(out.iterdir()):
        if not (out / MARKER).exists():
            raise FileExistsError(
                f"{out} exists and is not a refdiff demo folder; choose another --out or remove it"
            )
        shutil.rmtree(out)  # a previous demo: start afresh
    with created_folder(out):  # a failed first write leaves no empty folder
        write_text(
            out / MARKER, "written by `refdiff demo`; the folder is replaced when it reruns\n"
        )


class _Stages:
    def __init__(self, total: int):
        self.total, self.i = total, 0
        self.times: dict[str, float] = {}

    def __call__(self, name: str) -> _Timer:
        self.i += 1
        print(f"\n[{self.i}/{self.total}] {name}", flush=True)
        return _Timer(self, name)


class _Timer:
    def __init__(self, stages: _Stages, name: str):
        self.stages, self.name = stages, name

    def __enter__(self) -> None:
        self.t0 = time.perf_counter()

    def __exit__(self, *exc: object) -> None:
        dt = time.perf_counter() - self.t0
        self.stages.times[self.name] = round(dt, 2)
        if exc[0] is None:
            print(f"    done in {dt:.1f} s", flush=True)


def run_demo(
    out: Path,
    *,
    steps: int | None = None,
    n_samples: int = 256,
    eval_images: int = 256,
    seed: int = 0,
    threads: int = 1,
    progress: bool = True,
) -> dict[str, Any]:
    """Run the demo into ``out`` and return the report (also written as report.json/.md)."""
    import torch

    from refdiff.export import export_onnx, verify_onnx
    from refdiff.plots import plot_loss, plot_schedule
    from refdiff.runs.train_config import resolve_config
    from refdiff.training.checkpoint import load_model
    from refdiff.training.trainer import Trainer

    torch.set_num_threads(threads)
    out = Path(out)
    _prepare_out(out)
    stages = _Stages(6)
    report: dict[str, Any] = {"out": str(out)}
    overrides: dict[str, Any] = {"data": "digits", "seed": seed}
    if steps is not None:
        overrides["steps"] = steps
    config = resolve_config(None, overrides)
    diffusion = config.diffusion
    report["config"] = config.to_dict()

    with stages("schedule"):
        plot_schedule(diffusion.schedule, out / "schedule.png")

    with stages(f"train the tiny U-Net on the digits ({config.steps} steps, PyTorch CPU)"):
        trainer = Trainer(config, out / "train", progress=progress)
        try:
            summary = trainer.train()
        finally:
            trainer.close()
        report["train"] = {
            k: summary[k]
            for k in (
                "step",
                "train_time_s",
                "images_per_s",
                "eval_bpd",
                "baseline_bpd",
                "eval_examples",
            )
            if k in summary
        }

    with stages("export to ONNX (fp32 and fp16) and check parity against PyTorch"):
        model, diff = load_model(out / "train")
        parity = {}
        for name, fp16 in (("model.onnx", False), ("model-fp16.onnx", True)):
            print(f"    {name}: torch.export to ONNX, onnx.checker, parity", flush=True)
            path = export_onnx(model, diff, out / name, fp16=fp16, progress=progress)
            rep = verify_onnx(model, path, progress=progress)
            parity[name] = {"max_abs": rep.max_abs, "max_rel": rep.max_rel, "ok": rep.ok}
            print(f"    {name}: max abs error {rep.max_abs:.2e}, max rel error {rep.max_rel:.2e}")
        report["export"] = parity

    with stages("sample and evaluate with the ONNX model, in a process without PyTorch"):
        args = json.dumps(
            {
                "out": str(out),
                "n_samples": n_samples,
                "threads": threads,
                "eval_images": eval_images,
                "seed": seed,
                "progress": progress,
            }
        )
        code = (
            _BLOCK_TORCH
            + f"from refdiff.commands.demo import torch_free_stage\ntorch_free_stage({args!r})\n"
        )
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        subprocess.run([sys.executable, "-c", code], check=True, env=env)
        report["torch_free"] = json.loads((out / "eval.json").read_text())

    with stages("plots"):
        metrics = [
            json.loads(line)
            for line in (out / "train" / "metrics.jsonl").read_text().splitlines()
            if line
        ]
        losses = [(m["step"], m["loss"]) for m in metrics if "loss" in m]
        if losses:
            s_, l_ = zip(*losses, strict=True)
            loss_name = {
                "simple": "MSE of the prediction",
                "vlb": "T · L_t, bits/dim",
                "hybrid": "MSE + λ T · L_t",
            }[config.loss.value]
            plot_loss(list(s_), list(l_), out / "loss.png", ylabel=f"training loss ({loss_name})")
        _plot_terms(out)

    with stages("report"):
        report["stage_seconds"] = stages.times
        _write_report(out, report)

    print("\nfiles:")
    for name, what in (
        ("samples.png", "64 samples from the ONNX model, drawn without PyTorch (all: .npz)"),
        ("trajectory.png", "one sample's reverse trajectory, noise to digit"),
        ("schedule.png", "the noise schedule: ᾱ and log-SNR"),
        ("loss.png", "the training loss"),
        ("bound_terms.png", "where in t the bits are spent"),
        ("quality_vs_calls.png", "sample quality against network calls, per sampler"),
        ("model.onnx", "the exported model (model-fp16.onnx: float16 weights)"),
        ("generator.onnx", "the model and the whole default sampler: seed in, images out"),
        ("report.md", "every figure and the time of each stage (report.json: the same as JSON)"),
    ):
        print(f"  {out / name!s:<40} {what}")
    return report


def _plot_terms(out: Path) -> None:
    import numpy as np

    from refdiff.plots import plot_bound_terms

    terms = np.load(out / "bound_terms.npy")
    plot_bound_terms(terms, out / "bound_terms.png")


def torch_free_stage(args_json: str) -> None:
    """Sample and evaluate with the ONNX model; runs in a process where torch cannot be imported."""
    import numpy as np

    from refdiff._io import atomic_path, write_json
    from refdiff.data import load_digits
    from refdiff.evaluation import evaluate
    from refdiff.evaluation.steps import calls_to_match, quality_table, quality_vs_steps
    from refdiff.images import save_strip
    from refdiff.plots import plot_quality_vs_calls
    from refdiff.runtime import OnnxDenoiser
    from refdiff.runtime.sampling import sample_images, save_samples

    a = json.loads(args_json)
    out = Path(a["out"])
    t0 = time.perf_counter()
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = a["threads"]  # fixed: the same figures, loaded or not
    options.inter_op_num_threads = 1
    options.log_severity_level = 3  # no warnings at load (the generator's optional inputs)
    den = OnnxDenoiser(out / "model.onnx", device="cpu", session_options=options)
    diffusion = den.diffusion
    res: dict[str, Any] = {}

    def say(line: str) -> None:
        print(f"    {line}", flush=True)

    # samples: ancestral DDPM over all T steps
    say(f"{a['n_samples']} samples, DDPM over all {diffusion.num_timesteps} steps")
    ts = time.perf_counter()
    images = sample_images(
        den, a["n_samples"], sampler="ddpm", seed=a["seed"], progress=a["progress"]
    )
    res["sampling"] = {
        "sampler": "ddpm",
        "steps": diffusion.num_timesteps,
        "n": int(images.shape[0]),
        "seconds": round(time.perf_counter() - ts, 2),
    }
    save_samples(
        images,
        out / "samples.png",
        indices=np.arange(images.shape[0]),
        seed=a["seed"],
        info={"sampler": "ddpm", "steps": diffusion.num_timesteps, "n": int(images.shape[0])},
        grid_limit=64,  # a readable grid; samples.npz holds every sample
    )

    # one sample's trajectory: x_t at 10 evenly spaced steps, then the final image
    T = diffusion.num_timesteps
    keep = set(np.linspace(0, T - 1, 10).round().astype(int).tolist())
    frames: list[np.ndarray] = []

    def grab(i: int, t: int, x: Any, pred_x0: Any) -> None:
        if i in keep:
            frames.append(np.clip(x[0], -1, 1))

    diffusion.sample(den, 1, sampler="ddpm", seed=a["seed"], callback=grab, dtype=np.float32)
    strip = np.stack(frames)
    save_strip(np.round((strip + 1) * 127.5).astype(np.uint8), out / "trajectory.png", scale=8)

    # held-out bits/dim through the core's bound, the per-pixel baseline on the same images, and
    # the sample quality in a digits classifier's feature space, with its floor and ceiling
    train, test = load_digits("train").images, load_digits("test").images
    say(f"held-out bits/dim of {min(a['eval_images'], len(test))} digits, baseline, sample quality")
    report = evaluate(
        den,
        diffusion,
        test[: a["eval_images"]],
        train_uint8=train,
        samples_uint8=images,
        reference_uint8=test,
        digits=True,
        full=True,
        num_draws=16,
        mc_timesteps="schedule",
        seed=a["seed"],
        progress=a["progress"],
        announce=lambda line: say(f"  {line}"),
    )
    bpd = report["bits_per_dim"]
    with atomic_path(out / "bound_terms.npy", suffix=".npy") as tmp:
        np.save(tmp, np.asarray(bpd["terms_bpd"]))
    res["bits_per_dim"] = {k: v for k, v in bpd.items() if k != "terms_bpd"}
    res["baseline_bits_per_dim"] = report["baseline"]["bpd"]
    res["sample_quality"] = report["sample_quality"]

    # the same model with fewer network calls: each sampler at each budget, scored the same way
    from refdiff import SAMPLERS

    say(
        f"sample quality against network calls: {len(SAMPLERS)} samplers x budgets "
        f"{', '.join(map(str, SWEEP_CALLS))}, {a['n_samples']} samples each"
    )
    ts = time.perf_counter()
    sweep = require("tqdm", "eval", "progress bars").tqdm(
        total=len(SAMPLERS) * sum(SWEEP_CALLS) * a["n_samples"],
        desc="sweep",
        unit="sample-call",
        unit_scale=True,
        disable=not a["progress"],
        leave=False,
    )
    rows = quality_vs_steps(
        den,
        diffusion,
        None,  # every sampler of the registry
        SWEEP_CALLS,
        n=a["n_samples"],
        seed=a["seed"],
        train=train,
        test=test,
        batch_size=a["n_samples"],
        progress=lambda row: sweep.update(row["budget"] * a["n_samples"]),
    )
    sweep.close()
    plot_quality_vs_calls(rows, out / "quality_vs_calls.png")
    res["quality_vs_calls"] = {
        "rows": rows,
        "calls_to_match_ddpm": calls_to_match(rows),
        "table": quality_table(rows),
        "seconds": round(time.perf_counter() - ts, 2),
    }
    res["generator"] = _generator(out, den, options, a["seed"])
    res["torch_imported"] = "torch" in sys.modules
    res["seconds"] = round(time.perf_counter() - t0, 2)
    write_json(out / "eval.json", res)


def _generator(out: Path, den: Any, options: Any, seed: int) -> dict[str, Any]:
    """The whole default sampler and the model in one ONNX file (seed in, images out), and its
    step file, built from model.onnx without PyTorch and checked against the Python sampler."""
    import onnx

    from refdiff.graph.generator import build_generator, build_step, save_model
    from refdiff.runtime.generator import OnnxGenerator, compare_with_python

    ts = time.perf_counter()
    choice = den.diffusion.choose_sampler()  # the default sampler and its steps
    proto = onnx.load(str(out / "model.onnx"))
    path = save_model(build_generator(proto, choice), out / "generator.onnx")
    save_model(build_step(proto, choice), out / "generator-step.onnx")
    report = compare_with_python(
        OnnxGenerator(path, session_options=options), den, seeds=(seed,), indices=range(16)
    )
    print(f"    generator.onnx ({choice.describe()}): {report.report()}", flush=True)
    return {
        "sampler": choice.to_dict(),
        "bytes": path.stat().st_size,
        "max_abs": report.max_abs,
        "pixels_differing": report.pixels_differing,
        "pixels": report.pixels,
        "ok": report.ok,
        "seconds": round(time.perf_counter() - ts, 2),
    }


def _generator_line(g: dict[str, Any] | None) -> str:
    if not g:
        return "(not built)"
    s = g["sampler"]
    return (
        f"generator.onnx holds the model and {s['sampler']} with {s['steps']} steps "
        f"({g['bytes'] / 2**20:.1f} MiB): seed and sample indices in, images out. Against the "
        f"Python sampler on the same seed: max abs difference {g['max_abs']:.1e}, "
        f"{g['pixels_differing']} of {g['pixels']} 8-bit pixels differ."
    )


def _fmt(v: Any, nd: int = 3) -> str:
    return f"{v:.{nd}f}" if isinstance(v, float) else str(v)


def _interval(iv: Any) -> str:
    return "-" if not iv else f"{iv[0]:.3f} .. {iv[1]:.3f}"


def _write_report(out: Path, report: dict[str, Any]) -> None:
    from refdiff._io import write_json, write_text

    write_json(out / "report.json", report)
    tf = report["torch_free"]
    b = tf["bits_per_dim"]
    q = tf["sample_quality"]
    tr = report["train"]
    lines = [
        "# refdiff demo report",
        "",
        "The tiny U-Net trained on scikit-learn's 8x8 digits (1,438 training and 359 held-out images),",
        "exported to ONNX and sampled in a process without PyTorch.",
        "",
        "## Likelihood (held-out, bits/dim; lower is better)",
        "",
        "| model | bits/dim |",
        "|---|---|",
        f"| diffusion model, full bound over all T | {_fmt(b.get('bpd_full'))} ± {_fmt(b.get('bpd_full_stderr'))} |",
        f"| diffusion model, Monte-Carlo estimate ({b.get('mc_calls_per_image')} calls per image) | {_fmt(b.get('bpd_mc'))} ± {_fmt(b.get('bpd_mc_stderr'))} |",
        f"| per-pixel independent baseline (same code) | {_fmt(tf['baseline_bits_per_dim'])} |",
        "",
        f"({b.get('num_images')} held-out images. The full bound's ± is the standard error over "
        "images; the estimate's is its Monte-Carlo error, how far it may lie from the full bound "
        f"on these images: 95 % interval {_interval(b.get('bpd_mc_interval'))}.)",
        "",
        "## Samples (Fréchet distance in a digits classifier's feature space; lower is better)",
        "",
        "| | Fréchet distance |",
        "|---|---|",
        f"| samples vs held-out | {_fmt(q.get('fd'))} |",
        f"| floor: real training images vs held-out | {_fmt(q.get('fd_floor'))} |",
        f"| ceiling: per-pixel baseline samples vs held-out | {_fmt(q.get('fd_ceiling'))} |",
        "",
        f"{q['num_samples']} samples. The classifier ({100 * q['classifier_test_accuracy']:.1f} % held-out accuracy) "
        f"is {_fmt(q['confidence'])} confident on average on the samples ({_fmt(q['heldout_confidence'])} on "
        f"real held-out digits) and finds {q['class_coverage'] * 100:.0f} % of the 10 classes; class "
        f"histogram {q['class_histogram']}.",
        "",
        "Memorisation check (L2 distance to the nearest training image, pixels in [0, 1]): samples "
        f"{_fmt(q['nn_train_dist_mean'])} on average (min {_fmt(q['nn_train_dist_min'])}), real held-out "
        f"digits {_fmt(q['heldout_nn_train_dist_mean'])} (min {_fmt(q['heldout_nn_train_dist_min'])}); "
        f"{q['nn_exact_copies']} exact copies of training images.",
        "",
        "## Fewer network calls (the same model, other samplers)",
        "",
        f"Fréchet distance (and classifier confidence) of {tf['sampling']['n']} samples per run, "
        "against the network calls one sample costs:",
        "",
        tf["quality_vs_calls"]["table"],
        "",
        "Fewest calls within 10 % of DDPM-200's Fréchet distance: "
        + ", ".join(
            f"{k} {'not within the sweep' if v is None else v}"
            for k, v in tf["quality_vs_calls"]["calls_to_match_ddpm"].items()
        )
        + " (one run each: a run of this size varies by about ±25 %; "
        "benchmarks/quality_vs_steps.py averages several, see docs/samplers.md).",
        "",
        "![quality vs network calls](quality_vs_calls.png)",
        "",
        "## The sampler in the file",
        "",
        _generator_line(tf.get("generator")),
        "",
        "## Export parity (onnxruntime vs PyTorch, fresh random inputs)",
        "",
        "| file | max abs error | max rel error |",
        "|---|---|---|",
        *(
            f"| {k} | {v['max_abs']:.2e} | {v['max_rel']:.2e} |"
            for k, v in report["export"].items()
        ),
        "",
        "## Time of each stage (s)",
        "",
        "| stage | seconds |",
        "|---|---|",
        *(f"| {k} | {v:.1f} |" for k, v in report["stage_seconds"].items()),
        "",
        f"Training: {tr.get('step')} steps at {_fmt(tr.get('images_per_s'), 0)} images/s. "
        f"Sampling: {tf['sampling']['n']} samples, DDPM over {tf['sampling']['steps']} steps, "
        f"{tf['sampling']['seconds']} s. torch imported in the sampling process: {tf['torch_imported']}.",
        "",
        "![samples](samples.png) ![trajectory](trajectory.png)",
        "",
        "![schedule](schedule.png) ![loss](loss.png) ![bound terms](bound_terms.png)",
        "",
    ]
    write_text(out / "report.md", "\n".join(lines))
