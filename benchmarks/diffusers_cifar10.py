"""The DDPM paper's CIFAR-10 model as a diffusers pipeline folder, through refdiff's command line:
export to ONNX, then sample and eval in processes where PyTorch cannot be imported.

The folder is google/ddpm-cifar10-32's layout and configs, written here by hand (UNet2DModel with
block_out_channels (128, 256, 256, 256), two ResNet blocks per level, attention at 16x16; the
DDPMScheduler of Ho et al.: linear betas 1e-4 .. 0.02, T = 1000, fixed_small, clipping) with
random weights: nothing is downloaded. The images scored by ``refdiff eval`` are random 8-bit
32x32 RGB images in an .npz. The script prints each command and its output with its wall time:
the transcript of docs/diffusers.md.

    python benchmarks/diffusers_cifar10.py --out /tmp/ddpm-cifar10-demo
    python benchmarks/diffusers_cifar10.py --out DIR --fp16     # also the float16 export

Needs refdiff[torch,onnx,diffusers] for the export; sample and eval run with ``import torch``
failing (``sys.modules["torch"] = None`` before refdiff is imported).
"""

from __future__ import annotations

import argparse
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

#: google/ddpm-cifar10-32's unet/config.json (diffusers' port of Ho et al.'s CIFAR-10 model).
UNET_CONFIG = {
    "sample_size": 32,
    "in_channels": 3,
    "out_channels": 3,
    "layers_per_block": 2,
    "block_out_channels": (128, 256, 256, 256),
    "down_block_types": ("DownBlock2D", "AttnDownBlock2D", "DownBlock2D", "DownBlock2D"),
    "up_block_types": ("UpBlock2D", "UpBlock2D", "AttnUpBlock2D", "UpBlock2D"),
    "attention_head_dim": None,
    "downsample_padding": 0,
    "flip_sin_to_cos": False,
    "freq_shift": 1,
    "norm_eps": 1e-6,
    "norm_num_groups": 32,
    "act_fn": "silu",
    "center_input_sample": False,
    "mid_block_scale_factor": 1,
    "time_embedding_type": "positional",
}
#: its scheduler/scheduler_config.json
SCHEDULER_CONFIG = {
    "num_train_timesteps": 1000,
    "beta_start": 0.0001,
    "beta_end": 0.02,
    "beta_schedule": "linear",
    "trained_betas": None,
    "variance_type": "fixed_small",
    "clip_sample": True,
}

# Runs the refdiff command line in a process where `import torch` raises ImportError.
NO_TORCH = (
    "import sys; sys.modules['torch'] = None; from refdiff.cli import main; "
    "code = main(sys.argv[1:]); "
    "assert sys.modules['torch'] is None, 'torch was imported'; sys.exit(code)"
)


def make_pipeline(folder: Path, seed: int = 0) -> Path:
    """Write the pipeline folder (random weights) with diffusers' save_pretrained."""
    import torch
    from diffusers import DDPMPipeline, DDPMScheduler, UNet2DModel

    torch.manual_seed(seed)
    unet = UNet2DModel(**UNET_CONFIG)
    pipe = DDPMPipeline(unet=unet, scheduler=DDPMScheduler(**SCHEDULER_CONFIG))
    pipe.save_pretrained(str(folder))
    return folder


def make_images(path: Path, n: int = 8, seed: int = 0) -> Path:
    """n random 8-bit RGB images [n, 3, 32, 32] under the key 'images'."""
    rng = np.random.default_rng(seed)
    np.savez(path, images=rng.integers(0, 256, (n, 3, 32, 32), dtype=np.uint8))
    return path


def run(argv: list[str], *, torch_blocked: bool, cwd: Path) -> float:
    """Run ``refdiff argv`` and print the command and its output; the wall time in seconds."""
    shown = "refdiff " + shlex.join(argv)
    print(f"$ {shown}" + ("    # PyTorch blocked" if torch_blocked else ""), flush=True)
    cmd = (
        [sys.executable, "-c", NO_TORCH, *argv]
        if torch_blocked
        else [
            sys.executable,
            "-m",
            "refdiff.cli",
            *argv,
        ]
    )
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    seconds = time.perf_counter() - t0
    print(proc.stdout.rstrip())
    print(f"[exit {proc.returncode}, {seconds:.1f} s]\n", flush=True)
    if proc.returncode != 0:
        raise SystemExit(f"{shown} failed with exit code {proc.returncode}")
    return seconds


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, required=True, help="a folder for the files")
    ap.add_argument("--fp16", action="store_true", help="also export and check a float16 file")
    ap.add_argument("--threads", type=int, default=1, help="threads of every process")
    args = ap.parse_args()
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = str(args.threads)
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    import diffusers

    t0 = time.perf_counter()
    make_pipeline(out / "ddpm-cifar10")
    make_images(out / "cifar-like.npz")
    print(
        f"# diffusers {diffusers.__version__}: wrote ddpm-cifar10/ (DDPMPipeline, random weights) "
        f"and cifar-like.npz (8 random 32x32 RGB images) in {time.perf_counter() - t0:.1f} s\n"
    )
    run(["export", "ddpm-cifar10", "--out", "cifar10.onnx"], torch_blocked=False, cwd=out)
    if args.fp16:
        run(
            ["export", "ddpm-cifar10", "--out", "cifar10-fp16.onnx", "--fp16"],
            torch_blocked=False,
            cwd=out,
        )
    run(
        [
            "sample",
            "cifar10.onnx",
            "--n",
            "4",
            "--sampler",
            "ddim",
            "--steps",
            "10",
            "--out",
            "samples.png",
            "--no-progress",
        ],
        torch_blocked=True,
        cwd=out,
    )
    run(
        [
            "eval",
            "cifar10.onnx",
            "--data",
            "cifar-like.npz",
            "--split",
            "all",
            "--no-full",
            "--mc-draws",
            "2",
            "--n-images",
            "4",
            "--out",
            "eval.json",
            "--no-progress",
        ],
        torch_blocked=True,
        cwd=out,
    )


if __name__ == "__main__":
    main()
