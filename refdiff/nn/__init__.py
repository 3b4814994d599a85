"""PyTorch networks: the denoiser U-Net of Ho et al. (2020)."""

from refdiff.nn.unet import PRESETS, UNet, UNetConfig, count_parameters, preset, randomized_unet

__all__ = ["PRESETS", "UNet", "UNetConfig", "count_parameters", "preset", "randomized_unet"]
