"""Reduced precision on the command line: ``refdiff export --precision``, ``refdiff check MODEL``
(what the file is) and ``refdiff check MODEL --against VARIANT`` (the drift harness).

The parsers of ``export`` and ``check`` live in :mod:`refdiff.commands.export`; the arguments and the work of
reduced precision are here. Nothing heavy at module level.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

from .._io import check_output_file, write_json
from ._argtypes import non_negative_float, non_negative_int, positive_int

__all__ = [
    "add_check_arguments",
    "add_export_arguments",
    "describe_file",
    "export_variant",
    "run_drift",
]

VARIANTS = ("int8", "bfloat16")


def _parts(text: str) -> tuple[str, ...]:
    from ..export.quantize import GRAPH_PARTS

    parts = tuple(p.strip() for p in text.split(",") if p.strip()) if text != "none" else ()
    unknown = [p for p in parts if p not in GRAPH_PARTS]
    if unknown:
        raise argparse.ArgumentTypeError(
            f"unknown graph parts {unknown}; choose from {list(GRAPH_PARTS)} or 'none'"
        )
    return parts


def add_export_arguments(e: Any) -> None:
    """``--precision`` and the int8 calibration flags of ``refdiff export``."""
    e.add_argument(
        "--precision",
        choices=("float32", "float16", "int8", "bfloat16"),
        default=None,
        help="float32 (default); float16 (= --fp16, for GPUs); int8 (static QDQ, calibrated on "
        "the model's own sampling trajectories: onnxruntime's integer kernels); bfloat16 (runs "
        'in OpenVINO, pip install "refdiff[openvino]"). docs/precision.md says which to ship',
    )
    e.add_argument(
        "--calibration-images",
        type=positive_int,
        default=16,
        metavar="N",
        help="int8: trajectories that calibrate the activation ranges (default: 16)",
    )
    e.add_argument(
        "--calibration-steps",
        type=positive_int,
        default=50,
        metavar="S",
        help="int8: DDPM steps per trajectory, evenly over all noise levels (default: 50)",
    )
    e.add_argument(
        "--float32",
        type=_parts,
        default=None,
        metavar="PARTS",
        help="int8: graph parts kept in float32, comma-separated, or 'none' (default: input "
        "convolution,output convolution; also: timestep embedding, attention products)",
    )
    e.add_argument(
        "--float32-below",
        type=non_negative_int,
        default=0,
        metavar="K",
        help="int8: calls with a timestep below K run the float32 network, which the file then "
        "holds too (both networks' size): the likelihood's error lives at small t. 0 (default): "
        "int8 throughout. T/20 met the bits/dim target on the demo's model (docs/precision.md)",
    )


def add_check_arguments(c: Any) -> None:
    """``--against`` and the drift harness's flags of ``refdiff check``."""
    g = c.add_argument_group("drift harness (refdiff check MODEL --against VARIANT)")
    g.add_argument(
        "--against",
        metavar="VARIANT",
        help="another refdiff file of the same model (int8, bfloat16, float16): sample both from "
        "the same noise and print the drift per step, the images', bits/dim and Fréchet "
        "distance differences; exit 1 beyond the tolerances",
    )
    g.add_argument("--sampler", default="dpmpp_2m", help="sampler (default: dpmpp_2m)")
    g.add_argument("--steps", type=positive_int, default=10, help="sampler steps (default: 10)")
    g.add_argument("--n", type=positive_int, default=1000, help="samples (default: 1000)")
    g.add_argument(
        "--batch-size", type=positive_int, default=250, help="images per call (default: 250)"
    )
    g.add_argument(
        "--heldout",
        type=positive_int,
        default=None,
        metavar="N",
        help="8x8 digits models: score bits/dim on the first N held-out digits (default: all)",
    )
    g.add_argument(
        "--fd-tolerance",
        type=non_negative_float,
        default=0.05,
        help="largest relative change of the Fréchet distance (default: 0.05)",
    )
    g.add_argument(
        "--bpd-tolerance",
        type=non_negative_float,
        default=0.01,
        help="largest change of bits/dim (default: 0.01)",
    )
    g.add_argument(
        "--layers",
        action="store_true",
        help="also the error of every convolution and matrix product (needs the onnx package)",
    )
    g.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (default: cpu)")
    g.add_argument("--json", metavar="FILE", help="also write the report as JSON")
    g.add_argument("--plot", metavar="PNG", help="also plot the per-step drift")


def export_variant(args: argparse.Namespace, model: Any, diffusion: Any, out: Path) -> int:
    """Export ``model`` to float32 in a temporary folder beside ``out``, then write the variant
    made from that file."""
    from ..export import export_onnx

    with tempfile.TemporaryDirectory(dir=out.parent, prefix=".refdiff-export-") as tmp:
        fp32 = Path(tmp) / "float32.onnx"
        print(f"exporting {args.checkpoint} to float32 first ...", flush=True)
        export_onnx(model, diffusion, fp32, opset=args.opset)
        return variant_from_file(args, out, source=fp32, source_name=str(args.checkpoint))


