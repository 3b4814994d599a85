"""One training step: the core's noising and losses applied to torch tensors, and the state it changes.

One step, for the global batch of B examples at step s (this process computes its slice):

1. images: positions s·B … s·B+B-1 of the data stream (:class:`~refdiff.training.data.DataOrder`);
2. t, w: drawn on the host from the timestep sampler with a seeded NumPy generator (every process
   draws the whole global batch and keeps its slice, so all stay in step), checked there and moved
   to the device once as :class:`refdiff.Timesteps`, so the core never reads them back;
3. ε = :func:`refdiff.standard_normal` (seed, global example index j, step s): the counter-based
   noise of the core, so the noise of example j at step s does not depend on the world size;
4. x_t = ``diffusion.q_sample``, out = model(x_t, t), and the loss
   ``(diffusion.training_losses(...).loss * w).mean()``: the functions that the property tests
   check, called on torch tensors through array-api-compat with the run's :class:`refdiff.Diffusion`;
5. backward (DDP averages the gradients), gradient-norm clipping, linear LR warm-up,
   Adam/AdamW, EMA update, timestep-sampler update with the losses of the global batch.
"""

from __future__ import annotations

import contextlib
import copy
import math
from typing import Any

import array_api_compat.torch as xpt
import numpy as np
import torch

from ..data import random_horizontal_flip, to_model_range
from ..nn.unet import UNet
from ..noise import standard_normal
from ..runs.train_config import TrainConfig
from ..timestep_sampling import LossSecondMomentSampler, make_timestep_sampler
from . import distributed
from .checkpoint import Checkpoint
from .data import DataOrder, Purpose, derive_seed

__all__ = ["TrainState"]


