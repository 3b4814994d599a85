"""``refdiff eval``: held-out bits/dim of a model next to the independent-pixel baseline, and the
sample-quality figures of a set of samples.

The model is any format :func:`refdiff.models.open_model` reads: an exported ``.onnx`` file
(evaluated through the PyTorch-free runtime), a training run folder or checkpoint folder, or a
diffusers pipeline folder (evaluated in PyTorch, which is imported only then). Nothing heavy is
imported at module level: ``refdiff --help`` stays instant.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

from ..data import DEFAULT_HOLDOUT
from ._argtypes import fraction, non_negative_int, positive_int, value_range
from ._eval_shards import add_arguments as add_shard_arguments

__all__ = ["add_parser", "run"]

_EPILOG = """\
examples:
  refdiff eval runs/demo/model.onnx --data digits
  refdiff eval runs/demo/model.onnx --samples runs/demo/samples.npz --out report.json
      runs/demo/samples.npz holds the demo's 256 samples (`refdiff sample` writes such files)
  refdiff eval runs/digits3k --n-images 0 --mc-draws 32        # a run folder: needs PyTorch
  refdiff eval model.onnx --no-full --mc-draws 64              # quick: Monte-Carlo estimate only
  refdiff eval model.onnx --data images.npz --value-range 0,1  # your own images, floats in [0, 1]
      an image folder or .npz file is scored on its held-out share (--holdout-fraction), the
      images that `refdiff train` held out
  refdiff eval model.onnx --samples 's-shard*.npz' --no-full --mc-draws 0
      the shards of `refdiff sample --shard` joined (checked: one model, seed and sampler,
      every index once) and scored alone, as one run of all the samples
  torchrun --nproc_per_node 4 -m refdiff.cli eval model.onnx --shard auto --out parts/e.npz
  refdiff eval --merge 'parts/e-shard*.npz' --out report.json
      the bound over 4 shards of the images, merged: the figures of one run (docs/scale.md)

