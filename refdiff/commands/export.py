"""``refdiff export`` (checkpoint -> ONNX, then the parity check) and ``refdiff check``.

Nothing heavy at module level: torch, onnx and onnxruntime are imported when a command runs.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from .._io import check_output_file
from . import precision
from ._argtypes import non_negative_float, positive_int_list
from ._sampler_args import add_sampler_arguments, choose_sampler, sampler_flags_given

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
  refdiff export model.onnx --out gen.onnx --sampler dpmpp_2m --steps 10
      a generator file: the denoiser and the whole sampler in one graph, seed and sample
      indices in, images out (float32 and uint8), for onnxruntime in any language; and
      gen-step.onnx, one step per call. Any sampler flag makes a generator; MODEL may be any
      model (an .onnx file needs no PyTorch). Checked against the Python sampler after writing
      (docs/generator.md)

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
  refdiff check gen.onnx model.onnx
      a generator file: what it is (sampler, steps, plan), and its images against the Python
      sampler on the model it was built from (any model format), for two seeds
  refdiff check gen.onnx
      a generator file alone: what it is, a run, and its step file (gen-step.onnx) against it
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
    e.add_argument("--no-progress", action="store_true", help="no progress bars")
    add_sampler_arguments(e)
    e.add_argument(
        "--layout",
        choices=("loop", "unrolled"),
        default="loop",
        help="a generator's steps as an ONNX Loop (one copy of the network; as fast as the "
        "Python loop) or written out (default: loop; docs/generator.md)",
    )
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
    c.add_argument("model", help="the .onnx file (a denoiser, or a generator file)")
    c.add_argument(
        "checkpoint",
        nargs="?",
        default=None,
        help="a run folder (its latest checkpoint), a checkpoint folder, or a diffusers "
        "pipeline or UNet folder; for a generator file, optional: the model it was built from "
        "(any format, its denoiser .onnx too); for a denoiser without it (and without "
        "--against): print what the file is",
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
    c.add_argument("--no-progress", action="store_true", help="no progress bars")
    precision.add_check_arguments(c)
    c.set_defaults(func=run_check)


def _torch_model(path: str, no_ema: bool) -> Any:
    """The model at ``path`` with its PyTorch module (export and check compare against it)."""
    from ..models import open_model

    model = open_model(path, ema=False if no_ema else None)
    if model.module is None:
        raise ValueError(
            f"{path!r} is an {model.format} file, not a PyTorch model: export and check take a "
            "training run folder, a checkpoint folder or a diffusers folder"
        )
    return model


def run_export(args: argparse.Namespace) -> int:
    out = check_output_file(args.out, what="--out file")  # before the (long) export
    given = (("--float32", args.float32), ("--float32-below", args.float32_below))
    int8_only = [flag for flag, value in given if value]
    if int8_only and args.precision != "int8":
        verb = "applies" if len(int8_only) == 1 else "apply"
        raise ValueError(f"{' and '.join(int8_only)} {verb} to --precision int8 only")
    if sampler_flags_given(args):  # a generator: from an .onnx file, no torch is needed
        return _export_generator(args, out)
    if args.fp16 and args.precision not in (None, "float16"):
        raise ValueError(f"--fp16 contradicts --precision {args.precision}")
    args.precision = "float16" if args.fp16 else (args.precision or "float32")
    if args.checkpoint.endswith(".onnx"):
        return precision.variant_from_file(args, out)
    from ..export import ParityError, export_onnx, verify_onnx

    opened = _torch_model(args.checkpoint, args.no_ema)
    model = opened.module
    if args.precision in precision.VARIANTS:
        return precision.export_variant(args, model, opened.diffusion, out)
    # recorded in the file, so that `refdiff check` compares like with like
    weights = ("raw" if args.no_ema else "ema") if opened.format == "refdiff" else None
    params = sum(p.numel() for p in model.parameters()) / 1e6
    then = "" if args.no_verify else ", then the parity check against PyTorch"
    print(
        f"exporting {opened.describe()} ({params:.1f} M parameters) to {out}: torch.export to "
        f"ONNX and onnx.checker{then}",
        flush=True,
    )
    progress = not args.no_progress
    export_onnx(
        model,
        opened.diffusion,
        out,
        opset=args.opset,
        fp16=args.precision == "float16",
        weights=weights,
        progress=progress,
    )
    size = out.stat().st_size / 2**20
    dtype = args.precision
    print(f"wrote {out} ({size:.1f} MiB, {dtype}, opset {args.opset}); onnx.checker: ok")
    if args.no_verify:
        return 0
    try:
        report = verify_onnx(model, out, progress=progress)
    except ParityError as exc:
        print(exc.report.table())
        print(
            f"refdiff export: error: {out} failed the parity check (the file is kept)",
            file=sys.stderr,
        )
        return 1
    print(report.table())
    return 0


def _recorded_weights(meta: str | None) -> str | None:
    """The ``weights`` entry ("ema" or "raw") of a file's refdiff metadata, if it has one."""
    try:
        weights = json.loads(meta or "{}").get("weights")
    except (ValueError, AttributeError):  # unreadable: verify_onnx reports it
        return None
    return weights if isinstance(weights, str) else None


