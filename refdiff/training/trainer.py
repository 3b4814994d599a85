"""The training loop: steps, logs, evaluations, sample grids and checkpoints of one run.

:class:`Trainer` puts the pieces together: the run folder (:class:`refdiff.runs.RunFolder`), the
data (:mod:`refdiff.training.data`), the state and its step (:class:`~refdiff.training.step.TrainState`), the
evaluation (:func:`refdiff.evaluation.evaluate`, on the EMA model) and the samplers
(:meth:`refdiff.Diffusion.sample`). Every process of a torchrun run holds a Trainer; rank 0
alone writes.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import array_api_compat.torch as xpt
import numpy as np
import torch

from .._deps import require
from .._io import check_output_folder, created_folder, write_text
from ..data import from_model_range
from ..evaluation.evaluate import evaluate
from ..images import save_grid, save_strip
from ..runs.folder import RunFolder, checkpoint_step, find_checkpoint, remove_stale_temporaries
from ..runs.train_config import TrainConfig, config_differences
from . import distributed
from .checkpoint import check_same_config, load_checkpoint, save_checkpoint
from .data import Purpose, derive_seed, load_training_data
from .step import TrainState

__all__ = ["EVAL_SEED", "Trainer", "train"]

#: Seed of the evaluation noise: fixed, so runs with different seeds are scored on the same draws.
EVAL_SEED = 0


def _bpd(ev: dict[str, Any]) -> str:
    """``4.0123``, or ``4.0123 ± 0.0456 (95 %: 3.93 .. 4.10)`` for a Monte-Carlo estimate."""
    if "eval_bpd_interval" not in ev:
        return f"{ev['eval_bpd']:.4f}"
    lo, hi = ev["eval_bpd_interval"]
    return f"{ev['eval_bpd']:.4f} ± {ev['eval_bpd_stderr']:.4f} (95 %: {lo:.4f} .. {hi:.4f})"


def _silent(_: str) -> None:
    pass


class Trainer:
    """Trains a U-Net as ``config`` says, writing everything under ``out_dir``.

    Parameters
    ----------
    config : TrainConfig
    out_dir : str or Path
        The run folder (config.json, metrics.jsonl, samples/, checkpoints/).
    resume : bool
        Continue from the latest checkpoint in ``out_dir`` (start fresh if there is none). The
        checkpoint's configuration must equal ``config`` except for the keys in
        :data:`refdiff.runs.train_config.RESUMABLE_KEYS` (``steps``, intervals, ...).
    device : str, optional
        ``"cpu"``, ``"cuda"`` or None (CUDA when available). Under torchrun every process takes
        its local GPU.
    progress : bool
        Show tqdm progress bars (rank 0 only).
    log : callable, optional
        Where messages go (default ``print`` on rank 0, nothing elsewhere).

    Attributes
    ----------
    state : TrainState
        The model, its EMA, the optimiser, the timestep sampler, the host generator and the step.

    Raises
    ------
    FileExistsError
        ``out_dir`` already holds a run and ``resume`` is False.
    ValueError
        For bad data, a run folder or checkpoint of another configuration, a corrupted checkpoint.
    """

    def __init__(
        self,
        config: TrainConfig,
        out_dir: str | os.PathLike[str],
        *,
        resume: bool = False,
        device: str | None = None,
        progress: bool = True,
        log: Callable[[str], None] | None = None,
    ) -> None:
        if not isinstance(config, TrainConfig):
            raise TypeError(f"config must be a TrainConfig, got {type(config).__name__}")
        self.config = cfg = config
        self.diffusion = cfg.diffusion
        self.folder = RunFolder(out_dir)
        self.out = self.folder.path
        self.ctx = distributed.setup(device)
        self.device = self.ctx.device
        self.progress = progress
        self._log = log if log is not None else (print if self.ctx.is_main else _silent)

        # The run folder is checked before the data are read: a wrong --out fails fast.
        existing = self._check_run_folder(resume)
        if self.ctx.is_main:
            check_output_folder(self.out, what="run folder")
        self.train_images, self.eval_images, self.data_name = load_training_data(cfg)
        ckpt = None
        if existing is not None:
            ckpt = load_checkpoint(existing)  # verifies every file before anything is applied
            check_same_config(ckpt.config, cfg, where=f"checkpoint {str(ckpt.path)!r}")
        self.state = TrainState(cfg, self.ctx, self.train_images, checkpoint=ckpt, log=self._log)
        # the losses since the last metrics line, kept in checkpoints so that the first line
        # after a resume averages the same steps as an uninterrupted run's
        self._loss_window: list[float] = []
        if ckpt is not None:
            self._loss_window = [float(v) for v in ckpt.extra.get("loss_window", [])]
            self._log(f"resumed from {ckpt.path} at step {ckpt.step}")

        if self.ctx.is_main:
            with created_folder(self.out):  # a failed first write leaves no empty run folder
                remove_stale_temporaries(self.out)
                write_text(self.folder.config_file, cfg.to_json() + "\n")
                self._trim_metrics()
        self.ctx.barrier()

    # ---------------------------------------------------------------------------- run folder

    def _check_run_folder(self, resume: bool) -> Path | None:
        """Refuse a folder holding another run; return the checkpoint to resume from, if any."""
        folder = self.folder
        if not folder.holds_run():
            if resume:
                raise FileNotFoundError(
                    f"nothing to resume: {str(self.out)!r} holds no run (no config.json, no "
                    "checkpoints/); check the path, or drop --resume to start a new run there"
                )
            return None
        old_cfg = folder.read_config() if folder.config_file.is_file() else None
        diffs = {} if old_cfg is None else config_differences(old_cfg, self.config)
        if diffs and resume:
            shown = "; ".join(f"{k}: {a!r} there, {b!r} now" for k, (a, b) in diffs.items())
            raise ValueError(
                f"cannot resume {str(self.out)!r}: it was written by another configuration; "
                f"differing keys: {shown}"
            )
        if diffs:
            keys = ", ".join(diffs)
            raise FileExistsError(
                f"{str(self.out)!r} already holds a different run (its config differs in: "
                f"{keys}); choose another --out"
            )
        ckpts = folder.checkpoints()
        if not resume:
            at = f" (last checkpoint at step {checkpoint_step(ckpts[-1])})" if ckpts else ""
            raise FileExistsError(
                f"{str(self.out)!r} already holds this run{at}; pass --resume to continue it, or "
                "choose another --out"
            )
        if not ckpts:
            self._log(f"no checkpoint in {self.out} yet: starting from step 0")
            return None
        return find_checkpoint(self.out)

    def _trim_metrics(self) -> None:
        """Drop metric lines past the current step (from a run interrupted after its checkpoint)."""
        path = self.folder.metrics_file
        if not path.is_file():
            return
        if self.state.step == 0:
            path.unlink()
            return
        keep = []
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                continue
            if rec.get("step", 0) <= self.state.step:
                keep.append(line)
        write_text(path, "".join(s + "\n" for s in keep))

    # ---------------------------------------------------------------------------- evaluation

    def _gather(self, a: np.ndarray) -> np.ndarray:
        """``a`` of every process, concatenated in rank order (shards differ by at most one)."""
        if not self.ctx.distributed:
            return a
        n = torch.tensor([a.shape[0]], device=self.device)
        sizes = distributed.all_gather_concat(n, self.ctx).tolist()
        pad = np.zeros((max(sizes), *a.shape[1:]), dtype=np.float64)
        pad[: a.shape[0]] = a
        gathered = distributed.all_gather_concat(
            torch.from_numpy(pad[None]).to(self.device), self.ctx
        )
        parts = gathered.cpu().numpy()
        return np.concatenate([parts[r, : sizes[r]] for r in range(len(sizes))])

    def evaluate(self) -> dict[str, Any]:
        """Held-out bits/dim of the EMA model and of the per-pixel baseline on the same images.

        The images are the first ``eval_examples`` of the held-out set, sharded over processes;
        the bound's noise depends on (EVAL_SEED, image index) only.
        """
        cfg = self.config
        held = self.eval_images[: cfg.eval_examples]
        full = cfg.eval_method == "full"
        report = evaluate(
            self.state.denoiser(),
            self.diffusion,
            held,
            train_uint8=self.train_images,
            full=full,
            num_draws=0 if full else cfg.eval_mc_draws,
            mc_timesteps="schedule",
            batch_size=cfg.eval_batch_size,
            seed=EVAL_SEED,
            progress=self.progress and self.ctx.is_main,
            shard=(self.ctx.rank, self.ctx.world_size),
            gather=self._gather,
            xp=xpt,
            device=self.device,
        )
        bpd = report["bits_per_dim"]
        result = {
            "eval_bpd": bpd["bpd_full"] if full else bpd["bpd_mc"],
            "baseline_bpd": report["baseline"]["bpd"],
            "eval_examples": len(held),
        }
        if not full:  # the Monte-Carlo error: how far the full bound of seed 0 may lie
            result["eval_bpd_stderr"] = bpd["bpd_mc_stderr"]
            result["eval_bpd_interval"] = bpd["bpd_mc_interval"]
        return result

    # ---------------------------------------------------------------------------- samples

    def sample(
        self, num: int | None = None, *, trajectory: int = 0
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """``num`` samples from the EMA model as uint8 images, and the x̂_0 trajectory of sample 0
        (``trajectory`` frames, None if 0)."""
        cfg, d = self.config, self.diffusion
        num = cfg.num_samples if num is None else num
        choice = d.choose_sampler(cfg.sampler, cfg.sample_steps)
        steps = choice.steps
        keep_at = (
            set(np.linspace(0, steps - 1, trajectory).round().astype(int).tolist())
            if trajectory
            else set()
        )
        frames: list[np.ndarray] = []
        tqdm = require("tqdm", "torch", "progress bars").tqdm
        bar = tqdm(
            total=steps,
            desc="sampling",
            unit="step",
            leave=False,
            disable=not (self.progress and self.ctx.is_main),
        )

        def callback(i: int, t: int, x: torch.Tensor, pred_x0: torch.Tensor) -> None:
            bar.update(1)
            if i in keep_at:
                frames.append(from_model_range(pred_x0[:1].float().cpu().numpy()))

        x = d.sample(
            self.state.denoiser(),
            num,
            sampler=choice,
            seed=derive_seed(cfg.seed, Purpose.SAMPLES),
            xp=xpt,
            dtype=torch.float32,
            device=self.device,
            callback=callback,
        )
        bar.close()
        images = from_model_range(x.float().cpu().numpy())
        traj = np.concatenate(frames) if frames else None
        return images, traj

    def save_samples(self) -> Path:
        """Write ``samples/samples-<step>.png`` (and the trajectory strip of sample 0)."""
        images, traj = self.sample(trajectory=10)
        scale = max(1, 32 // self.diffusion.image_shape[1])
        folder, step = self.folder.samples_dir, self.state.step
        path = save_grid(images, folder / f"samples-{step:08d}.png", scale=scale)
        if traj is not None:
            save_strip(traj, folder / f"trajectory-{step:08d}.png", scale=scale)
        return path

    def save_checkpoint(self) -> Path:
        return save_checkpoint(
            self.out,
            self.state.step,
            config=self.config,
            extra={
                "data": self.data_name,
                "world_size": self.ctx.world_size,
                "loss_window": list(self._loss_window),
            },
            keep=self.config.keep_checkpoints,
            **self.state.checkpoint_contents(),
        )

    # ---------------------------------------------------------------------------- the loop

    def _write_metrics(self, record: dict[str, Any]) -> None:
        if self.ctx.is_main:
            with open(self.folder.metrics_file, "a", encoding="utf-8") as f:
                f.write(json.dumps(record) + "\n")

    def _due(self, every: int, final: bool) -> bool:
        return final or (every > 0 and self.state.step % every == 0)

    def train(self, steps: int | None = None) -> dict[str, Any]:
        """Train up to ``steps`` (default ``config.steps``) total steps; return a summary.

        Evaluates, samples and checkpoints at their intervals and always at the end.
        """
        cfg, state = self.config, self.state
        target = cfg.steps if steps is None else int(steps)
        main = self.ctx.is_main
        summary: dict[str, Any] = {"out": str(self.out), "start_step": state.step}
        tqdm = require("tqdm", "torch", "progress bars").tqdm
        bar = tqdm(
            total=target,
            initial=min(state.step, target),
            desc="train",
            unit="step",
            dynamic_ncols=True,
            disable=not (self.progress and main),
        )
        window = self._loss_window
        window_time = 0.0  # the steps of this process timed since the last metrics line
        n_timed = 0
        train_time = 0.0
        trained = 0
        last_eval: dict[str, Any] = {}
        sample_path = ckpt_path = None
        while state.step < target:
            t0 = time.perf_counter()
            info = state.train_step()
            dt = time.perf_counter() - t0
            train_time += dt
            trained += 1
            window.append(info["loss"])
            n_timed += 1
            window_time += dt
            bar.update(1)
            final = state.step == target
            if self._due(cfg.log_every, final):
                ips = n_timed * cfg.batch_size / window_time if window_time > 0 else math.nan
                self._write_metrics(
                    {
                        "step": state.step,
                        "loss": float(np.mean(window)),
                        "lr": info["lr"],
                        "grad_norm": info["grad_norm"],
                        "images_per_s": ips,
                    }
                )
                bar.set_postfix(loss=f"{np.mean(window):.4f}", img_s=f"{ips:.0f}")
                window.clear()
                n_timed, window_time = 0, 0.0
            # the checkpoint first: a crash in the evaluation or the sampling loses no steps
            if self._due(cfg.checkpoint_every, final):
                if main:
                    ckpt_path = self.save_checkpoint()
                self.ctx.barrier()
            if self._due(cfg.eval_every, final):
                last_eval = self.evaluate()
                self._write_metrics({"step": state.step, **last_eval})
                if main:
                    (bar.write if self.progress else self._log)(
                        f"step {state.step}: held-out {_bpd(last_eval)} bits/dim "
                        f"(per-pixel baseline {last_eval['baseline_bpd']:.4f})"
                    )
            if self._due(cfg.sample_every, final):
                if main:
                    sample_path = self.save_samples()
                self.ctx.barrier()
        bar.close()
        summary.update(
            step=state.step,
            trained_steps=trained,
            train_time_s=train_time,
            images_per_s=(trained * cfg.batch_size / train_time)
            if train_time > 0
            else float("nan"),
            samples=None if sample_path is None else str(sample_path),
            checkpoint=None if ckpt_path is None else str(ckpt_path),
            metrics=str(self.folder.metrics_file),
            **last_eval,
        )
        return summary

    def close(self) -> None:
        distributed.teardown(self.ctx)


def train(
    config: TrainConfig,
    out_dir: str | os.PathLike[str],
    *,
    resume: bool = False,
    device: str | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Build a :class:`Trainer`, train to ``config.steps`` and return its summary."""
    trainer = Trainer(config, out_dir, resume=resume, device=device, progress=progress)
    try:
        return trainer.train()
    finally:
        trainer.close()
