"""Training throughput: images/s of refdiff's real training step (Trainer.train_step).

Times the full step (host batch and timestep draws, counter-based noise, q_sample, U-Net forward
and backward, the core's loss, clipping, Adam, EMA) after warm-up steps:

  * CPU: the ``tiny`` preset on the digits, the "digits" recipe's batch size, for each thread
    count in --threads (default 2 as well as 1: on a busy machine one OpenMP thread can beat two);
  * CUDA (if present): the ``cifar10`` preset (35.7 M parameters) on synthetic 32x32 RGB images,
    fp32 and bf16 + channels-last.

Prints a table; asserts nothing.

    python benchmarks/train.py [--steps 20] [--warmup 5] [--threads 1,2]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from refdiff.runs import resolve_config
from refdiff.training.trainer import Trainer


def _throughput(overrides: dict, device: str, steps: int, warmup: int) -> tuple[float, float]:
    with tempfile.TemporaryDirectory() as tmp:
        cfg = resolve_config(None, overrides)
        trainer = Trainer(cfg, Path(tmp) / "run", device=device, progress=False, log=lambda s: None)
        for _ in range(warmup):
            trainer.state.train_step()
        if device == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(steps):
            trainer.state.train_step()  # returns a Python float: synchronises every step
        dt = time.perf_counter() - t0
        trainer.close()
    return steps * cfg.batch_size / dt, 1000 * dt / steps


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--steps", type=int, default=20, help="timed steps per row")
    ap.add_argument("--warmup", type=int, default=5, help="untimed steps first")
    ap.add_argument("--threads", default="2,1", help="CPU thread counts to try")
    args = ap.parse_args()

    rows = []
    digits = {"data": "digits", "unet": {"preset": "tiny"}}
    batch = resolve_config(None, digits).batch_size
    for n in (int(v) for v in args.threads.split(",")):
        torch.set_num_threads(n)
        ips, ms = _throughput(digits, "cpu", args.steps, args.warmup)
        rows.append(
            ("cpu", f"{n} thread{'s' * (n > 1)}", "tiny", "digits 8x8", batch, "fp32", ips, ms)
        )

    if torch.cuda.is_available():
        name = torch.cuda.get_device_name()
        with tempfile.TemporaryDirectory() as tmp:
            data = Path(tmp) / "synthetic.npz"
            rng = np.random.default_rng(0)
            np.savez(data, images=rng.integers(0, 256, (2048, 3, 32, 32), dtype=np.uint8))
            for bf16 in (False, True):
                over = {
                    "data": str(data),
                    "recipe": "none",
                    "unet": {"preset": "cifar10"},
                    "batch_size": 128,
                    "bf16": bf16,
                    "channels_last": bf16,
                }
                ips, ms = _throughput(over, "cuda", args.steps, args.warmup)
                prec = "bf16+cl" if bf16 else "fp32"
                rows.append(("cuda", name, "cifar10", "synthetic 32x32", 128, prec, ips, ms))

    print(f"refdiff training throughput (torch {torch.__version__}, {os.cpu_count()} CPUs)")
    head = ("device", "where", "preset", "data", "batch", "precision", "images/s", "ms/step")
    fmt = "{:<6} {:<22} {:<8} {:<16} {:>5} {:<9} {:>9} {:>8}"
    print(fmt.format(*head))
    for dev, where, preset, data, b, prec, ips, ms in rows:
        print(fmt.format(dev, where[:22], preset, data, b, prec, f"{ips:.0f}", f"{ms:.1f}"))


if __name__ == "__main__":
    main()