def run_check(args: argparse.Namespace) -> int:
    from ..export import ParityError, verify_onnx
    from ..onnx_contract import METADATA_KEY, file_kind, read_metadata_props

    model_path = Path(args.model)
    if not model_path.exists():
        raise FileNotFoundError(f"ONNX model {args.model!r} does not exist")
    if args.against is not None:
        return precision.run_drift(args)
    meta = read_metadata_props(model_path).get(METADATA_KEY)
    if file_kind(meta) != "denoiser":
        return _check_generator(args, model_path)
    if args.checkpoint is None:
        print(precision.describe_file(model_path))
        return 0
    recorded = _recorded_weights(meta)
    # compare like with like: the weights the file records, unless --no-ema says otherwise
    raw = args.no_ema or recorded == "raw"
    if raw and not args.no_ema:
        print(
            f"note: {model_path} holds raw weights (exported with --no-ema): comparing with "
            "the checkpoint's raw weights",
            file=sys.stderr,
        )
    opened = _torch_model(args.checkpoint, raw)
    model = opened.module
    try:
        report = verify_onnx(
            model,
            model_path,
            batch_sizes=args.batch_sizes,
            atol=args.atol,
            rtol=args.rtol,
            seed=args.seed,
            progress=not args.no_progress,
        )
    except ParityError as exc:
        print(exc.report.table())
        n = len(exc.report.failures)
        if recorded is not None and args.no_ema and recorded != "raw":
            hint = "; the file holds EMA weights (its metadata says so): drop --no-ema"
        elif recorded is None and opened.format == "refdiff":
            hint = (
                "; the file does not record whether it holds EMA or raw weights (exported before "
                "refdiff recorded it): "
                + (
                    "if it holds EMA weights, drop --no-ema"
                    if raw
                    else "if it was exported with --no-ema, add --no-ema"
                )
            )
        else:
            hint = ""
        print(
            f"refdiff check: error: {model_path} does not match the checkpoint "
            f"({n} problem(s), listed above){hint}",
            file=sys.stderr,
        )
        return 1
    print(report.table())
    return 0


