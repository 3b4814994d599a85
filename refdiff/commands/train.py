"""``refdiff train``: train a diffusion model from the command line.

Imports nothing heavy at module level: torch is imported when the command runs.
"""

from __future__ import annotations

import argparse
import sys
import textwrap
from pathlib import Path
from typing import Any

from ..samplers import SAMPLERS
from ._argtypes import fraction, int_list, value_range

__all__ = ["PROCESS_FLAGS", "add_parser", "overrides_from_args", "resolve_with_flags", "run"]

_EPILOG = textwrap.dedent(
    """\
    examples:
      # the 8x8 digits on a CPU in a few minutes (the "digits" recipe: T=200, 2000 steps)
      refdiff train --data digits --out runs/digits

      # longer, then continue where it stopped
      refdiff train --data digits --steps 3000 --out runs/digits3k
      refdiff train --out runs/digits3k --resume --steps 6000

      # your own images: resized and centre-cropped to 32x32 RGB, 5% held out for evaluation
      refdiff train --data path/to/images --image-size 32 --preset cifar10 --out runs/mine

      # CIFAR-10 from the python-version tarball (nothing is downloaded), on a GPU, 2 processes
      torchrun --nproc_per_node 2 -m refdiff.cli train --data cifar-10-python.tar.gz \\
          --preset cifar10 --flip --bf16 --batch-size 128 --steps 800000 --out runs/cifar10

      # everything in a file (TOML or JSON); flags still override it
      refdiff train --config my_run.toml --out runs/from_file

    what you get in --out:
      config.json          the full configuration of the run
      metrics.jsonl        one JSON line per log interval: step, loss, lr, grad_norm,
                           images_per_s; and per evaluation: eval_bpd, baseline_bpd
      samples/*.png        sample grids from the EMA weights (and one denoising trajectory)
      checkpoints/ckpt-*/  safetensors + JSON checkpoints (the last --keep of them)

    See docs/training.md for the config file format and more.
    """
)


#: Flags that steer this process and are not part of a run's configuration.
PROCESS_FLAGS = frozenset(
    {"out", "resume", "config", "device", "threads", "no_progress", "print_config", "help"}
)

