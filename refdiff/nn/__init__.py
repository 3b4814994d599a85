"""PyTorch networks: the denoiser U-Net of Ho et al. (2020).

Its settings (:class:`UNetConfig`, :data:`PRESETS`) are torch-free and live in
:mod:`refdiff.runs.unet_config`; they are re-exported here for convenience.
"""

from refdiff.nn.unet import UNet, count_parameters, randomized_unet
from refdiff.runs.unet_config import PRESETS, UNetConfig, preset

__all__ = ["PRESETS", "UNet", "UNetConfig", "count_parameters", "preset", "randomized_unet"]
