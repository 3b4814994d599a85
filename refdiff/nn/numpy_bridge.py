"""A PyTorch denoiser behind NumPy arrays, so the torch-free loops can drive it.

The samplers, the bound and the evaluation take any ``(x, t) -> model_output`` on one array
namespace. :class:`TorchDenoiser` wraps an ``nn.Module`` (refdiff's U-Net, a diffusers UNet
wrapped by :mod:`refdiff.export.diffusers`, any module with that signature) so that it takes and
returns NumPy arrays: it is what :func:`refdiff.models.open_model` hands out for a checkpoint or
a diffusers folder, next to the module itself.
"""

from __future__ import annotations

import contextlib
from typing import Any

import array_api_compat.numpy as npx
import numpy as np
import torch

from ..settings import Diffusion

__all__ = ["TorchDenoiser"]


class TorchDenoiser:
    """``denoiser(x, t) -> model_output`` on NumPy arrays around a PyTorch module.

    Parameters
    ----------
    module : torch.nn.Module
        ``module(x [B, C, H, W] float32, t [B] int64) -> [B, C or 2C, H, W]``; put in eval mode.
    diffusion : Diffusion
        The module's settings (what the samplers read from a denoiser).
    device : str or torch.device
        Where the module runs; arrays cross to it and back on every call.

    Attributes
    ----------
    xp : module
        ``array_api_compat.numpy``: the namespace the samplers use with it.
    """

    def __init__(self, module: Any, diffusion: Diffusion, device: str | torch.device = "cpu"):
        self.module = module.eval()
        self.diffusion = diffusion
        self.device = torch.device(device)
        self.xp = npx

    def __call__(self, x: np.ndarray, t: np.ndarray) -> np.ndarray:
        """The module's output for NumPy ``x`` [B, C, H, W] and ``t`` [B], in ``x``'s dtype."""
        if not isinstance(x, np.ndarray) or not isinstance(t, np.ndarray):
            raise TypeError(
                f"a TorchDenoiser takes NumPy arrays, got {type(x).__name__} and {type(t).__name__}"
            )
        with torch.no_grad():
            xt = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)).to(self.device)
            tt = torch.from_numpy(np.ascontiguousarray(t, dtype=np.int64)).to(self.device)
            out = self.module(xt, tt)
        return out.float().cpu().numpy().astype(x.dtype, copy=False)

    def device_scope(self) -> Any:
        """Nothing to enter: arrays are NumPy on the host."""
        return contextlib.nullcontext()

    def __repr__(self) -> str:
        return f"TorchDenoiser({type(self.module).__name__}, device={str(self.device)!r})"