# flag destination -> dotted config key
_KEYS = {
    "data": "data",
    "image_size": "image_size",
    "holdout_fraction": "holdout_fraction",
    "value_range": "value_range",
    "npz_key": "npz_key",
    "flip": "flip",
    "preset": "unet.preset",
    "channels": "unet.in_channels",
    "base_channels": "unet.base_channels",
    "channel_mult": "unet.channel_mult",
    "num_res_blocks": "unet.num_res_blocks",
    "attention_resolutions": "unet.attention_resolutions",
    "dropout": "unet.dropout",
    "num_groups": "unet.num_groups",
    "schedule": "diffusion.schedule.name",
    "timesteps": "diffusion.schedule.T",
    "prediction": "diffusion.prediction",
    "variance": "diffusion.variance",
    "loss": "loss",
    "timestep_sampler": "timestep_sampler",
    "optimizer": "optimizer",
    "lr": "lr",
    "weight_decay": "weight_decay",
    "warmup_steps": "warmup_steps",
    "grad_clip": "grad_clip",
    "batch_size": "batch_size",
    "steps": "steps",
    "ema_rate": "ema_rate",
    "seed": "seed",
    "bf16": "bf16",
    "channels_last": "channels_last",
    "compile": "compile",
    "log_every": "log_every",
    "eval_every": "eval_every",
    "sample_every": "sample_every",
    "checkpoint_every": "checkpoint_every",
    "keep": "keep_checkpoints",
    "eval_examples": "eval_examples",
    "eval_batch_size": "eval_batch_size",
    "eval_method": "eval_method",
    "mc_draws": "eval_mc_draws",
    "sampler": "sampler",
    "sample_steps": "sample_steps",
    "num_samples": "num_samples",
    "recipe": "recipe",
}


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``train`` on the ``refdiff`` command's subparsers."""
    p = subparsers.add_parser(
        "train",
        help="train a diffusion model (PyTorch U-Net) on digits, images, .npz or CIFAR-10",
        description=(
            "Train a denoising diffusion model. The training step uses refdiff's own noising and "
            "losses on torch tensors; every few steps it can report held-out bits/dim (the "
            "variational bound, next to a per-pixel baseline) and write a grid of samples. "
            "Settings come from, lowest first: built-in defaults, a recipe (--data digits with "
            "the tiny preset uses the tested 'digits' recipe), --config FILE, then these flags. "
            "Only --out is required."
        ),
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        argument_default=argparse.SUPPRESS,
    )
    run_g = p.add_argument_group("the run")
    run_g.add_argument(
        "--out",
        required=True,
        metavar="DIR",
        help="run folder for config, metrics, samples and checkpoints (required)",
    )
    run_g.add_argument(
        "--resume",
        action="store_true",
        default=False,
        help="continue the run in --out from its latest checkpoint; flags you "
        "repeat must match it, except --steps and the reporting options",
    )
    run_g.add_argument(
        "--config",
        metavar="FILE",
        help="TOML or JSON file with any of the settings (see docs/training.md)",
    )
    run_g.add_argument(
        "--recipe",
        metavar="NAME",
        help="tested settings to start from: 'digits', or 'none' (default: "
        "'digits' for --data digits with the tiny preset)",
    )
    run_g.add_argument(
        "--device",
        default=None,
        metavar="DEV",
        help="cpu or cuda (default: cuda if available); torchrun gives each process its own GPU",
    )
    run_g.add_argument(
        "--threads",
        type=int,
        default=None,
        metavar="N",
        help="CPU threads for torch (default: torch's choice)",
    )
    run_g.add_argument(
        "--no-progress", action="store_true", default=False, help="no progress bars (for logs)"
    )
    run_g.add_argument(
        "--print-config",
        action="store_true",
        default=False,
        help="print the resolved configuration as JSON and exit",
    )

    data_g = p.add_argument_group("data")
    data_g.add_argument(
        "--data",
        metavar="SPEC",
        help="'digits' (8x8, shipped with scikit-learn), a folder of PNG/JPEG "
        "images, a .npz file (array 'images'), or a CIFAR-10 folder / "
        "cifar-10-python.tar.gz (default: digits)",
    )
    data_g.add_argument(
        "--image-size",
        type=int,
        metavar="N",
        help="image folders: resize and centre-crop to NxN (also the U-Net's size)",
    )
    data_g.add_argument(
        "--channels",
        type=int,
        choices=(1, 3),
        help="image channels: 1 grey, 3 RGB (image folders are converted)",
    )
    data_g.add_argument(
        "--holdout-fraction",
        type=fraction,
        metavar="F",
        help="folders/.npz: fraction held out for evaluation (default 0.05)",
    )
    data_g.add_argument(
        "--value-range",
        type=value_range,
        metavar="LO,HI",
        help=".npz files: the range the stored values lie in, mapped onto 0..255 (default: "
        "0,255 for integers, -1,1 for floats)",
    )
    data_g.add_argument(
        "--npz-key",
        metavar="KEY",
        help=".npz files: the array holding the images (default: 'images', or the only array)",
    )
    data_g.add_argument(
        "--flip",
        action=argparse.BooleanOptionalAction,
        help="random horizontal flips (default off; on for natural images)",
    )

    net = p.add_argument_group("network (U-Net of Ho et al. 2020)")
    net.add_argument(
        "--preset",
        metavar="NAME",
        help="'tiny' (8x8 grey, 0.25M parameters) or 'cifar10' (32x32 RGB, 35.7M); "
        "default tiny for digits, cifar10 otherwise",
    )
    net.add_argument("--base-channels", type=int, metavar="N", help="channels of the first level")
    net.add_argument(
        "--channel-mult",
        type=int_list,
        metavar="LIST",
        help="channel multiplier per resolution level, e.g. 1,2,2,2",
    )
    net.add_argument("--num-res-blocks", type=int, metavar="N", help="residual blocks per level")
    net.add_argument(
        "--attention-resolutions",
        type=int_list,
        metavar="LIST",
        help="resolutions (pixels) with self-attention, e.g. 16 ('' for none)",
    )
    net.add_argument("--dropout", type=float, metavar="P", help="dropout rate")
    net.add_argument("--num-groups", type=int, metavar="N", help="GroupNorm groups")

    diff = p.add_argument_group("diffusion")
    diff.add_argument(
        "--schedule",
        metavar="NAME",
        help="noise schedule: linear (Ho et al.), cosine (Nichol & Dhariwal), "
        "scaled_linear, quadratic, ...",
    )
    diff.add_argument(
        "--timesteps",
        type=int,
        metavar="T",
        help="number of diffusion steps T (default 1000; the digits recipe: 200)",
    )
    diff.add_argument(
        "--prediction",
        choices=("epsilon", "x0", "v"),
        help="what the network predicts (default epsilon)",
    )
    diff.add_argument(
        "--variance",
        choices=("fixed_small", "fixed_large", "learned", "learned_range"),
        help="reverse-process variance (default fixed_small; learned ones need "
        "--loss hybrid or vlb)",
    )

    obj = p.add_argument_group("objective and optimiser")
    obj.add_argument(
        "--loss",
        choices=("simple", "hybrid", "vlb"),
        help="simple: MSE (Ho et al.); hybrid: MSE + 0.001 L_vlb (improved DDPM); "
        "vlb: the bound alone (the digits recipe's choice, for bits/dim)",
    )
    obj.add_argument(
        "--timestep-sampler",
        choices=("uniform", "loss_second_moment"),
        help="how training timesteps are drawn (loss_second_moment: improved DDPM's "
        "importance sampling, for --loss vlb)",
    )
    obj.add_argument("--optimizer", choices=("adam", "adamw"))
    obj.add_argument("--lr", type=float, metavar="LR", help="learning rate")
    obj.add_argument("--weight-decay", type=float, metavar="W")
    obj.add_argument("--warmup-steps", type=int, metavar="N", help="linear learning-rate warm-up")
    obj.add_argument(
        "--grad-clip", type=float, metavar="NORM", help="clip the gradient norm (0: no clipping)"
    )
    obj.add_argument(
        "--batch-size",
        type=int,
        metavar="B",
        help="global batch size (split over torchrun processes)",
    )
    obj.add_argument("--steps", type=int, metavar="N", help="total optimiser steps")
    obj.add_argument("--ema-rate", type=float, metavar="R", help="EMA decay, e.g. 0.9999")
    obj.add_argument("--seed", type=int, metavar="S", help="seed of everything random")

    cuda = p.add_argument_group("CUDA only (ignored on CPU)")
    cuda.add_argument("--bf16", action=argparse.BooleanOptionalAction, help="bfloat16 autocast")
    cuda.add_argument(
        "--channels-last", action=argparse.BooleanOptionalAction, help="channels-last memory format"
    )
    cuda.add_argument("--compile", action=argparse.BooleanOptionalAction, help="torch.compile")

    rep = p.add_argument_group("evaluation, samples and checkpoints (0 = only at the end)")
    rep.add_argument("--log-every", type=int, metavar="N", help="steps between metric lines")
    rep.add_argument("--eval-every", type=int, metavar="N", help="steps between held-out bits/dim")
    rep.add_argument("--sample-every", type=int, metavar="N", help="steps between sample grids")
    rep.add_argument("--checkpoint-every", type=int, metavar="N", help="steps between checkpoints")
    rep.add_argument("--keep", type=int, metavar="K", help="checkpoints kept (the latest K)")
    rep.add_argument("--eval-examples", type=int, metavar="N", help="held-out images evaluated")
    rep.add_argument("--eval-batch-size", type=int, metavar="B")
    rep.add_argument(
        "--eval-method",
        choices=("full", "mc"),
        help="full: the bound over all T steps; mc: unbiased estimate (--mc-draws)",
    )
    rep.add_argument(
        "--mc-draws", type=int, metavar="N", help="timesteps per image for --eval-method mc"
    )
    rep.add_argument(
        "--sampler",
        choices=sorted(SAMPLERS),
        help="sampler of the sample grids (refdiff.SAMPLERS; default ddpm)",
    )
    rep.add_argument(
        "--sample-steps",
        type=int,
        metavar="N",
        help="sampler steps (respaced schedule; default all T)",
    )
    rep.add_argument("--num-samples", type=int, metavar="N", help="images per sample grid")
    p.set_defaults(func=run)
    return p