The full bound calls the model T times per batch of images; the Monte-Carlo estimate calls it
--mc-draws times. Bits/dim are those of the 8-bit images under the model (lower is better); the
independent-pixel baseline is fitted on the training split and scored on the same images.
With --samples (an .npz with an "images" array, as written by `refdiff sample`) on the digits:
the Fréchet distance in the feature space of refdiff's digits classifier with its floor (real
training images) and ceiling (independent-pixel samples), the classifier's confidence and class
coverage, and each sample's distance to its nearest training image. See docs/evaluation.md.
"""


def _draws(text: str) -> int:
    v = non_negative_int(text)
    if v == 1:
        raise argparse.ArgumentTypeError(
            "--mc-draws must be 0 (skip) or >= 2 (for a standard error)"
        )
    return v


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``refdiff eval``."""
    p = subparsers.add_parser(
        "eval",
        help="bits/dim of a model (ONNX or checkpoint) vs a per-pixel baseline; sample quality",
        description=(
            "Evaluate a diffusion model on held-out images: bits/dim through the variational\n"
            "bound (full over all T steps, and a Monte-Carlo estimate with its standard error),\n"
            "next to the independent-pixel baseline; with --samples, sample-quality figures."
        ),
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "model",
        metavar="MODEL",
        nargs="?",
        help="an exported .onnx file (no PyTorch needed), or a training run folder, one of its "
        "checkpoints/ckpt-* folders or a diffusers pipeline folder (through PyTorch)",
    )
    p.add_argument(
        "--data",
        default="digits",
        help="dataset: 'digits', a .npz file, a CIFAR-10 folder or .tar.gz, or an image folder "
        "(default: digits)",
    )
    p.add_argument(
        "--split",
        default="test",
        choices=("test", "train", "all"),
        help="images to score (default: test). Image folders and .npz files have no split of "
        "their own: test is their held-out share (--holdout-fraction, the same images the "
        "trainer holds out), train the rest",
    )
    p.add_argument(
        "--holdout-fraction",
        metavar="F",
        type=fraction,
        default=DEFAULT_HOLDOUT,
        help=f"folders/.npz: the held-out share (default: {DEFAULT_HOLDOUT}, as in training)",
    )
    p.add_argument(
        "--value-range",
        metavar="LO,HI",
        type=value_range,
        default=None,
        help=".npz files: the range the stored values lie in (default: 0,255 for integers, "
        "-1,1 for floats)",
    )
    p.add_argument(
        "--npz-key",
        metavar="KEY",
        default=None,
        help=".npz files: the array holding the images (default: 'images', or the only array)",
    )
    p.add_argument(
        "--n-images",
        metavar="N",
        type=non_negative_int,
        default=256,
        help="score the first N images of the split; 0 = all (default: 256)",
    )
    p.add_argument(
        "--samples",
        metavar="NPZ",
        nargs="+",
        default=None,
        help="an .npz of uint8 samples [N, C, H, W] under the key 'images' (as written by "
        "`refdiff sample`), or the shards of one run (several files or a quoted glob, joined "
        "in index order after checking they share the model, seed and sampler and hold every "
        "index once): report sample quality",
    )
    p.add_argument(
        "--samples-key",
        metavar="KEY",
        default="images",
        help="the array of the --samples files that holds the samples (default: images)",
    )
    p.add_argument(
        "--mc-draws",
        metavar="K",
        type=_draws,
        default=16,
        help="timesteps drawn per image by the Monte-Carlo estimate, besides the few it "
        "computes exactly (L_0, L_1, ...); 0 skips it (default: 16)",
    )
    p.add_argument(
        "--mc-timesteps",
        choices=("schedule", "importance"),
        default="schedule",
        help="proposal of the Monte-Carlo estimate's timesteps: 'schedule' (where the "
        "schedule lets the bound's terms be large, no extra cost) or 'importance' (p(t) from a "
        "pilot run of the full bound on 16 training images: T more calls, less noise) (default: "
        "schedule). Uniform timesteps are not offered: a few of them miss the small t that "
        "carry most of the bound",
    )
    p.add_argument(
        "--no-full", action="store_true", help="skip the full bound (T model calls per batch)"
    )
    p.add_argument(
        "--batch-size", metavar="B", type=positive_int, default=64, help="images per model call"
    )
    p.add_argument(
        "--seed",
        metavar="S",
        type=non_negative_int,
        default=0,
        help="seed of the bound's noise (default: 0)",
    )
    p.add_argument("--device", default="cpu", help="'cpu' or 'cuda' / 'cuda:N' (default: cpu)")
    p.add_argument("--out", metavar="JSON", default=None, help="write the report as JSON here")
    p.add_argument(
        "--plot-terms",
        metavar="PNG",
        default=None,
        help="write the plot of the bound's per-timestep terms here (needs the full bound)",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    add_shard_arguments(p)
    p.set_defaults(func=run)
    return p


# --------------------------------------------------------------------------------------------
# The command
# --------------------------------------------------------------------------------------------


def _fmt(v: Any, digits: int = 4) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    return str(v)


def _header(model: dict[str, Any], diffusion: dict[str, Any], data: dict[str, Any]) -> str:
    """The model and the images, two lines: printed before an evaluation starts."""
    where = model["path"] + (f" (step {model['step']})" if "step" in model else "")
    return (
        f"{where}: {model['kind']}, T = {diffusion['schedule']['T']}, {diffusion['prediction']} "
        f"prediction, {diffusion['variance']} variance\nheld-out: {data['name']}, "
        f"{data['num_images']} images"
    )


def _print_report(report: dict[str, Any], *, header: bool = True) -> None:
    b = report["bits_per_dim"] or {}
    if header:  # an evaluation printed it before it started; a merge prints it here
        print("\n" + _header(report["model"], report["diffusion"], report["data"]))
    print()
    merged = report.get("merged") or {}
    if merged.get("missing"):
        print(
            f"PARTIAL: {merged['missing']} of the run's {merged['num_images']} images missing "
            f"({merged['missing_indices']}): the figures are those of the others\n"
        )
    rows = [("bits/dim (lower is better)", "value", "± s.e.", "")]
    if b.get("bpd_full") is not None:
        rows.append(
            (
                "diffusion, full bound",
                _fmt(b["bpd_full"]),
                _fmt(b["bpd_full_stderr"]),
                "over images",
            )
        )
    if b.get("bpd_mc") is not None:
        rows.append(
            (
                f"diffusion, Monte-Carlo ({b['mc_calls_per_image']} calls/image, "
                f"{b['mc_timesteps']})",
                _fmt(b["bpd_mc"]),
                _fmt(b["bpd_mc_stderr"]),
                "Monte-Carlo noise; 95 %: {:.4f} .. {:.4f}".format(*b["bpd_mc_interval"]),
            )
        )
    base = report["baseline"]
    rows.append(("independent pixels", _fmt(base["bpd"]), _fmt(base["bpd_stderr"]), "same images"))
    w = max(len(r[0]) for r in rows)
    for r in rows:
        print(f"  {r[0]:<{w}}  {r[1]:>8}  {r[2]:>8}  {r[3]}")
    q = report.get("sample_quality")
    if q is None:
        return
    print(f"\nsamples: {report['samples']['path']}, {report['samples']['num_samples']} images")
    if report["samples"].get("missing"):
        print(f"  PARTIAL: {report['samples']['missing']} of {report['samples']['n']} missing")
    if "fd" in q:
        print(
            f"  Fréchet distance (classifier features) {q['fd']:.3f}   floor {q['fd_floor']:.3f} "
            f"(real training images)   ceiling {q['fd_ceiling']:.3f} (independent pixels)"
        )
        print(f"  relative position (0 = real, 1 = baseline) {_fmt(q['fd_relative'], 3)}")
        print(
            f"  classifier confidence {q['confidence']:.3f} (real held-out: "
            f"{q['heldout_confidence']:.3f}); class coverage {q['class_coverage']:.0%} of 10 "
            f"classes at >= {q['min_class_share']:.0%}; classes {q['class_histogram']}"
        )
    print(
        f"  nearest training image, L2 in [0, 1] pixels: mean {q['nn_train_dist_mean']:.3f}, min "
        f"{q['nn_train_dist_min']:.3f} (real held-out: mean {q['heldout_nn_train_dist_mean']:.3f}"
        f", min {q['heldout_nn_train_dist_min']:.3f})"
    )
    print(
        f"  exact copies of training images: {q['nn_exact_copies']}; samples nearer than the "
        f"5th percentile of held-out images: {q['nn_share_below_heldout_p5']:.1%} (about 5 % "
        "when nothing is copied)"
    )


def run(args: argparse.Namespace) -> int:
    from .._io import check_output_file, created_folder, write_json
    from ._eval_shards import check_shard_output, merged_report

    t0 = time.perf_counter()
    part = check_shard_output(args)  # a --shard run's output; --merge's conflicts
    if args.model is None and args.merge is None:
        raise ValueError("MODEL is missing: give the model to evaluate (or --merge PARTS)")
    if args.no_full and args.mc_draws == 0 and args.samples is None:
        raise ValueError(
            "nothing to evaluate: --no-full together with --mc-draws 0 (add --samples to score "
            "samples alone)"
        )
    if args.plot_terms is not None and args.no_full and args.merge is None:
        raise ValueError("--plot-terms needs the full bound; drop --no-full")
    # where the results go, before the (long) evaluation; nothing is created yet
    if args.out is not None and part is None:
        check_output_file(args.out, suffix=".json", what="--out report")
    if args.plot_terms is not None:
        check_output_file(args.plot_terms, suffix=".png", what="--plot-terms plot")
    report: dict[str, Any] | None
    if args.merge is not None:
        report = merged_report(args)
    else:
        report = _evaluate(args, t0, part)
        if report is None:  # a shard: its partial result is written
            return 0
    seconds = report["seconds"]
    bpd = report["bits_per_dim"]
    if args.plot_terms is not None:
        from ..plots import plot_bound_terms

        if bpd is None or bpd["terms_bpd"] is None:
            raise ValueError("--plot-terms needs the full bound, which the partial results lack")
        report["plot_terms"] = str(
            plot_bound_terms(bpd["terms_bpd"], args.plot_terms, prior_bpd=bpd["prior_bpd"])
        )
    seconds["total"] = time.perf_counter() - t0
    _print_report(report, header=args.merge is not None)
    if args.out is not None:
        out = Path(args.out)
        with created_folder(out.parent):  # a failed first write leaves no empty folder
            write_json(out, report)
        print(f"\nwrote {out}")
    if args.plot_terms is not None:
        print(f"wrote {report['plot_terms']}")
    return 0


def _evaluate(args: argparse.Namespace, t0: float, part: Path | None) -> dict[str, Any] | None:
    """Open the model and the data, evaluate, and return the report; with ``--shard``, write the
    shard's partial result to ``part`` instead and return None."""
    from ..data import load_dataset
    from ..evaluation import evaluate
    from ..evaluation.evaluate import score_images

    # Read every input before the long part, so a bad one fails fast.
    from ..models import open_model
    from ..runtime.shards import launcher_device
    from ._eval_shards import images_sha256, join_samples, note_other_model, save_shard

    opened = open_model(args.model, device=launcher_device(args.device))
    if opened.denoiser is None:
        raise ValueError(
            f"{args.model!r} is a {opened.format} file: its sampler and network run inside the "
            "graph, so there is no denoiser to score; evaluate the denoiser file or model it was "
            "built from"
        )
    denoiser, diffusion, model_info = opened.denoiser, opened.diffusion, dict(opened.info)
    model_info["fingerprint"] = opened.fingerprint
    if "run_steps" in model_info and model_info["step"] < model_info["run_steps"]:
        print(
            f"note: the run is at step {model_info['step']} of {model_info['run_steps']}; "
            "evaluating its latest checkpoint",
            file=sys.stderr,
        )
    load_model = time.perf_counter() - t0

    t1 = time.perf_counter()

    def load(split: str) -> Any:
        return load_dataset(
            args.data,
            split=split,
            holdout_fraction=args.holdout_fraction,
            value_range=args.value_range,
            npz_key=args.npz_key,
        )

    data = load(args.split)
    model_shape = tuple(diffusion.image_shape)
    if tuple(data.shape) != model_shape:
        raise ValueError(
            f"the model takes images of shape (C, H, W) = {model_shape}, but {args.data!r} has "
            f"images of shape {tuple(data.shape)}"
        )
    images = data.images if args.n_images == 0 else data.images[: args.n_images]
    # The baseline, the classifier's floor and the memorisation check use the training split.
    train = data if args.split == "train" else load("train")
    samples = reference = None
    joined = join_samples(args)
    if joined is not None:
        samples = joined.images
        note_other_model(joined, opened.fingerprint)
        if tuple(samples.shape[1:]) != tuple(data.shape):
            raise ValueError(
                f"the samples in {joined.paths[0]!r} have shape (C, H, W) = "
                f"{tuple(samples.shape[1:])}, the data {args.data!r} {tuple(data.shape)}"
            )
        if args.data == "digits":
            reference = data if args.split == "test" else load_dataset("digits", split="test")
        elif args.split != "test":
            # The memorisation check needs held-out images, which the training split is not.
            print(
                "note: sample quality needs held-out images (--split test); skipped",
                file=sys.stderr,
            )
            samples = None
    load_data = time.perf_counter() - t1
    data_info = {
        "spec": args.data,
        "name": data.name,
        "split": args.split,
        "num_images": int(images.shape[0]),
        "image_shape": list(data.shape),
    }
    method = {
        "full": not args.no_full,
        "num_draws": args.mc_draws,
        "mc_timesteps": args.mc_timesteps,
        "batch_size": args.batch_size,
        "seed": args.seed,
        "progress": not args.no_progress,
    }
    # what is evaluated and each long stage with its cost, before it starts
    print(_header(model_info, diffusion.to_dict(), data_info), flush=True)

    def announce(line: str) -> None:
        print(f"  {line}", flush=True)

    if part is not None:
        scores = score_images(
            denoiser,
            diffusion,
            images,
            train_uint8=train.images,
            shard=args.shard,
            announce=announce,
            **method,
        )
        # what the shards must share; the data by its images, whatever path each job gave
        ident_data = {k: v for k, v in data_info.items() if k != "spec"}
        ident_data["images_sha256"] = images_sha256(images)
        ident_data["train_images_sha256"] = images_sha256(train.images)
        identity = {
            "model": {"fingerprint": opened.fingerprint, "format": opened.format},
            "diffusion": diffusion.to_dict(),
            "data": ident_data,
        }
        about = {"model": model_info, "data_spec": args.data}
        save_shard(
            args, part, scores, identity=identity, about=about, num_images=int(images.shape[0])
        )
        return None

    report = evaluate(
        denoiser,
        diffusion,
        images,
        train_uint8=train.images,
        samples_uint8=samples,
        reference_uint8=None if reference is None else reference.images,
        digits=args.data == "digits",
        announce=announce,
        **method,
    )
    seconds = {"load_model": load_model, "load_data": load_data, **report.pop("seconds")}
    return {
        "model": model_info,
        "diffusion": diffusion.to_dict(),
        "data": data_info,
        **report,
        "samples": None if samples is None else joined.describe(),
        "seconds": seconds,
    }
