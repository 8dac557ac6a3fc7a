"""Denoising backbones. The core ships the UNet; plugins register more (``register_backbones``)."""

from .unet import UNet, UNetOutput

__all__ = ["UNet", "UNetOutput"]