def _set(d: dict[str, Any], dotted: str, value: Any) -> None:
    *parents, last = dotted.split(".")
    for k in parents:
        d = d.setdefault(k, {})
    d[last] = value


def overrides_from_args(args: argparse.Namespace) -> dict[str, Any]:
    """The nested config overrides given on the command line (flags not given are absent)."""
    given = vars(args)
    out: dict[str, Any] = {}
    for dest, key in _KEYS.items():
        if dest in given:
            _set(out, key, given[dest])
    if "image_size" in given:
        _set(out, "unet.image_size", given["image_size"])
    if "grad_clip" in given and given["grad_clip"] == 0:
        out["grad_clip"] = None
    return out


def _flag(dest: str) -> str:
    return "--" + dest.replace("_", "-")


def _shown(args: argparse.Namespace, dests: list[str]) -> str:
    def value(v: Any) -> str:
        if isinstance(v, bool):
            return ""
        if isinstance(v, (list, tuple)):
            return " " + ",".join(map(str, v))
        return f" {v}"

    return " ".join(_flag(d) + value(getattr(args, d)) for d in dests)


def resolve_with_flags(args: argparse.Namespace) -> Any:
    """The run's configuration: the file (``--config``, or the run's config.json with ``--resume``)
    overridden by every setting flag given, by one rule.

    A flag replaces its key of the file, and the file's values that follow from it are derived
    again (``--preset`` replaces the file's whole network; see
    :func:`refdiff.runs.resolve_config`). A flag that cannot take effect is refused by name:
    ``--recipe`` over a file that sets every key the recipe would set, and, with ``--resume``,
    any flag that would change what the run trains (everything but ``RESUMABLE_KEYS``: the
    length of the run and what it reports).
    """
    from ..runs.train_config import (
        RESUMABLE_KEYS,
        applied_recipe,
        config_differences,
        load_config_file,
        resolve_config,
    )

    out = Path(args.out)
    source: str | None = getattr(args, "config", None)
    if args.resume and source is None and (out / "config.json").is_file():
        source = str(out / "config.json")
    base = None if source is None else load_config_file(source)
    overrides = overrides_from_args(args)
    given = [d for d in _KEYS if hasattr(args, d)]
    try:
        config = resolve_config(base, overrides)
    except (ValueError, TypeError) as exc:
        if base is None or not given:
            raise
        raise type(exc)(f"{_shown(args, given)} with {source}: {exc}") from None
    if base is None:
        return config
    if "recipe" in given:
        without = {k: v for k, v in overrides.items() if k != "recipe"}
        same = resolve_config(base, without).to_dict() == config.to_dict()
        if same and applied_recipe(base, without) != applied_recipe(base, overrides):
            raise ValueError(
                f"--recipe {args.recipe} changes nothing: a recipe only fills in what {source} "
                "leaves out, and the file sets every key the recipe sets; give the values you "
                "want as flags or in the file"
            )
    if args.resume:
        changed = config_differences(resolve_config(base), config, ignore=RESUMABLE_KEYS)
        if changed:
            tops = {k.split(".")[0] for k in changed}
            culprits = [d for d in given if _KEYS[d].split(".")[0] in tops] or given
            keys = "; ".join(f"{k}: {a!r} -> {b!r}" for k, (a, b) in changed.items())
            allowed = sorted(_flag(d) for d in _KEYS if _KEYS[d] in RESUMABLE_KEYS)
            raise ValueError(
                f"cannot resume {str(out)!r} with {_shown(args, culprits)}: it would change "
                f"what the run trains ({keys}); a resumed run may change only "
                f"{', '.join(allowed)}; start a new run with another --out"
            )
    return config


