"""``refdiff export`` (checkpoint -> ONNX, then the parity check) and ``refdiff check``.

Nothing heavy at module level: torch, onnx and onnxruntime are imported when a command runs.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from .._io import check_output_file
from . import precision
from ._argtypes import non_negative_float, positive_int_list

__all__ = ["add_parser", "run_check", "run_export"]

EXPORT_EPILOG = """\
examples:
  refdiff export runs/digits --out model.onnx
      the latest checkpoint of the run folder runs/digits, EMA weights, float32; then checks the
      file against PyTorch and prints the parity table
  refdiff export runs/digits/checkpoints/ckpt-00002000 --out model-fp16.onnx --fp16
      a float16 model (half the size; float32 inputs, outputs and normalisations); the table
      then gives its error against the float32 PyTorch model
  refdiff export ddpm-cifar10 --out cifar10.onnx
      a diffusers DDPMPipeline or DDIMPipeline folder (model_index.json, unet/, scheduler/), or
      a UNet2DModel folder with scheduler_config.json beside it: the scheduler config becomes
      the file's diffusion settings (pip install "refdiff[diffusers]"; docs/diffusers.md)
  refdiff sample model.onnx --n 64 --out samples.png
      what to do next: sample from it, no PyTorch needed

The file carries the model's diffusion settings in its metadata (see docs/onnx.md).
"""

CHECK_EPILOG = """\
examples:
  refdiff check model.onnx runs/digits
      run model.onnx (onnxruntime, CPU) and the run's latest checkpoint (PyTorch) on the same
      random inputs at batch sizes 1 and 3 and timesteps 0, T/2, T-1; print max abs and max rel
      error per case; exit 1 if any case is above tolerance or the file does not match
  refdiff check model-fp16.onnx runs/digits --atol 0.05 --rtol 0.05
      looser tolerances (defaults: 1e-4 for float32 files, 2e-2 for float16 ones)
  refdiff check cifar10.onnx ddpm-cifar10
      a file exported from a diffusers folder, against that folder's UNet
