"""The training loop: the core's noising and losses applied to torch tensors.

One step, for the global batch of B examples at step s (this process computes its slice):

1. images: positions s·B … s·B+B-1 of the data stream, which is the concatenation of one seeded
   permutation of the training set per epoch (a pure function of (seed, epoch));
2. t, w: drawn on the host from the timestep sampler with a seeded NumPy generator (every process
   draws the whole global batch and keeps its slice, so all stay in step);
3. ε = :func:`refdiff.standard_normal` (seed, global example index j, step s): the counter-based
   noise of the core, so the noise of example j at step s does not depend on the world size;
4. x_t = :func:`refdiff.q_sample`, out = model(x_t, t), and the loss
   ``(refdiff.training_losses(...).loss * w).mean()``: the same functions that the property
   tests check, called on torch tensors through array-api-compat;
5. backward (DDP averages the gradients), gradient-norm clipping, linear LR warm-up,
   Adam/AdamW, EMA update, timestep-sampler update with the losses of the global batch.

Evaluation computes held-out bits/dim with :func:`refdiff.variational_bound` (or
:func:`refdiff.variational_bound_mc`) on the EMA model and the bits/dim of the per-pixel
:class:`refdiff.baseline.IndependentPixelModel` on the same images; samples come from
:func:`refdiff.ddpm_sample` / :func:`refdiff.ddim_sample` on the EMA model.
"""

from __future__ import annotations

import contextlib
import copy
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
from tqdm.auto import tqdm

from ..baseline import IndependentPixelModel
from ..bound import variational_bound, variational_bound_mc
from ..data import from_model_range, load_dataset, random_horizontal_flip, to_model_range
from ..forward import q_sample
from ..images import save_grid, save_strip
from ..losses import training_losses
from ..nn.unet import UNet
from ..noise import standard_normal
from ..samplers import ddim_sample, ddpm_sample
from ..schedules import space_timesteps
from ..timesteps import LossSecondMomentSampler, make_timestep_sampler
from . import distributed
from .checkpoint import (
    check_same_config,
    latest_checkpoint,
    list_checkpoints,
    load_checkpoint,
    remove_stale_temporaries,
    save_checkpoint,
)
from .config import TrainConfig, config_differences

__all__ = ["EVAL_SEED", "Trainer", "derive_seed", "load_training_data", "train"]

#: Seed of the evaluation noise: fixed, so runs with different seeds are scored on the same draws.
EVAL_SEED = 0

# Purposes of derived seeds (one independent stream each).
_INIT, _DATA, _HOST, _NOISE, _DROPOUT, _SAMPLES, _HOLDOUT = range(1, 8)


def derive_seed(*words: int) -> int:
    """A 64-bit seed derived from integers (NumPy's SeedSequence hashing)."""
    return int(np.random.SeedSequence([int(w) for w in words]).generate_state(1, np.uint64)[0])


# --------------------------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------------------------


def _has_test_split(spec: str) -> bool:
    if spec == "digits":
        return True
    p = Path(spec)
    if p.is_file():
        return p.name.lower().endswith((".tar.gz", ".tgz", ".tar"))
    if p.is_dir():
        for folder in (p, p / "cifar-10-batches-py"):
            if (folder / "test_batch").is_file() or (folder / "data_batch_1").is_file():
                return True
    return False


