"""Test-suite setup. The environment is set before anything imports a Hugging Face library, since
huggingface_hub reads its endpoint and cache paths at import time."""

import atexit
import os
import shutil
import socket
import sys
import tempfile

_TMP = tempfile.mkdtemp(prefix="ddpm-hub-tests-")
# Removed when the run ends (about 15 MB a run: the Hub cache, gradio's files); left behind, every run added one.
atexit.register(shutil.rmtree, _TMP, ignore_errors=True)
os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"
os.environ["HF_UPDATE_DOWNLOAD_COUNTS"] = "0"
os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
os.environ["HF_HOME"] = os.path.join(_TMP, "hf-home")
os.environ["GRADIO_TEMP_DIR"] = os.path.join(_TMP, "gradio")
os.environ["HF_HUB_DISABLE_XET"] = "1"
os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
os.environ["TOKENIZERS_PARALLELISM"] = "false"
# Tests never reach the real Hub: HF_ENDPOINT points at the loopback Hub of tests/hub_server.py, on a port
# chosen now (huggingface_hub reads the endpoint once, at import). Offline by default: the `hub_server`
# fixture turns it off for the tests that use it.
with socket.socket() as _sock:
    _sock.bind(("127.0.0.1", 0))
    HUB_PORT = _sock.getsockname()[1]
os.environ["HF_ENDPOINT"] = f"http://127.0.0.1:{HUB_PORT}"
os.environ.pop("HF_TOKEN", None)
os.environ.pop("HUGGING_FACE_HUB_TOKEN", None)
os.environ["HF_HUB_OFFLINE"] = "1"
# Training precision: the default config's `auto` trains in bf16 on CPUs with AVX512-BF16 or AMX and in float32
# elsewhere, and accelerate fixes a process's precision at its first Accelerator. So that every test trains
# the same numbers on every machine (and in-process runs never meet another precision), the suite stands in
# for a launcher that asks for float32; the tests of `auto` itself remove it (tests/test_devices.py).
os.environ["ACCELERATE_MIXED_PRECISION"] = "no"

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


# --- the Space (spaces/app.py): loaded from its file, since it is not part of the package --------------


@pytest.fixture(scope="session")
def space_app():
    """spaces/app.py as a module."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "spaces" / "app.py"
    spec = importlib.util.spec_from_file_location("ddpm_hub_space_app", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def launch_space(space_app):
    """Launch ``build_demo(**kwargs)`` in-process on 127.0.0.1 and a free port; returns its URL. Closed at exit."""
    import socket

    demos = []

    def launch(**kwargs) -> str:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        demo = space_app.build_demo(**kwargs)
        demo.launch(
            server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True, share=False
        )
        demos.append(demo)
        return f"http://127.0.0.1:{port}/"

    yield launch
    for demo in demos:
        demo.close()


@pytest.fixture(scope="session")
def space_url(launch_space):
    """The Space with its defaults (bundled model, local paths refused)."""
    return launch_space(allow_local_paths=False)


@pytest.fixture(scope="session")
def _hub_server_session():
    from hub_server import HubServer  # tests/ is on sys.path (pyproject: pythonpath)

    with HubServer(port=HUB_PORT) as server:
        yield server


@pytest.fixture
def hub_server(_hub_server_session, monkeypatch):
    """The loopback Hub (tests/hub_server.py), online for this test, with its token in HF_TOKEN.

    ``hub_server.url`` is HF_ENDPOINT, ``hub_server.token`` the accepted token, ``hub_server.user`` its
    namespace; ``hub_server.state`` holds the repos. Repos persist for the session: use unique names.
    """
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setenv("HF_TOKEN", _hub_server_session.token)
    return _hub_server_session