def _export_generator(args: argparse.Namespace, out: Path) -> int:
    """``refdiff export MODEL --sampler ...``: a generator file and its step file."""
    import tempfile

    import onnx

    from ..graph.generator import (
        build_generator,
        build_step,
        check_generator_precision,
        save_model,
    )
    from ..models import open_model
    from ..onnx_contract import METADATA_KEY, ModelMetadata, file_kind, read_metadata_props
    from ..runtime import OnnxDenoiser
    from ..runtime.generator import OnnxGenerator, OnnxStepper, compare_with_python

    step_out = check_output_file(out.with_name(out.stem + "-step.onnx"), what="step file")
    path = Path(args.checkpoint)
    if path.suffix == ".onnx" and path.is_file():  # before opening it (bfloat16 needs OpenVINO)
        meta = read_metadata_props(path).get(METADATA_KEY)
        if meta is not None and file_kind(meta) == "denoiser":
            check_generator_precision(ModelMetadata.from_json(meta, source=str(path)))
    opened = open_model(args.checkpoint, ema=False if args.no_ema else None)
    if opened.format in ("generator", "step"):
        raise ValueError(f"{args.checkpoint!r} is a {opened.format} file already; give the model")
    choice = choose_sampler(args, opened.diffusion)  # before any work: a bad flag fails fast
    if choice.spec.plan is None:
        raise ValueError(
            f"the {choice.name!r} sampler has no plan (its second network call per step is not "
            "a fixed linear combination), so it cannot be written into a generator; choose "
            "another --sampler"
        )
    with tempfile.TemporaryDirectory() as tmp:
        if opened.format == "onnx":
            if args.fp16:
                raise ValueError(
                    f"--fp16 exports a float16 denoiser from a PyTorch model; {args.checkpoint!r} "
                    "is an ONNX file: build from its float16 export, or from the checkpoint"
                )
            den_path = opened.path
        else:
            from ..export import export_onnx

            print(f"exporting the denoiser of {opened.describe()} ...", flush=True)
            den_path = export_onnx(
                opened.module,
                opened.diffusion,
                Path(tmp) / "denoiser.onnx",
                opset=args.opset,
                fp16=args.fp16,
            )
        denoiser = onnx.load(str(den_path))
        print(f"building a generator: {choice.describe()}, {args.layout} ...", flush=True)
        save_model(build_generator(denoiser, choice, layout=args.layout), out)
        save_model(build_step(denoiser, choice), step_out)
        for path in (out, step_out):
            print(f"wrote {path} ({path.stat().st_size / 2**20:.1f} MiB)")
        if args.no_verify:
            return 0
        gen = OnnxGenerator(out)
        report = compare_with_python(gen, OnnxDenoiser(den_path))
        print(report.report())
        stepped = OnnxStepper(step_out).run(0, [0, 1])
        step_diff = float(abs(stepped - gen.run(0, [0, 1])[0]).max())
        print(f"step file run step by step vs the generator: max abs {step_diff:.2e}")
    if not report.ok or step_diff > 1e-5:
        print(
            f"refdiff export: error: {out} does not match the Python sampler (kept)",
            file=sys.stderr,
        )
        return 1
    return 0


def _check_generator(args: argparse.Namespace, path: Path) -> int:
    """``refdiff check gen.onnx [MODEL]``: what the file is, and it against the Python sampler."""
    import numpy as np

    from ..models import open_model
    from ..plans import Plan
    from ..runtime.generator import OnnxStepper, compare_with_python

    opened = open_model(path)
    meta = opened.generator.metadata
    print(opened.describe())
    print(Plan.from_dict(meta.plan).table())
    if opened.format == "step":
        raise ValueError(f"{path} is a step file; check the generator file it goes with")
    gen = opened.generator
    ok = True
    if args.checkpoint is not None:
        other = open_model(args.checkpoint, ema=False if args.no_ema else None)
        if other.denoiser is None:
            raise ValueError(f"{args.checkpoint!r} is a {other.format} file, not a model")
        tol = args.rtol if args.rtol is not None else 1e-4
        report = compare_with_python(
            gen, other.denoiser, seeds=(args.seed, args.seed + 1), tolerance=tol
        )
        print(report.report())
        ok = report.ok
    else:
        samples, _ = gen.run(args.seed, [0, 1])
        print(f"ran 2 samples: finite, values in [{samples.min():.3f}, {samples.max():.3f}]")
    step_path = path.with_name(path.stem + "-step.onnx")
    if step_path.is_file():
        stepped = OnnxStepper(step_path).run(args.seed, [0, 1])
        diff = float(np.abs(stepped - gen.run(args.seed, [0, 1])[0]).max())
        print(f"{step_path} step by step vs the generator: max abs {diff:.2e}")
        ok = ok and diff <= 1e-5
    if not ok:
        print(f"refdiff check: error: {path} failed the check", file=sys.stderr)
        return 1
    return 0
