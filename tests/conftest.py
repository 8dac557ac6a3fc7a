"""Test-suite setup. The environment is set before anything imports a Hugging Face library, since
huggingface_hub reads its endpoint and cache paths at import time."""

import os
import tempfile

_TMP = tempfile.mkdtemp(prefix="ddpm-hub-tests-")
os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"
os.environ["HF_UPDATE_DOWNLOAD_COUNTS"] = "0"
os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
os.environ["HF_HOME"] = os.path.join(_TMP, "hf-home")
os.environ["GRADIO_TEMP_DIR"] = os.path.join(_TMP, "gradio")
os.environ["HF_HUB_DISABLE_XET"] = "1"
os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
os.environ["TOKENIZERS_PARALLELISM"] = "false"
# Tests never reach the real Hub: the Hub tests point HF_ENDPOINT at a loopback server (see hub_server).
os.environ["HF_HUB_OFFLINE"] = "1"

import pytest  # noqa: E402
import torch  # noqa: E402

# One intra-op thread: the tests' tensors are small, and OpenMP threads spinning at barriers slow a step
# down twentyfold whenever the cores are shared (measured: 0.19 s vs 3.7 s per tiny-UNet step with the
# test suite's subprocesses running beside it).
torch.set_num_threads(1)


@pytest.fixture
def tiny_unet_kwargs():
    """A UNet small enough to run hundreds of steps in a test (28 px, 1 channel)."""
    return dict(
        sample_size=28,
        in_channels=1,
        base_channels=32,
        channel_mult=(1, 2),
        num_res_blocks=1,
        attention_resolutions=(14,),
        dropout=0.0,
        norm_num_groups=8,
    )
