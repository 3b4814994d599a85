"""``refdiff sample``: images from any model refdiff opens, on CPU or GPU; from an exported ONNX
file without PyTorch.

Imports nothing heavy at module level (``refdiff --help`` stays instant); onnxruntime, and CuPy on
CUDA, are imported when the command runs. Never imports torch for an ONNX file.
"""

from __future__ import annotations

import argparse
from typing import Any

from ..samplers import DEFAULT_SAMPLER, SAMPLERS
from ._argtypes import non_negative_int, positive_int, shard
from ._sampler_args import add_sampler_arguments, choose_sampler, sampler_table

__all__ = ["add_parser", "run"]

_DEFAULT = SAMPLERS[DEFAULT_SAMPLER]

EPILOG = f"""\
examples:
  refdiff sample model.onnx --n 64 --out samples.png
      64 samples with the default sampler ({DEFAULT_SAMPLER}, {_DEFAULT.default_steps} steps: as good
      as DDPM over every step on the digits model, docs/samplers.md), on the CPU; writes
      samples.png (a grid) and samples.npz (the uint8 images, their global indices, the seed)
  refdiff sample model.onnx --n 64 --sampler ddpm --out samples.png
      ancestral DDPM over all the model's steps, the reference
  refdiff sample model.onnx --n 64 --sampler ddim --steps 50 --eta 0.5
      DDIM with 50 evenly spaced steps and some noise
  refdiff sample model.onnx --n 64 --sampler dpmpp_3m --steps 10
      DPM-Solver++(3M) with 10 network calls, on steps uniform in log-SNR (its spacing)
  refdiff sample runs/digits --n 16
      a training run folder (or a diffusers pipeline folder) works too, through PyTorch
  refdiff sample model.onnx --n 50000 --device cuda --batch-size 500
      on an NVIDIA GPU (pip install 'refdiff[cuda12]' or 'refdiff[cuda13]'); the update of
      every sampler but heun runs as one fused CUDA kernel per step
  refdiff sample model.onnx --n 50000 --shard 2/8 --out s.png
      shard 2 (counted from 0) of 8: samples 12500..18749 of the 50000-sample run, written to
      s-shard02of08.png/.npz; the 8 shards together are exactly the unsharded run, whatever
      --batch-size each uses (refdiff eval --samples 's-shard*.npz' joins and checks them)
  torchrun --nproc_per_node 8 -m refdiff.cli sample model.onnx --n 50000 --shard auto
      each process its shard from the launcher (a Slurm array works too: docs/scale.md)

Every sample is a pure function of (--seed, its global index): batch size, shards and device
change nothing but the speed (and float rounding between CPU and GPU).

{sampler_table()}
"""


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "sample",
        help="sample images from a model (an exported ONNX file needs no PyTorch)",
        description=(
            "Draw samples from a model: an .onnx file exported by `refdiff export` (it carries "
            "its diffusion settings, so nothing else is needed: no checkpoint, no PyTorch), a "
            "training run folder or a diffusers pipeline folder (through PyTorch). Runs on the "
            "CPU (onnxruntime) or on an NVIDIA GPU (onnxruntime-gpu + CuPy)."
        ),
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "model",
        help="an .onnx file written by `refdiff export`, a training run folder or checkpoint, "
        "or a diffusers pipeline folder",
    )
    p.add_argument(
        "--n",
        "--num-samples",
        type=positive_int,
        default=64,
        help="samples in the whole run (default: 64); under torchrun spell it --num-samples "
        "(torchrun takes --n for an abbreviation of its own options)",
    )
    add_sampler_arguments(p)
    p.add_argument(
        "--device",
        default="cpu",
        help="cpu, cuda or cuda:N (cuda needs onnxruntime-gpu and CuPy) (default: cpu)",
    )
    p.add_argument("--seed", type=non_negative_int, default=0, help="noise seed (default: 0)")
    p.add_argument(
        "--shard",
        type=shard,
        default=None,
        metavar="K/N|auto",
        help="draw only shard K (from 0) of N of the run's samples, e.g. 0/4; 'auto': from the "
        "launcher (torchrun's RANK/WORLD_SIZE, a Slurm array, srun, MPI; docs/scale.md). "
        "Writes OUT-shardKKofNN.png/.npz",
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
    import numpy as np

    from ..models import open_model
    from ..runtime.sampling import check_output_path, sample_images, save_samples, shard_range
    from ..runtime.shards import launcher_device, sample_record, shard_glob, shard_path

    start, stop = shard_range(args.n, args.shard)  # checks n against the shard count
    # before the (long) sampling, not after; a shard's files carry it in their name
    png, npz = check_output_path(shard_path(args.out, args.shard))
    args.device = launcher_device(args.device)  # cuda under torchrun: cuda:LOCAL_RANK
    model = open_model(args.model, device=args.device)
    if model.format in ("generator", "step"):
        return _run_generator(args, model, png, start, stop)
    choice = choose_sampler(args, model.diffusion)
    den = model.denoiser
    where = f"ONNX via {den.providers[0]}" if model.format == "onnx" else "PyTorch"
    print(f"{model.describe()}; on {args.device} ({where})")
    shard = "" if args.shard is None else f" (shard {args.shard[0]}/{args.shard[1]})"
    print(
        f"sampling {stop - start} of {args.n} samples{shard} with {choice.describe()}: "
        f"{choice.network_calls} network calls per sample"
    )
    images = sample_images(
        den,
        args.n,
        sampler=choice,
        seed=args.seed,
        shard=args.shard,
        batch_size=args.batch_size,
        progress=not args.no_progress,
    )
    info = sample_record(
        choice, n=args.n, shard=args.shard, model_fingerprint=model.fingerprint, model=args.model
    )
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
    if args.shard is not None:
        print(f"join the shards: refdiff eval MODEL --samples '{shard_glob(npz, args.shard)}'")
    return 0


def _run_generator(args: argparse.Namespace, model: Any, png: Any, start: int, stop: int) -> int:
    """A generator file runs as it is: its sampler, steps and options are inside the graph."""
    import numpy as np

    from ..runtime.sampling import save_samples
    from ..runtime.shards import sample_record
    from ._sampler_args import sampler_flags_given

    if model.format == "step":
        raise ValueError(
            f"{args.model!r} is a step file (one sampler step per call, for hosts that show "
            "progress); `refdiff sample` runs the generator file beside it"
        )
    meta = model.generator.metadata
    given = sampler_flags_given(args)
    if given:
        raise ValueError(
            f"{args.model!r} is a generator file whose sampler is built in ({meta.describe()}); "
            f"{', '.join(given)} cannot change it: export another generator, or sample the "
            "denoiser file"
        )
    print(model.describe())
    shard = "" if args.shard is None else f" (shard {args.shard[0]}/{args.shard[1]})"
    print(f"sampling {stop - start} of {args.n} samples{shard} with the file's sampler")
    from tqdm.auto import tqdm

    with tqdm(total=stop - start, unit="sample", disable=args.no_progress) as bar:
        images = model.generator.sample_images(
            args.n,
            seed=args.seed,
            shard=args.shard,
            batch_size=args.batch_size,
            progress=lambda done: bar.update(done - bar.n),
        )
    info = sample_record(
        meta.sampler,
        n=args.n,
        shard=args.shard,
        model_fingerprint=model.fingerprint,
        model=args.model,
    )
    save_samples(
        images, png, indices=np.arange(start, stop), seed=args.seed, info=info, nrow=args.nrow
    )
    print(f"wrote {png} (grid of {images.shape[0]}) and {png.with_suffix('.npz')}")
    return 0