def run(args: argparse.Namespace) -> int:
    """Run ``refdiff train`` (returns the exit status)."""
    import torch

    from ..training.trainer import Trainer

    out = Path(args.out)
    config = resolve_with_flags(args)
    if args.print_config:
        print(config.to_json())
        return 0
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    trainer = Trainer(
        config, out, resume=args.resume, device=args.device, progress=not args.no_progress
    )
    try:
        summary = trainer.train()
    except FloatingPointError as exc:  # the loss diverged: a message, not a traceback
        if trainer.ctx.is_main:
            print(f"refdiff train: error: {exc}", file=sys.stderr)
        return 1
    finally:
        trainer.close()
    if trainer.ctx.is_main:
        _report(summary, config.batch_size)
    return 0


def _report(s: dict[str, Any], batch: int) -> None:
    trained = s.get("trained_steps", 0)
    if trained:
        print(
            f"trained steps {s['start_step']}..{s['step']} in {s['train_time_s']:.0f} s "
            f"({s['images_per_s']:.0f} images/s, batch {batch})"
        )
    else:
        print(f"nothing to do: the run is already at step {s['step']} (raise --steps)")
    if "eval_bpd" in s:
        extra = ""
        if "eval_bpd_interval" in s:
            lo, hi = s["eval_bpd_interval"]
            extra = f" ± {s['eval_bpd_stderr']:.4f} (Monte-Carlo; 95 %: {lo:.4f} .. {hi:.4f})"
        print(
            f"held-out bits/dim: {s['eval_bpd']:.4f}{extra}  (per-pixel baseline "
            f"{s['baseline_bpd']:.4f}, {s['eval_examples']} images)"
        )
    out = Path(s["out"])
    print("files:")
    print(f"  config       {out / 'config.json'}")
    if Path(s["metrics"]).is_file():
        print(f"  metrics      {s['metrics']}")
    if s.get("samples"):
        print(f"  samples      {s['samples']}")
    if s.get("checkpoint"):
        print(f"  checkpoint   {s['checkpoint']}")