def load_training_data(config: TrainConfig) -> tuple[np.ndarray, np.ndarray, str]:
    """``(train_uint8, heldout_uint8, name)`` for a config, checked against the U-Net's shape.

    Digits and CIFAR-10 use their train and test splits; other sources hold out
    ``holdout_fraction`` of their images (a fixed permutation, the same for every seed).
    """
    spec = config.data
    c = config.unet.in_channels
    try:
        if _has_test_split(spec):
            train = load_dataset(spec, split="train")
            held = load_dataset(spec, split="test")
            name = train.name
            train_u8, held_u8 = train.images, held.images
        else:
            ds = load_dataset(
                spec,
                split="all",
                image_size=config.image_size,
                channels=c if c in (1, 3) else 3,
            )
            n = len(ds)
            n_held = max(1, round(config.holdout_fraction * n))
            if n - n_held < 1:
                raise ValueError(
                    f"{spec!r} holds {n} image(s): too few to hold {n_held} out for evaluation "
                    "and train on the rest"
                )
            perm = np.random.default_rng(derive_seed(_HOLDOUT)).permutation(n)
            held_u8 = ds.images[np.sort(perm[:n_held])]
            train_u8 = ds.images[np.sort(perm[n_held:])]
            name = ds.name
    except (ValueError, FileNotFoundError) as exc:
        raise type(exc)(f"cannot load the training data {spec!r}: {exc}") from exc
    got = tuple(train_u8.shape[1:])
    if got != config.image_shape:
        raise ValueError(
            f"the data {name!r} are {got[0]}x{got[1]}x{got[2]} (channels x height x width) but the "
            f"U-Net expects {'x'.join(map(str, config.image_shape))}: pick a matching --preset, "
            "set unet.in_channels / unet.image_size, or for an image folder pass --image-size "
            "and --channels"
        )
    return np.ascontiguousarray(train_u8), np.ascontiguousarray(held_u8), name