class TrainState:
    """The weights, their EMA, the optimiser, the timestep sampler, the host generator and the step
    counter of a run, and the step that advances them.

    Parameters
    ----------
    config : TrainConfig
    ctx : DistContext
        This process's place in the run (:func:`refdiff.training.distributed.setup`).
    train_images : numpy.ndarray
        uint8 [N, C, H, W], the training set.
    checkpoint : Checkpoint, optional
        Restore everything from it (already verified and checked against ``config``).
    log : callable
        Where notes go.
    """

    def __init__(
        self,
        config: TrainConfig,
        ctx: distributed.DistContext,
        train_images: np.ndarray,
        *,
        checkpoint: Checkpoint | None = None,
        log: Any = print,
    ) -> None:
        cfg = self.config = config
        self.ctx, self.device = ctx, ctx.device
        self.diffusion = cfg.diffusion
        self.train_images = train_images
        self.local = ctx.local_slice(cfg.batch_size)
        on_cuda = self.device.type == "cuda"
        for flag in ("bf16", "channels_last", "compile"):
            if getattr(cfg, flag) and not on_cuda:
                log(f"note: {flag} is only used on CUDA; ignored on {self.device.type}")
        self.use_bf16 = cfg.bf16 and on_cuda
        self.channels_last = cfg.channels_last and on_cuda

        torch.manual_seed(derive_seed(cfg.seed, Purpose.INIT))
        self.model = UNet(cfg.unet).to(self.device)
        if self.channels_last:
            # Module.to takes memory_format, which torch's overloads of it leave out
            self.model = self.model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
        self.ema = copy.deepcopy(self.model).eval().requires_grad_(False)
        opt_cls = torch.optim.AdamW if cfg.optimizer == "adamw" else torch.optim.Adam
        self.optimizer = opt_cls(self.model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        self.sampler = make_timestep_sampler(cfg.timestep_sampler, self.diffusion.num_timesteps)
        self.rng = np.random.default_rng(derive_seed(cfg.seed, Purpose.HOST))
        self.noise_seed = derive_seed(cfg.seed, Purpose.NOISE)
        self.order = DataOrder(len(train_images), cfg.batch_size, cfg.seed)
        self.step = 0
        if checkpoint is not None:
            self._restore(checkpoint)

        forward: Any = self.model
        if ctx.distributed:
            from torch.nn.parallel import DistributedDataParallel

            forward = DistributedDataParallel(
                self.model, device_ids=[self.device.index] if on_cuda else None
            )
        if cfg.compile and on_cuda:
            forward = torch.compile(forward)
        self.forward_model = forward

    def _restore(self, ckpt: Checkpoint) -> None:
        self.model.load_state_dict(ckpt.model_state, strict=True)
        self.ema.load_state_dict(ckpt.ema_state, strict=True)
        self.optimizer.load_state_dict(ckpt.optimizer_state)
        self.sampler.load_state_dict(ckpt.timestep_sampler)
        self.rng.bit_generator.state = ckpt.numpy_rng
        torch.set_rng_state(ckpt.torch_rng)
        if ckpt.cuda_rng is not None and self.device.type == "cuda":
            torch.cuda.set_rng_state_all(ckpt.cuda_rng)
        self.step = ckpt.step

    def checkpoint_contents(self) -> dict[str, Any]:
        """What :func:`refdiff.training.checkpoint.save_checkpoint` stores of this state."""
        cuda = torch.cuda.get_rng_state_all() if self.device.type == "cuda" else None
        return {
            "model": self.model,
            "ema": self.ema,
            "optimizer": self.optimizer,
            "timestep_sampler": self.sampler.state_dict(),
            "numpy_rng": self.rng.bit_generator.state,
            "torch_rng": torch.get_rng_state(),
            "cuda_rng": cuda,
        }

    def batch_indices(self, step: int) -> np.ndarray:
        """Training-set indices of the global batch at ``step``."""
        return self.order.batch_indices(step)

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
        cfg, s, sl, d = self.config, self.step, self.local, self.diffusion
        images = self.train_images[self.batch_indices(s)]
        if cfg.flip:
            images = random_horizontal_flip(images, self.rng)
        t_all, w_all = self.sampler.sample(cfg.batch_size, self.rng)
        dev = self.device
        x0 = torch.from_numpy(to_model_range(images[sl])).to(dev)
        t = d.timesteps(t_all[sl], xpt, dev)  # checked on the host, here, once
        w = torch.from_numpy(w_all[sl]).to(dev, torch.float32)
        index = torch.arange(sl.start, sl.stop, dtype=torch.int64, device=dev)
        noise = standard_normal(
            self.noise_seed, index, s, d.image_shape, xp=xpt, dtype=torch.float32, device=dev
        )
        x_t = d.q_sample(x0, t, noise)
        # Dropout draws from torch's global generator: reseed it per (step, rank) so a resumed
        # run and a run on another number of processes draw what they would have.
        torch.manual_seed(derive_seed(cfg.seed, Purpose.DROPOUT, s, self.ctx.rank))
        inp = x_t.contiguous(memory_format=torch.channels_last) if self.channels_last else x_t
        autocast = (
            torch.autocast("cuda", dtype=torch.bfloat16)
            if self.use_bf16
            else contextlib.nullcontext()
        )
        with autocast:
            out = self.forward_model(inp, t.array)
        out = out.float().contiguous()
        terms = d.training_losses(out, x0, x_t, t, noise, loss_type=cfg.loss)
        loss = (terms.loss * w).mean()
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        return loss.detach(), t.array, terms.loss.detach()

    @torch.no_grad()
    def _update_ema(self, step: int) -> None:
        decay = min(self.config.ema_rate, (1.0 + step) / (10.0 + step))
        for e, p in zip(self.ema.parameters(), self.model.parameters(), strict=True):
            e.lerp_(p, 1.0 - decay)
        for e_buf, b in zip(self.ema.buffers(), self.model.buffers(), strict=True):
            e_buf.copy_(b)

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

    def denoiser(self) -> Any:
        """The EMA model as a denoiser ``(x, t) -> output`` (no gradients), for the bound and
        the samplers."""
        ema = self.ema

        def denoise(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            with torch.no_grad():
                return ema(x, t)

        return denoise
