"""The denoiser U-Net of Ho et al. (2020), in PyTorch.

This follows the architecture of *Denoising Diffusion Probabilistic Models* (Ho, Jain & Abbeel,
2020, Appendix B) as implemented in the authors' ``diffusion_tf/models/unet.py``: a PixelCNN++-
style U-Net with wide residual blocks, group normalisation, a sinusoidal timestep embedding added
in every residual block, and self-attention at the 16x16 resolution.

Where the paper's code fixes a detail the paper does not, we follow the code: GroupNorm with 32
groups and eps 1e-6, ``fan_avg`` uniform initialisation (Xavier/Glorot) with zero biases, and a
zero-initialised last layer in every residual branch, attention branch and at the output, so a
freshly built network predicts exactly zero.

The network takes ``x`` ([B, C, H, W], float) and ``t`` ([B], integer timestep indices) and returns
``model_output`` ([B, C or 2C, H, W]); this is the ONNX contract of ``docs/`` as well.
"""

from __future__ import annotations

import math
from typing import cast

import torch
import torch.nn.functional as F
from torch import nn

from ..runs.unet_config import UNetConfig

__all__ = ["UNet", "count_parameters", "randomized_unet"]

_GROUPNORM_EPS = 1e-6  # tf.contrib.layers.group_norm's default, used by Ho et al.


def randomized_unet(config: UNetConfig, seed: int = 0) -> UNet:
    """A U-Net in eval mode with random non-zero weights everywhere, for tests and benchmarks.

    A freshly built U-Net outputs exactly zero (its last layers are zero-initialised, as in Ho et
    al.'s code), which would make parity and timing checks meaningless. Here every convolution and
    linear layer is Xavier-uniform with small random biases and every GroupNorm slightly perturbed,
    all drawn from a generator seeded with ``seed``.
    """
    model = UNet(config)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                assert m.bias is not None  # every layer of the U-Net has one
                nn.init.xavier_uniform_(m.weight, generator=g)
                m.bias.copy_(0.1 * torch.randn(m.bias.shape, generator=g))
            elif isinstance(m, nn.GroupNorm):
                m.weight.copy_(1 + 0.1 * torch.randn(m.weight.shape, generator=g))
                m.bias.copy_(0.1 * torch.randn(m.bias.shape, generator=g))
    return model.eval()


def count_parameters(model: nn.Module) -> int:
    """Total number of parameters (elements) of ``model``; works on the ``meta`` device."""
    return sum(p.numel() for p in model.parameters())


# --------------------------------------------------------------------------------------------
# Building blocks
# --------------------------------------------------------------------------------------------


def timestep_embedding(t: torch.Tensor, dim: int) -> torch.Tensor:
    """Sinusoidal embedding of integer timesteps (Ho et al. 2020, Appendix B).

    As in the paper's ``get_timestep_embedding`` (after Vaswani et al. 2017): frequencies
    ``exp(-log(10000) * i / (dim/2 - 1))`` for ``i < dim/2``, then ``[sin(t f), cos(t f)]``.

    Parameters
    ----------
    t : Tensor
        Timestep indices, shape [B], any integer dtype.
    dim : int
        Embedding dimension; even and at least 4.

    Returns
    -------
    Tensor
        Shape [B, dim], float32.
    """
    half = dim // 2
    freqs = torch.exp(
        torch.arange(half, dtype=torch.float32, device=t.device) * (-math.log(10000.0) / (half - 1))
    )
    args = t.to(torch.float32)[:, None] * freqs[None, :]
    return torch.cat([torch.sin(args), torch.cos(args)], dim=1)