def variant_from_file(
    args: argparse.Namespace,
    out: Path,
    source: Path | None = None,
    source_name: str | None = None,
) -> int:
    """Write the ``args.precision`` variant of a float32 file (``args.checkpoint`` by default:
    ``refdiff export FLOAT32.onnx --precision int8``), then check it against that file."""
    from ..export.quantize import check_variant, write_variant

    if args.precision not in VARIANTS:
        raise ValueError(
            f"an ONNX file ({args.checkpoint!r}) can be made into an int8 or bfloat16 variant "
            f"(--precision int8 or bfloat16); a {args.precision} file is exported from the "
            "checkpoint"
        )
    source = Path(args.checkpoint) if source is None else source
    print(f"writing the {args.precision} variant to {out} ...", flush=True)
    write_variant(
        source,
        out,
        args.precision,
        float32=args.float32,
        calibration_images=args.calibration_images,
        calibration_steps=args.calibration_steps,
        float32_below=args.float32_below,
        source_name=source_name,
        progress=lambda line: print(line, flush=True),
    )
    print(describe_file(out))
    err, tol = check_variant(source, out)
    verdict = "ok" if err <= tol else "ABOVE the tolerance"
    print(
        f"denoiser error against float32 along sampling trajectories: relative RMS {err:.3g} "
        f"(docs/precision.md: <= {tol:g}): {verdict}"
    )
    if err > tol:
        print(f"refdiff export: error: {out} is off float32 beyond the tolerance", file=sys.stderr)
        return 1
    print(f"next: its drift on samples, refdiff check FLOAT32.onnx --against {out}")
    return 0


def describe_file(path: str | Path) -> str:
    """What ``refdiff check MODEL`` prints: the file's precision and settings."""
    from ..onnx_contract import METADATA_KEY, ModelMetadata, check_onnx_file
    from ..runtime.devices import import_onnxruntime

    path = Path(path)
    check_onnx_file(path)
    ort = import_onnxruntime()
    try:
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime's own exception types
        raise ValueError(f"{str(path)!r} is not a readable ONNX model: {exc}") from None
    raw = session.get_modelmeta().custom_metadata_map.get(METADATA_KEY)
    meta = ModelMetadata.from_json(raw, source=f"ONNX model {str(path)!r}")
    size = path.stat().st_size / 2**20
    p = meta.precision
    what = p.describe() if p is not None else f"{meta.dtype} (runs on onnxruntime)"
    d = meta.diffusion
    return "\n".join(
        [
            f"{path} ({size:.1f} MiB, refdiff {meta.refdiff_version or '?'})",
            f"  precision: {what}",
            f"  diffusion: {d.schedule.name} schedule, T = {d.num_timesteps}, "
            f"{d.prediction.value} prediction, {d.variance.value} variance, images "
            f"{list(d.image_shape)}",
        ]
    )


def run_drift(args: argparse.Namespace) -> int:
    """``refdiff check MODEL --against VARIANT``."""
    if args.checkpoint is not None:
        raise ValueError(
            f"give a checkpoint ({args.checkpoint!r}: the parity check) or --against VARIANT "
            "(the drift harness), not both"
        )
    from ..evaluation.drift import layer_drift, measure_drift
    from ..runtime import OnnxDenoiser

    for flag in ("json", "plot"):
        if getattr(args, flag):
            check_output_file(getattr(args, flag), what=f"--{flag} file")
    reference = OnnxDenoiser(args.model, device=args.device)
    variant = OnnxDenoiser(args.against, device=args.device)
    print(describe_file(args.model))
    print(describe_file(args.against))
    heldout = train = None
    if tuple(reference.diffusion.image_shape) == (1, 8, 8):
        from ..data import load_digits

        train, heldout = load_digits("train").images, load_digits("test").images
        if args.heldout is not None:
            heldout = heldout[: args.heldout]
    layers: Any = ()
    if args.layers:
        from ..export.quantize import trajectory_inputs

        print("per-layer errors along a reference trajectory ...", flush=True)
        feeds = trajectory_inputs(
            reference, images=32, steps=args.steps, sampler=args.sampler, seed=args.seed
        )
        layers = layer_drift(args.model, args.against, feeds)
    report = measure_drift(
        reference,
        variant,
        sampler=args.sampler,
        steps=args.steps,
        n=args.n,
        seed=args.seed,
        batch_size=args.batch_size,
        heldout=heldout,
        train=train,
        fd_tolerance=args.fd_tolerance,
        bpd_tolerance=args.bpd_tolerance,
        layers=layers,
        reference_name=str(args.model),
        variant_name=str(args.against),
        progress=lambda line: print(line, flush=True),
    )
    print(report.table())
    if args.json:
        write_json(args.json, json.loads(json.dumps(report.to_dict(), default=float)))
        print(f"wrote {args.json}")
    if args.plot:
        from ..plots import plot_drift

        plot_drift(report, args.plot)
        print(f"wrote {args.plot}")
    if not report.ok:
        print(
            f"refdiff check: error: {args.against} drifts from {args.model} beyond the "
            "tolerances (listed above)",
            file=sys.stderr,
        )
        return 1
    return 0
