"""``refdiff sample``: images from an exported ONNX model, on CPU or GPU, without PyTorch.

Imports nothing heavy at module level (``refdiff --help`` stays instant); onnxruntime, and CuPy on
CUDA, are imported when the command runs. Never imports torch.
"""

from __future__ import annotations

import argparse
from typing import Any

from .._enums import Spacing
from ..samplers import SAMPLERS
from ._argtypes import non_negative_int, positive_int

__all__ = ["add_parser", "run"]

EPILOG = """\
examples:
  refdiff sample model.onnx --n 64 --out samples.png
      64 samples with DDPM over all the model's steps, on the CPU; writes samples.png (a grid)
      and samples.npz (the uint8 images, their global indices and the seed)
  refdiff sample model.onnx --n 64 --sampler ddim --steps 50 --eta 0 --out samples.png
      deterministic DDIM with 50 evenly spaced steps
  refdiff sample model.onnx --n 64 --sampler dpmpp_2m --steps 20 --spacing logsnr
      DPM-Solver++(2M) with 20 network calls on steps uniform in log-SNR
  refdiff sample model.onnx --n 50000 --sampler ddim --steps 100 --device cuda --batch-size 500
      on an NVIDIA GPU (pip install 'refdiff[cuda12]' or 'refdiff[cuda13]')
  refdiff sample model.onnx --n 50000 --shard 2/8 --out shard2.png
      shard 2 (counted from 0) of 8: samples 12500..18749 of the 50000-sample run; the 8 shards
      together are exactly the unsharded run, whatever --batch-size each uses

Every sample is a pure function of (--seed, its global index): batch size, shards and device
change nothing but the speed (and float rounding between CPU and GPU).
"""


def _shard(text: str) -> tuple[int, int]:
    from ..runtime.sampling import parse_shard

    try:
        return parse_shard(text)  # type: ignore[return-value]
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "sample",
        help="sample images from an exported ONNX model (no PyTorch needed)",
        description=(
            "Draw samples from a model exported by `refdiff export`. The model file carries its "
            "diffusion settings (schedule, parameterisation, image shape), so nothing else is "
            "needed: no checkpoint, no PyTorch. Runs on the CPU (onnxruntime) or on an NVIDIA GPU "
            "(onnxruntime-gpu + CuPy)."
        ),
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("model", help="the .onnx file written by `refdiff export`")
    p.add_argument(
        "--n", type=positive_int, default=64, help="samples in the whole run (default: 64)"
    )
    p.add_argument(
        "--sampler",
        choices=tuple(SAMPLERS),
        default="ddpm",
        help=(
            "ddpm: ancestral sampling (Ho et al.); ddim: DDIM with --eta; euler, heun: the "
            "probability-flow ODE (Karras et al.; heun calls the model 2 x steps - 1 times); "
            "dpmpp_2m, dpmpp_3m, dpmpp_2m_sde: DPM-Solver++ (Lu et al.), on the digits model as "
            "good in 10 steps as ddpm in 200 (docs/samplers.md) (default: ddpm)"
        ),
    )
    p.add_argument(
        "--steps",
        type=positive_int,
        default=None,
        help="sampling steps, picked by --spacing; at most the model's T (default: T)",
    )
    p.add_argument(
        "--spacing",
        choices=tuple(s.value for s in Spacing),
        default=None,
        help=(
            "which of the model's timesteps --steps picks: even (evenly spaced), logsnr (uniform "
            "in log-SNR), karras (Karras et al.'s sigma spacing, rho = 7) (default: logsnr for "
            "dpmpp_3m, which needs it, even for the others)"
        ),
    )
    p.add_argument(
        "--eta",
        type=float,
        default=0.0,
        help="DDIM stochasticity: 0 deterministic, 1 DDPM-like (default: 0; ddim only)",
    )
    p.add_argument(
        "--device",
        default="cpu",
        help="cpu, cuda or cuda:N (cuda needs onnxruntime-gpu and CuPy) (default: cpu)",
    )
    p.add_argument("--seed", type=non_negative_int, default=0, help="noise seed (default: 0)")
    p.add_argument(
        "--shard",
        type=_shard,
        default=None,
        metavar="K/N",
        help="draw only shard K (from 0) of N of the run's samples, e.g. 0/4",
    )
    p.add_argument(
        "--batch-size",
        type=positive_int,
        default=64,
        help="samples per model call; bounds memory only, never changes a sample (default: 64)",
    )
    p.add_argument(
        "--out",
        default="samples.png",
        help="PNG grid to write; the .npz of images goes next to it (default: samples.png)",
    )
    p.add_argument("--nrow", type=positive_int, default=None, help="images per grid row")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    from ..runtime import OnnxDenoiser
    from ..runtime.sampling import check_output_path, sample_images, save_samples, shard_range
    from ..samplers import recommended_spacing

    if args.sampler != "ddim" and args.eta != 0:
        raise ValueError(
            f"--eta applies to --sampler ddim only, got --eta {args.eta} with {args.sampler}"
        )
    start, stop = shard_range(args.n, args.shard)  # checks n against the shard count
    png, npz = check_output_path(args.out)  # before the (long) sampling, not after
    denoiser = OnnxDenoiser(args.model, device=args.device)
    T = denoiser.diffusion.num_timesteps
    steps = args.steps if args.steps is not None else T
    if steps > T:
        raise ValueError(f"--steps {steps} is more than the model's T = {T} steps (choose 1..{T})")
    where = "" if args.shard is None else f" (shard {args.shard[0]}/{args.shard[1]})"
    print(
        f"{denoiser.path}: {denoiser.metadata.dtype} model, T = {T}, "
        f"{denoiser.diffusion.prediction} prediction, {denoiser.diffusion.variance} variance; "
        f"on {denoiser.device} via {denoiser.providers[0]}"
    )
    spacing = args.spacing or recommended_spacing(args.sampler).value
    print(
        f"sampling {stop - start} of {args.n} samples{where} with {args.sampler}, {steps} steps"
        + ("" if steps == T else f" ({spacing} spacing)")
    )
    images = sample_images(
        denoiser,
        args.n,
        sampler=args.sampler,
        steps=args.steps,
        spacing=spacing,
        eta=args.eta,
        seed=args.seed,
        shard=args.shard,
        batch_size=args.batch_size,
        progress=not args.no_progress,
    )
    import numpy as np

    info = {
        "sampler": args.sampler,
        "steps": steps,
        "spacing": spacing,
        "eta": args.eta,
        "n": args.n,
        "model": str(args.model),
    }
    save_samples(
        images,
        png,
        indices=np.arange(start, stop),
        seed=args.seed,
        info=info,
        nrow=args.nrow,
    )
    print(
        f"wrote {png} (grid of {images.shape[0]}) and {npz} (images, indices {start}..{stop - 1}, seed)"
    )
    return 0