class GroupNorm32(nn.GroupNorm):
    """GroupNorm computed in float32 whatever the input dtype (keeps fp16 models stable)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.group_norm(
            x.float(), self.num_groups, self.weight.float(), self.bias.float(), self.eps
        ).to(x.dtype)


def _norm(channels: int, groups: int) -> GroupNorm32:
    return GroupNorm32(groups, channels, eps=_GROUPNORM_EPS)


def _zero_init(layer: nn.Conv2d) -> nn.Conv2d:
    """``layer``, marked to start at zero (:meth:`UNet.reset_parameters`)."""
    # torch types a module's attributes as tensors or modules; this one is a plain flag
    layer.is_zero_init = True  # type: ignore[assignment]
    return layer


class ResBlock(nn.Module):
    """Wide residual block with a timestep projection (Ho et al.'s ``resnet_block``).

    ``h = conv1(SiLU(GN(x))) + Dense(SiLU(temb)); h = conv2(Dropout(SiLU(GN(h))))``, with
    ``conv2`` zero-initialised, and a 1x1 ``nin`` shortcut when the channel count changes.
    """

    def __init__(self, in_ch: int, out_ch: int, temb_ch: int, dropout: float, groups: int):
        super().__init__()
        self.norm1 = _norm(in_ch, groups)
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, padding=1)
        self.temb_proj = nn.Linear(temb_ch, out_ch)
        self.norm2 = _norm(out_ch, groups)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = _zero_init(nn.Conv2d(out_ch, out_ch, 3, padding=1))
        self.shortcut = nn.Conv2d(in_ch, out_ch, 1) if in_ch != out_ch else nn.Identity()

    def forward(self, x: torch.Tensor, temb: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = h + self.temb_proj(F.silu(temb))[:, :, None, None]
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))
        return self.shortcut(x) + h


class AttnBlock(nn.Module):
    """Self-attention over the pixels (Ho et al.'s ``attn_block``), optionally multi-head.

    ``x + proj(softmax(Q^T K / sqrt(d)) V)`` with Q, K, V from one 1x1 convolution of ``GN(x)``,
    ``d`` the per-head channels and ``proj`` zero-initialised. Plain matmuls (no fused SDPA), so
    the ONNX graph is the same for every exporter and runtime.
    """

    def __init__(self, channels: int, groups: int, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        self.norm = _norm(channels, groups)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.proj = _zero_init(nn.Conv2d(channels, channels, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        d = c // self.num_heads
        qkv = self.qkv(self.norm(x)).reshape(b, 3, self.num_heads, d, h * w)
        q, k, v = qkv[:, 0], qkv[:, 1], qkv[:, 2]  # each [B, heads, d, N]
        scores = torch.matmul(q.transpose(-1, -2), k) * (d**-0.5)  # [B, heads, N, N]
        weights = torch.softmax(scores.float(), dim=-1).to(scores.dtype)
        out = torch.matmul(v, weights.transpose(-1, -2))  # [B, heads, d, N]
        return x + self.proj(out.reshape(b, c, h, w))


class Downsample(nn.Module):
    """Halve the resolution with a 3x3 stride-2 convolution."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class Upsample(nn.Module):
    """Double the resolution: nearest-neighbour upsampling, then a 3x3 convolution."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class _ResAttn(nn.Module):
    """A residual block, followed by an attention block at attention resolutions."""

    def __init__(self, res: ResBlock, attn: AttnBlock | None):
        super().__init__()
        self.res = res
        self.attn = attn if attn is not None else nn.Identity()

    def forward(self, x: torch.Tensor, temb: torch.Tensor) -> torch.Tensor:
        return self.attn(self.res(x, temb))


# --------------------------------------------------------------------------------------------
# The network
# --------------------------------------------------------------------------------------------


class UNet(nn.Module):
    """The denoiser of Ho et al. (2020): a U-Net conditioned on the timestep.

    Parameters
    ----------
    config : UNetConfig
        The hyper-parameters; see :data:`PRESETS` for the paper's CIFAR-10 model.

    Notes
    -----
    Layout (Ho et al. 2020, Appendix B, and ``diffusion_tf/models/unet.py``): a 3x3 input
    convolution; per level ``num_res_blocks`` residual blocks (each followed by attention at the
    attention resolutions) and a stride-2 downsampling except at the last level; a middle of
    residual block, attention, residual block; per level, in reverse, ``num_res_blocks + 1``
    residual blocks whose inputs concatenate the matching skip activation, and a nearest+conv
    upsampling except at the first level; then GroupNorm, SiLU and a zero-initialised 3x3
    convolution. The timestep enters through a sinusoidal embedding of dimension
    ``base_channels``, widened by Linear-SiLU-Linear to ``4 * base_channels`` and projected into
    every residual block.
    """

    def __init__(self, config: UNetConfig):
        super().__init__()
        if not isinstance(config, UNetConfig):
            raise TypeError(f"config must be a UNetConfig, got {type(config).__name__}")
        self.config = config
        cfg = config
        ch = cfg.base_channels
        temb_ch = 4 * ch
        attn_at = set(cfg.attention_resolutions)

        def block(in_ch: int, out_ch: int, res: int) -> _ResAttn:
            attn = AttnBlock(out_ch, cfg.num_groups, cfg.num_heads) if res in attn_at else None
            return _ResAttn(ResBlock(in_ch, out_ch, temb_ch, cfg.dropout, cfg.num_groups), attn)

        self.temb = nn.Sequential(nn.Linear(ch, temb_ch), nn.SiLU(), nn.Linear(temb_ch, temb_ch))
        self.conv_in = nn.Conv2d(cfg.in_channels, ch, 3, padding=1)

        # Downsampling path; record the channels of every activation kept for a skip connection.
        skip_chs = [ch]
        cur = ch
        self.down_blocks = nn.ModuleList()
        self.downsamples = nn.ModuleList()
        for level, (width, res) in enumerate(zip(cfg.channel_widths, cfg.resolutions, strict=True)):
            blocks = nn.ModuleList()
            for _ in range(cfg.num_res_blocks):
                blocks.append(block(cur, width, res))
                cur = width
                skip_chs.append(cur)
            self.down_blocks.append(blocks)
            last = level == len(cfg.channel_mult) - 1
            self.downsamples.append(nn.Identity() if last else Downsample(cur))
            if not last:
                skip_chs.append(cur)

        # Middle, at the lowest resolution: always res, attention, res.
        self.mid_res1 = ResBlock(cur, cur, temb_ch, cfg.dropout, cfg.num_groups)
        self.mid_attn = AttnBlock(cur, cfg.num_groups, cfg.num_heads)
        self.mid_res2 = ResBlock(cur, cur, temb_ch, cfg.dropout, cfg.num_groups)

        # Upsampling path, from the lowest resolution back up.
        self.up_blocks = nn.ModuleList()
        self.upsamples = nn.ModuleList()
        for level in reversed(range(len(cfg.channel_mult))):
            width, res = cfg.channel_widths[level], cfg.resolutions[level]
            blocks = nn.ModuleList()
            for _ in range(cfg.num_res_blocks + 1):
                blocks.append(block(cur + skip_chs.pop(), width, res))
                cur = width
            self.up_blocks.append(blocks)
            self.upsamples.append(Upsample(cur) if level != 0 else nn.Identity())
        assert not skip_chs, "every skip activation must be consumed"

        self.norm_out = _norm(cur, cfg.num_groups)
        self.conv_out = _zero_init(nn.Conv2d(cur, cfg.out_channels, 3, padding=1))

        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """Initialise as Ho et al.'s code does.

        Convolutions and linear layers: ``variance_scaling(1, 'fan_avg', 'uniform')`` (which is
        Xavier-uniform) with zero biases; the last layer of each residual branch, of each
        attention branch and of the network: all zeros. GroupNorm: unit scale, zero shift.
        """
        for module in self.modules():
            if isinstance(module, (nn.Conv2d, nn.Linear)):
                if getattr(module, "is_zero_init", False):
                    nn.init.zeros_(module.weight)
                else:
                    nn.init.xavier_uniform_(module.weight)
                assert module.bias is not None  # every layer of the U-Net has one
                nn.init.zeros_(module.bias)
            elif isinstance(module, nn.GroupNorm):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)

    def _check_inputs(self, x: torch.Tensor, t: torch.Tensor) -> None:
        # Static shape and dtype checks only: they hold under torch.export with a symbolic batch
        # (export x and t with one shared batch Dim, so that the batch check is a tautology).
        cfg = self.config
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"t must be a torch.Tensor of timestep indices, got {type(t).__name__}")
        if x.ndim != 4:
            raise ValueError(f"x must have shape [B, C, H, W], got {x.ndim} dims {tuple(x.shape)}")
        if not x.is_floating_point():
            raise TypeError(f"x must have a floating dtype, got {x.dtype}")
        if x.shape[1] != cfg.in_channels:
            raise ValueError(
                f"x has {x.shape[1]} channels, the model expects in_channels={cfg.in_channels}"
            )
        if x.shape[2] != cfg.image_size or x.shape[3] != cfg.image_size:
            raise ValueError(
                f"x is {x.shape[2]}x{x.shape[3]}, the model expects image_size="
                f"{cfg.image_size} ({cfg.image_size}x{cfg.image_size})"
            )
        if t.ndim != 1:
            raise ValueError(f"t must have shape [B], got {t.ndim} dims {tuple(t.shape)}")
        if t.shape[0] != x.shape[0]:
            raise ValueError(f"t has batch size {t.shape[0]} but x has batch size {x.shape[0]}")
        if t.is_floating_point() or t.is_complex() or t.dtype == torch.bool:
            raise TypeError(
                f"t must hold integer timestep indices (int64 or int32), got dtype {t.dtype}"
            )

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """Predict the model output for noisy images ``x`` at timestep indices ``t``.

        Parameters
        ----------
        x : Tensor
            Noisy images, shape [B, in_channels, image_size, image_size], floating dtype.
        t : Tensor
            Timestep indices, shape [B], integer dtype (int64 or int32).

        Returns
        -------
        Tensor
            Shape [B, out_channels, image_size, image_size], dtype of ``x``.

        Raises
        ------
        ValueError, TypeError
            If ``x`` or ``t`` has the wrong number of dimensions, shape or dtype.
        """
        self._check_inputs(x, t)
        temb = self.temb(timestep_embedding(t, self.config.base_channels).to(x.dtype))

        hs = [self.conv_in(x)]
        for blocks, downsample in zip(self.down_blocks, self.downsamples, strict=True):
            for blk in cast(nn.ModuleList, blocks):
                hs.append(blk(hs[-1], temb))
            if not isinstance(downsample, nn.Identity):
                hs.append(downsample(hs[-1]))

        h = hs[-1]
        h = self.mid_res2(self.mid_attn(self.mid_res1(h, temb)), temb)

        for blocks, upsample in zip(self.up_blocks, self.upsamples, strict=True):
            for blk in cast(nn.ModuleList, blocks):
                h = blk(torch.cat([h, hs.pop()], dim=1), temb)
            h = upsample(h)

        return self.conv_out(F.silu(self.norm_out(h)))
