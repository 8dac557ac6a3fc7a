"""ddpm-hub-dit: a small Diffusion Transformer (DiT) backbone for ddpm-hub, registered as ``backbone: dit``."""

from ddpm_hub import hookimpl

from .model import DiT, DiTOutput

__all__ = ["DiT", "DiTOutput"]
__version__ = "0.1.0"


@hookimpl
def register_backbones(register):
    register("dit", DiT)
