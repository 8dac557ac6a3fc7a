"""ddpm-hub: denoising diffusion probabilistic models on the Hugging Face stack."""

from importlib.metadata import PackageNotFoundError, version

from . import models, plugins, samplers, schedules
from .devices import select_device
from .hookspecs import hookimpl
from .loading import load_pipeline
from .models.unet import UNet, UNetOutput
from .pipeline import DDPMHubPipeline
from .samplers import make_sampler
from .scheduler import DDPMHubScheduler, DDPMHubSchedulerOutput
from .schedules import linear

# The built-in schedule, samplers and backbones register through the hooks, as installed plugins do.
plugins.register_builtins(schedules, samplers, models.unet)

try:
    __version__ = version("ddpm-hub")
except PackageNotFoundError:  # running from a source tree without installing
    __version__ = "0+unknown"

__all__ = [
    "DDPMHubPipeline",
    "DDPMHubScheduler",
    "DDPMHubSchedulerOutput",
    "UNet",
    "UNetOutput",
    "__version__",
    "hookimpl",
    "linear",
    "load_pipeline",
    "make_sampler",
    "select_device",
]