"""


def add_parser(subparsers: Any) -> None:
    """Register ``export`` and ``check``."""
    e = subparsers.add_parser(
        "export",
        help="export a trained checkpoint to one ONNX file, then check it against PyTorch",
        description=(
            "Export the denoiser of a checkpoint (EMA weights by default), or of a diffusers "
            "DDPM/DDIM pipeline folder, to ONNX: inputs x "
            "[B,C,H,W] float32 and t [B] int64, output model_output, dynamic batch, weights in "
            "the file, the diffusion settings in its metadata. The file then goes through "
            "onnx.checker and an onnxruntime-vs-PyTorch parity check. Needs refdiff[torch] and "
            "refdiff[onnx]."
        ),
        epilog=EXPORT_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    e.add_argument(
        "checkpoint",
        help="a run folder (its latest checkpoint), a checkpoint folder, or a diffusers "
        "pipeline or UNet folder",
    )
    e.add_argument(
        "--out", default="model.onnx", help="the .onnx file to write (default: model.onnx)"
    )
    e.add_argument(
        "--fp16",
        action="store_true",
        help="float16 weights and arithmetic; inputs, outputs and normalisations stay float32",
    )
    e.add_argument(
        "--no-ema", action="store_true", help="export the raw weights instead of the EMA weights"
    )
    precision.add_export_arguments(e)
    e.add_argument("--opset", type=int, default=18, help="ONNX opset, >= 18 (default: 18)")
    e.add_argument("--no-verify", action="store_true", help="skip the parity check after exporting")
    e.set_defaults(func=run_export)

    c = subparsers.add_parser(
        "check",
        help="compare an ONNX file with its checkpoint (parity report; exit 1 on failure)",
        description=(
            "Run an exported model in onnxruntime (CPU) and its checkpoint in PyTorch on the same "
            "fresh random inputs; check the metadata, the output names, shapes and values; print "
            "the max absolute and relative error per batch size and timestep. Exits 1 if "
            "anything is off. Needs refdiff[torch] and refdiff[onnx]."
        ),
        epilog=CHECK_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    c.add_argument("model", help="the .onnx file")
    c.add_argument(
        "checkpoint",
        nargs="?",
        help="a run folder (its latest checkpoint), a checkpoint folder, or a diffusers "
        "pipeline or UNet folder; without it (and without --against), print what the file is",
    )
    c.add_argument(
        "--no-ema", action="store_true", help="compare with the raw weights instead of the EMA"
    )
    c.add_argument(
        "--batch-sizes",
        type=positive_int_list,
        default=(1, 3),
        metavar="B1,B2",
        help="batch sizes to run (default: 1,3)",
    )
    c.add_argument("--atol", type=non_negative_float, default=None, help="absolute tolerance")
    c.add_argument("--rtol", type=non_negative_float, default=None, help="relative tolerance")
    c.add_argument("--seed", type=int, default=0, help="seed of the inputs (default: 0)")
    precision.add_check_arguments(c)
    c.set_defaults(func=run_check)


def _load_diffusers(path: str, ema: bool) -> tuple[Any, Any]:
    if not ema:
        raise ValueError(
            f"--no-ema applies to refdiff checkpoints; the diffusers folder {path!r} holds one "
            "set of weights"
        )
    from ..export.diffusers import load_diffusers

    loaded = load_diffusers(path, warn=False)
    for note in loaded.notes:
        print(f"note: {note}", file=sys.stderr)
    return loaded.model, loaded.diffusion


def _load_model(checkpoint: str, ema: bool) -> tuple[Any, Any]:
    from ..diffusers_config import is_diffusers_folder

    if is_diffusers_folder(checkpoint):
        return _load_diffusers(checkpoint, ema)
    from ..training.checkpoint import load_model  # a missing torch: the CLI names the extra

    if not Path(checkpoint).exists():
        raise FileNotFoundError(f"checkpoint {checkpoint!r} does not exist")
    return load_model(checkpoint, ema=ema)


def run_export(args: argparse.Namespace) -> int:
    from ..diffusers_config import is_diffusers_folder
    from ..export import ParityError, export_onnx, verify_onnx

    out = check_output_file(args.out, what="--out file")  # before the (long) export
    if args.fp16 and args.precision not in (None, "float16"):
        raise ValueError(f"--fp16 contradicts --precision {args.precision}")
    args.precision = "float16" if args.fp16 else (args.precision or "float32")
    if args.checkpoint.endswith(".onnx"):
        return precision.variant_from_file(args, out)
    model, diffusion = _load_model(args.checkpoint, ema=not args.no_ema)
    if args.precision in precision.VARIANTS:
        return precision.export_variant(args, model, diffusion, out)
    weights = "raw" if args.no_ema else "EMA"
    if is_diffusers_folder(args.checkpoint):
        weights = "diffusers UNet2DModel"
    print(f"exporting {args.checkpoint} ({weights} weights) to {out} ...", flush=True)
    fp16 = args.precision == "float16"
    export_onnx(model, diffusion, out, opset=args.opset, fp16=fp16)
    size = out.stat().st_size / 2**20
    dtype = args.precision
    print(f"wrote {out} ({size:.1f} MiB, {dtype}, opset {args.opset}); onnx.checker: ok")
    if args.no_verify:
        return 0
    try:
        report = verify_onnx(model, out)
    except ParityError as exc:
        print(exc.report.table())
        print(
            f"refdiff export: error: {out} failed the parity check (the file is kept)",
            file=sys.stderr,
        )
        return 1
    print(report.table())
    return 0


def run_check(args: argparse.Namespace) -> int:
    from ..export import ParityError, verify_onnx

    model_path = Path(args.model)
    if not model_path.exists():
        raise FileNotFoundError(f"ONNX model {args.model!r} does not exist")
    if args.against is not None:
        return precision.run_drift(args)
    if args.checkpoint is None:
        print(precision.describe_file(model_path))
        return 0
    model, _ = _load_model(args.checkpoint, ema=not args.no_ema)
    try:
        report = verify_onnx(
            model,
            model_path,
            batch_sizes=args.batch_sizes,
            atol=args.atol,
            rtol=args.rtol,
            seed=args.seed,
        )
    except ParityError as exc:
        print(exc.report.table())
        n = len(exc.report.failures)
        print(
            f"refdiff check: error: {model_path} does not match the checkpoint "
            f"({n} problem(s), listed above)",
            file=sys.stderr,
        )
        return 1
    print(report.table())
    return 0