# --------------------------------------------------------------------------------------------
# The trainer
# --------------------------------------------------------------------------------------------


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
        :data:`refdiff.training.config.RESUMABLE_KEYS` (``steps``, intervals, ...).
    device : str, optional
        ``"cpu"``, ``"cuda"`` or None (CUDA when available). Under torchrun every process takes
        its local GPU.
    progress : bool
        Show tqdm progress bars (rank 0 only).
    log : callable, optional
        Where messages go (default ``print`` on rank 0, nothing elsewhere).

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
        self.out = Path(out_dir)
        self.ctx = distributed.setup(device)
        self.device = self.ctx.device
        self.progress = progress
        self._log = log if log is not None else (print if self.ctx.is_main else _silent)
        cfg_batch = cfg.batch_size
        self.local = self.ctx.local_slice(cfg_batch)

        on_cuda = self.device.type == "cuda"
        for flag in ("bf16", "channels_last", "compile"):
            if getattr(cfg, flag) and not on_cuda:
                self._log(f"note: {flag} is only used on CUDA; ignored on {self.device.type}")
        self.use_bf16 = cfg.bf16 and on_cuda
        self.channels_last = cfg.channels_last and on_cuda

        # The run folder is checked before the data are read: a wrong --out fails fast.
        existing = self._check_run_folder(resume)

        self.train_images, self.eval_images, self.data_name = load_training_data(cfg)
        self.schedule = cfg.diffusion.build_schedule()
        self.T = self.schedule.num_timesteps

        torch.manual_seed(derive_seed(cfg.seed, _INIT))
        self.model = UNet(cfg.unet).to(self.device)
        if self.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.ema = copy.deepcopy(self.model).eval().requires_grad_(False)
        opt_cls = torch.optim.AdamW if cfg.optimizer == "adamw" else torch.optim.Adam
        self.optimizer = opt_cls(self.model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        self.sampler = make_timestep_sampler(cfg.timestep_sampler, self.T)
        self.rng = np.random.default_rng(derive_seed(cfg.seed, _HOST))
        self.noise_seed = derive_seed(cfg.seed, _NOISE)
        self.step = 0
        self._perm_cache: dict[int, np.ndarray] = {}
        self.checkpoint_loaded: Path | None = None

        if existing is not None:
            self._restore(existing)

        self.ddp_model: torch.nn.Module = self.model
        if self.ctx.distributed:
            from torch.nn.parallel import DistributedDataParallel

            ids = [self.device.index] if on_cuda else None
            self.ddp_model = DistributedDataParallel(self.model, device_ids=ids)
        self.forward_model: Any = self.ddp_model
        if cfg.compile and on_cuda:
            self.forward_model = torch.compile(self.ddp_model)

        self.baseline = IndependentPixelModel().fit(self.train_images)
        self.metrics_path = self.out / "metrics.jsonl"
        if self.ctx.is_main:
            self.out.mkdir(parents=True, exist_ok=True)
            remove_stale_temporaries(self.out)
            (self.out / "config.json").write_text(cfg.to_json() + "\n", encoding="utf-8")
            self._trim_metrics()
        self.ctx.barrier()

    # ---------------------------------------------------------------------------- run folder

    def _check_run_folder(self, resume: bool) -> Path | None:
        """Refuse a folder holding another run; return the checkpoint to resume from, if any."""
        cfg_file = self.out / "config.json"
        holds_run = cfg_file.is_file() or bool(list_checkpoints(self.out))
        if not holds_run:
            return None
        old_cfg = None
        if cfg_file.is_file():
            try:
                old_cfg = TrainConfig.from_json(cfg_file.read_text(encoding="utf-8"))
            except (ValueError, TypeError) as exc:
                raise ValueError(f"{str(cfg_file)!r} is not a readable run config: {exc}") from exc
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
        if not resume:
            ckpts = list_checkpoints(self.out)
            at = f" (last checkpoint at step {_step_of(ckpts[-1])})" if ckpts else ""
            raise FileExistsError(
                f"{str(self.out)!r} already holds this run{at}; pass --resume to continue it, or "
                "choose another --out"
            )
        try:
            return latest_checkpoint(self.out)
        except FileNotFoundError:
            self._log(f"no checkpoint in {self.out} yet: starting from step 0")
            return None

    def _restore(self, path: Path) -> None:
        ckpt = load_checkpoint(path)  # verifies every file before anything is applied
        check_same_config(ckpt.config, self.config, where=f"checkpoint {str(ckpt.path)!r}")
        self.model.load_state_dict(ckpt.model_state, strict=True)
        self.ema.load_state_dict(ckpt.ema_state, strict=True)
        self.optimizer.load_state_dict(ckpt.optimizer_state)
        self.sampler.load_state_dict(ckpt.timestep_sampler)
        self.rng.bit_generator.state = ckpt.numpy_rng
        torch.set_rng_state(ckpt.torch_rng)
        if ckpt.cuda_rng is not None and self.device.type == "cuda":
            torch.cuda.set_rng_state_all(ckpt.cuda_rng)
        self.step = ckpt.step
        self.checkpoint_loaded = ckpt.path
        self._log(f"resumed from {ckpt.path} at step {ckpt.step}")

    def _trim_metrics(self) -> None:
        """Drop metric lines past the current step (from a run interrupted after its checkpoint)."""
        if not self.metrics_path.is_file():
            return
        if self.step == 0:
            self.metrics_path.unlink()
            return
        keep = []
        for line in self.metrics_path.read_text(encoding="utf-8").splitlines():
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                continue
            if rec.get("step", 0) <= self.step:
                keep.append(line)
        self.metrics_path.write_text("".join(s + "\n" for s in keep), encoding="utf-8")

    # ---------------------------------------------------------------------------- one step

    def _permutation(self, epoch: int) -> np.ndarray:
        perm = self._perm_cache.get(epoch)
        if perm is None:
            rng = np.random.default_rng(derive_seed(self.config.seed, _DATA, epoch))
            perm = rng.permutation(len(self.train_images))
            self._perm_cache = {e: p for e, p in self._perm_cache.items() if e >= epoch - 1}
            self._perm_cache[epoch] = perm
        return perm

    def batch_indices(self, step: int) -> np.ndarray:
        """Training-set indices of the global batch at ``step`` (every process agrees)."""
        B, N = self.config.batch_size, len(self.train_images)
        pos = step * B + np.arange(B, dtype=np.int64)
        epochs, within = pos // N, pos % N
        out = np.empty(B, dtype=np.int64)
        for e in np.unique(epochs):
            sel = epochs == e
            out[sel] = self._permutation(int(e))[within[sel]]
        return out

    def lr_at(self, step: int) -> float:
        cfg = self.config
        if cfg.warmup_steps and step < cfg.warmup_steps:
            return cfg.lr * (step + 1) / cfg.warmup_steps
        return cfg.lr

    def forward_backward(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Loss and gradients of the current step's global batch (this process's slice).

        Draws the step's host randomness (advancing the NumPy generator), leaves the gradients
        in ``self.model``'s parameters (averaged over processes by DDP) and returns
        ``(loss, t, per_example_loss)`` for this process's slice.
        """
        cfg, s, sl = self.config, self.step, self.local
        B = cfg.batch_size
        images = self.train_images[self.batch_indices(s)]
        if cfg.flip:
            images = random_horizontal_flip(images, self.rng)
        t_all, w_all = self.sampler.sample(B, self.rng)
        dev = self.device
        x0 = torch.from_numpy(to_model_range(images[sl])).to(dev)
        t = torch.from_numpy(t_all[sl]).to(dev)
        w = torch.from_numpy(w_all[sl]).to(dev, torch.float32)
        index = torch.arange(sl.start, sl.stop, dtype=torch.int64, device=dev)
        noise = standard_normal(
            self.noise_seed,
            index,
            s,
            self.config.image_shape,
            xp=xpt,
            dtype=torch.float32,
            device=dev,
        )
        x_t = q_sample(self.schedule, x0, t, noise)
        # Dropout draws from torch's global generator: reseed it per (step, rank) so a resumed
        # run and a run on another number of processes draw what they would have.
        torch.manual_seed(derive_seed(cfg.seed, _DROPOUT, s, self.ctx.rank))
        inp = x_t.contiguous(memory_format=torch.channels_last) if self.channels_last else x_t
        autocast = (
            torch.autocast("cuda", dtype=torch.bfloat16)
            if self.use_bf16
            else contextlib.nullcontext()
        )
        with autocast:
            out = self.forward_model(inp, t)
        out = out.float().contiguous()
        d = cfg.diffusion
        terms = training_losses(
            self.schedule,
            out,
            x0,
            x_t,
            t,
            noise,
            loss_type=cfg.loss,
            prediction=d.prediction,
            variance=d.variance,
            decoder=d.decoder,
        )
        loss = (terms.loss * w).mean()
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        return loss.detach(), t, terms.loss.detach()

    @torch.no_grad()
    def _update_ema(self, step: int) -> None:
        decay = min(self.config.ema_rate, (1.0 + step) / (10.0 + step))
        for e, p in zip(self.ema.parameters(), self.model.parameters(), strict=True):
            e.lerp_(p, 1.0 - decay)
        for e, b in zip(self.ema.buffers(), self.model.buffers(), strict=True):
            e.copy_(b)

    def train_step(self) -> dict[str, float]:
        """One optimiser step; returns this step's loss (averaged over processes), lr, grad norm."""
        cfg = self.config
        loss, t, per_example = self.forward_backward()
        clip = cfg.grad_clip if cfg.grad_clip is not None else math.inf
        grad_norm = float(torch.nn.utils.clip_grad_norm_(self.model.parameters(), clip))
        if not math.isfinite(grad_norm):  # the same on every process: all stop together
            raise FloatingPointError(
                f"the gradients became {grad_norm} at step {self.step + 1} (loss "
                f"{float(loss)}); lower --lr or set --grad-clip"
            )
        lr = self.lr_at(self.step)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.optimizer.step()
        self._update_ema(self.step)
        if isinstance(self.sampler, LossSecondMomentSampler):
            all_t = distributed.all_gather_concat(t, self.ctx)
            all_l = distributed.all_gather_concat(per_example.float(), self.ctx)
            self.sampler.update(all_t.cpu().numpy(), all_l.double().cpu().numpy())
        if self.ctx.distributed:
            torch.distributed.all_reduce(loss, op=torch.distributed.ReduceOp.AVG)
        self.step += 1
        return {"loss": float(loss), "lr": lr, "grad_norm": grad_norm}

    # ---------------------------------------------------------------------------- evaluation

    def _denoiser(self) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
        ema = self.ema

        def denoise(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            with torch.no_grad():
                return ema(x, t)

        return denoise

    def evaluate(self) -> dict[str, float]:
        """Held-out bits/dim of the EMA model and of the per-pixel baseline on the same images.

        The images are the first ``eval_examples`` of the held-out set, sharded over processes;
        the bound's noise depends on (EVAL_SEED, image index) only.
        """
        cfg, d = self.config, self.config.diffusion
        held = self.eval_images[: cfg.eval_examples]
        n = len(held)
        mine = np.array_split(np.arange(n), self.ctx.world_size)[self.ctx.rank]
        denoise = self._denoiser()
        total = torch.zeros(2, dtype=torch.float64, device=self.device)  # [sum bpd, sum stderr²]
        batches = [
            mine[i : i + cfg.eval_batch_size] for i in range(0, len(mine), cfg.eval_batch_size)
        ]
        full = cfg.eval_method == "full"
        bar = tqdm(
            total=len(batches) * (self.T if full else 1),
            desc="eval bits/dim",
            unit="step" if full else "batch",
            leave=False,
            disable=not (self.progress and self.ctx.is_main),
        )
        with torch.no_grad():
            for idx in batches:
                x = torch.from_numpy(to_model_range(held[idx])).to(self.device)
                sidx = torch.from_numpy(idx.astype(np.int64)).to(self.device)
                common = dict(
                    prediction=d.prediction,
                    variance=d.variance,
                    decoder=d.decoder,
                    clip_denoised=d.clip_denoised,
                    seed=EVAL_SEED,
                    sample_indices=sidx,
                )
                if full:
                    res = variational_bound(
                        self.schedule, denoise, x, progress=lambda i, T: bar.update(1), **common
                    )
                    total[0] += res.total_bpd.double().sum()
                else:
                    mc = variational_bound_mc(
                        self.schedule, denoise, x, num_draws=cfg.eval_mc_draws, **common
                    )
                    total[0] += mc.estimate_bpd.double().sum()
                    total[1] += (mc.stderr_bpd.double() ** 2).sum()
                    bar.update(1)
        bar.close()
        if self.ctx.distributed:
            torch.distributed.all_reduce(total)
        result = {
            "eval_bpd": float(total[0]) / n,
            "baseline_bpd": float(self.baseline.bits_per_dim(held).mean()),
            "eval_examples": n,
        }
        if not full:
            result["eval_bpd_stderr"] = math.sqrt(float(total[1])) / n
        return result

    def sample(
        self, num: int | None = None, *, trajectory: int = 0
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """``num`` samples from the EMA model as uint8 images, and the x̂_0 trajectory of sample 0
        (``trajectory`` frames, None if 0)."""
        cfg, d = self.config, self.config.diffusion
        num = cfg.num_samples if num is None else num
        sched = self.schedule
        if cfg.sample_steps is not None and cfg.sample_steps != self.T:
            sched = sched.respace(space_timesteps(self.T, cfg.sample_steps))
        fn = ddim_sample if cfg.sampler == "ddim" else ddpm_sample
        steps = sched.num_timesteps
        keep_at = (
            set(np.linspace(0, steps - 1, trajectory).round().astype(int).tolist())
            if trajectory
            else set()
        )
        frames: list[np.ndarray] = []
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

        x = fn(
            sched,
            self._denoiser(),
            (num, *cfg.image_shape),
            prediction=d.prediction,
            variance=d.variance,
            clip_denoised=d.clip_denoised,
            data_range=d.data_range,
            seed=derive_seed(cfg.seed, _SAMPLES),
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
        h = self.config.image_shape[1]
        scale = max(1, 32 // h)
        folder = self.out / "samples"
        path = save_grid(images, folder / f"samples-{self.step:08d}.png", scale=scale)
        if traj is not None:
            save_strip(traj, folder / f"trajectory-{self.step:08d}.png", scale=scale)
        return path

    def save_checkpoint(self) -> Path:
        cfg = self.config
        cuda = torch.cuda.get_rng_state_all() if self.device.type == "cuda" else None
        return save_checkpoint(
            self.out,
            self.step,
            model=self.model,
            ema=self.ema,
            optimizer=self.optimizer,
            config=cfg,
            timestep_sampler=self.sampler.state_dict(),
            numpy_rng=self.rng.bit_generator.state,
            torch_rng=torch.get_rng_state(),
            cuda_rng=cuda,
            extra={"data": self.data_name, "world_size": self.ctx.world_size},
            keep=cfg.keep_checkpoints,
        )

    # ---------------------------------------------------------------------------- the loop

    def _write_metrics(self, record: dict[str, Any]) -> None:
        if self.ctx.is_main:
            with open(self.metrics_path, "a", encoding="utf-8") as f:
                f.write(json.dumps(record) + "\n")

    def _due(self, every: int, final: bool) -> bool:
        return final or (every > 0 and self.step % every == 0)

    def train(self, steps: int | None = None) -> dict[str, Any]:
        """Train up to ``steps`` (default ``config.steps``) total steps; return a summary.

        Evaluates, samples and checkpoints at their intervals and always at the end.
        """
        cfg = self.config
        target = cfg.steps if steps is None else int(steps)
        main = self.ctx.is_main
        summary: dict[str, Any] = {"out": str(self.out), "start_step": self.step}
        bar = tqdm(
            total=target,
            initial=min(self.step, target),
            desc="train",
            unit="step",
            dynamic_ncols=True,
            disable=not (self.progress and main),
        )
        window: list[float] = []
        window_time = 0.0
        n_window = 0
        train_time = 0.0
        trained = 0
        last_eval: dict[str, float] = {}
        sample_path = ckpt_path = None
        while self.step < target:
            t0 = time.perf_counter()
            info = self.train_step()
            dt = time.perf_counter() - t0
            train_time += dt
            trained += 1
            window.append(info["loss"])
            n_window += 1
            window_time += dt
            bar.update(1)
            final = self.step == target
            if self._due(cfg.log_every, final):
                ips = n_window * cfg.batch_size / window_time if window_time > 0 else math.nan
                self._write_metrics(
                    {
                        "step": self.step,
                        "loss": float(np.mean(window)),
                        "lr": info["lr"],
                        "grad_norm": info["grad_norm"],
                        "images_per_s": ips,
                    }
                )
                bar.set_postfix(loss=f"{np.mean(window):.4f}", img_s=f"{ips:.0f}")
                window, n_window, window_time = [], 0, 0.0
            if self._due(cfg.eval_every, final):
                last_eval = self.evaluate()
                self._write_metrics({"step": self.step, **last_eval})
                if main:
                    (bar.write if self.progress else self._log)(
                        f"step {self.step}: held-out {last_eval['eval_bpd']:.4f} bits/dim "
                        f"(per-pixel baseline {last_eval['baseline_bpd']:.4f})"
                    )
            if self._due(cfg.sample_every, final):
                if main:
                    sample_path = self.save_samples()
                self.ctx.barrier()
            if self._due(cfg.checkpoint_every, final):
                if main:
                    ckpt_path = self.save_checkpoint()
                self.ctx.barrier()
        bar.close()
        summary.update(
            step=self.step,
            trained_steps=trained,
            train_time_s=train_time,
            images_per_s=(trained * cfg.batch_size / train_time)
            if train_time > 0
            else float("nan"),
            samples=None if sample_path is None else str(sample_path),
            checkpoint=None if ckpt_path is None else str(ckpt_path),
            metrics=str(self.metrics_path),
            **last_eval,
        )
        return summary

    def close(self) -> None:
        distributed.teardown(self.ctx)


def _silent(_: str) -> None:
    pass


def _step_of(ckpt: Path) -> int:
    return int(ckpt.name.split("-")[1])


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
