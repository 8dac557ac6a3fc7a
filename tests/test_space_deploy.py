"""`ddpm-hub space --deploy`: the Space repo it uploads runs from its own files, with no ddpm-hub checkout."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from huggingface_hub import SpaceCard, snapshot_download
from packaging.requirements import Requirement

from ddpm_hub import hub
from ddpm_hub.cli import main

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: the test extra installs tomli
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]
SPACES = ROOT / "spaces"

#: installed as sitecustomize in the Space's process: ddpm_hub may come only from the downloaded Space
ONLY_FROM_SPACE = """
import importlib.abc, importlib.util, os, sys

ALLOWED = os.path.realpath(os.environ["DDPM_HUB_ONLY_FROM"])


class OnlyFromSpace(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name != "ddpm_hub":
            return None  # submodules are looked up in the package's __path__
        for finder in sys.meta_path:
            if finder is not self and (spec := finder.find_spec(name, path, target)) is not None:
                break
        else:
            return None
        if not os.path.realpath(spec.origin or "").startswith(ALLOWED + os.sep):
            raise ImportError(f"ddpm_hub is importable only from {ALLOWED} here, not from {spec.origin}")
        return spec


sys.meta_path.insert(0, OnlyFromSpace())
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _space_env(space: Path, tmp_path: Path) -> dict[str, str]:
    """A clean environment: no checkout on the path, ddpm_hub only from ``space``, no plugins, offline."""
    site = tmp_path / "site"
    site.mkdir(exist_ok=True)
    (site / "sitecustomize.py").write_text(ONLY_FROM_SPACE)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "PYTHON", "DDPM_HUB", "GRADIO"))}
    env.update(
        PYTHONPATH=str(site),
        DDPM_HUB_ONLY_FROM=str(space),
        DDPM_HUB_LOAD_PLUGINS="",
        HF_HUB_OFFLINE="1",
        HF_HOME=str(tmp_path / "hf-home"),
        GRADIO_ANALYTICS_ENABLED="False",
        GRADIO_TEMP_DIR=str(tmp_path / "gradio"),
        OMP_NUM_THREADS="1",
    )
    return env


def _project_requirements() -> dict[str, Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    reqs = [Requirement(r) for r in project["dependencies"] + project["optional-dependencies"]["space"]]
    return {r.name: r for r in reqs if r.name != "gradio"}


def test_space_requirements_are_the_package_floors_and_name_no_repository():
    lines = [line.strip() for line in (SPACES / "requirements.txt").read_text().splitlines()]
    entries = [line for line in lines if line and not line.startswith("#")]
    options = [e for e in entries if e.startswith("-")]
    assert options == ["--extra-index-url https://download.pytorch.org/whl/cpu"]  # the CPU torch wheel
    reqs = {Requirement(e).name: Requirement(e) for e in entries if not e.startswith("-")}
    assert all(r.url is None for r in reqs.values())  # nothing from git or a path: PyPI only
    assert "ddpm-hub" not in reqs and "gradio" not in reqs  # vendored / from sdk_version
    expected = _project_requirements()
    assert {k: str(v.specifier) for k, v in reqs.items() if k != "pandas"} == {
        k: str(v.specifier) for k, v in expected.items()
    }
    card = SpaceCard.load(SPACES / "README.md").data
    assert (card.sdk, card.app_file) == ("gradio", "app.py")
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    gradio = next(Requirement(r) for r in project["optional-dependencies"]["space"] if r.startswith("gradio"))
    assert gradio.specifier.contains(card.sdk_version)


def test_stage_space_with_a_hub_model_or_a_folder(tmp_path, pipe_folder):
    models = hub.stage_space(SPACES, tmp_path / "a", model="someone/ddpm-model")
    assert models[0] == "someone/ddpm-model"
    assert (tmp_path / "a" / hub.SPACE_MODEL_REPO_FILE).read_text().strip() == "someone/ddpm-model"
    assert not (tmp_path / "a" / "default-model").exists()  # not bundled: the Space loads the repo
    assert SpaceCard.load(tmp_path / "a" / "README.md").data.models[0] == "someone/ddpm-model"

    hub.stage_space(SPACES, tmp_path / "b", model=pipe_folder)
    staged = tmp_path / "b" / "default-model"
    assert (staged / "unet" / "diffusion_pytorch_model.safetensors").read_bytes() == (
        pipe_folder / "unet" / "diffusion_pytorch_model.safetensors"
    ).read_bytes()
    assert not (tmp_path / "b" / hub.SPACE_MODEL_REPO_FILE).exists()

    with pytest.raises(ValueError, match="neither a pipeline or run folder nor a Hub repo id"):
        hub.stage_space(SPACES, tmp_path / "c", model="not a repo")


def test_deploy_refuses_a_model_that_needs_a_plugin(tmp_path):
    import torch
    from ddpm_hub_dit import DiT

    from ddpm_hub import DDPMHubPipeline, DDPMHubScheduler

    torch.manual_seed(0)
    dit = DiT(sample_size=8, in_channels=1, patch_size=4, hidden_size=16, depth=1, num_heads=2)
    DDPMHubPipeline(unet=dit, scheduler=DDPMHubScheduler(num_train_timesteps=50)).save_pretrained(
        tmp_path / "m"
    )
    with pytest.raises(
        ValueError, match=r"needs the plugin\(s\) ddpm-hub-dit, which a deployed Space does not"
    ):
        hub.stage_space(SPACES, tmp_path / "s", model=tmp_path / "m")


def test_deploy_cli_errors_are_one_line(hub_server, capsys):
    with pytest.raises(SystemExit, match="cannot be used with --deploy"):
        main(["space", "--deploy", f"{hub_server.user}/s", "--allow-local-paths"])
    with pytest.raises(SystemExit, match="invalid Hub repo id"):
        main(["space", "--deploy", "not/a/repo"])
    with pytest.raises(SystemExit, match="go with --deploy"):
        main(["space", "--private"])


@pytest.fixture
def pipe_folder(tmp_path):
    import torch

    from ddpm_hub import DDPMHubPipeline, DDPMHubScheduler, UNet

    torch.manual_seed(0)
    unet = UNet(
        sample_size=8,
        in_channels=1,
        base_channels=8,
        channel_mult=(1,),
        attention_resolutions=(),
        norm_num_groups=4,
    )
    DDPMHubPipeline(unet=unet, scheduler=DDPMHubScheduler(num_train_timesteps=50)).save_pretrained(
        tmp_path / "pipe"
    )
    return tmp_path / "pipe"


@pytest.mark.slow
def test_deployed_space_runs_from_its_own_files(hub_server, tmp_path, capsys):
    from gradio_client import Client

    repo_id = f"{hub_server.user}/ddpm-space-{time.time_ns()}"
    assert main(["space", "--deploy", repo_id]) == 0
    out = capsys.readouterr().out
    assert out.strip().splitlines()[-1] == f"{hub_server.url}/spaces/{repo_id}"  # the Space's URL
    assert hub_server.repo(repo_id, "space").sdk == "gradio"

    # In an empty folder, the Space repo as the Hub's builder gets it
    space = tmp_path / "space"
    space.mkdir()
    snapshot_download(repo_id, repo_type="space", local_dir=space)
    card = SpaceCard.load(space / "README.md").data
    assert (card.sdk, card.app_file, card.license) == ("gradio", "app.py", "apache-2.0")
    assert card.sdk_version and "google/ddpm-cifar10-32" in card.models
    index = json.loads((space / "default-model" / "model_index.json").read_text())
    assert index["unet"] == ["ddpm_hub.models.unet", "UNet"]  # the bundled model travelled with it
    # requirements.txt has no local entry to install: ddpm_hub is vendored beside app.py (spaces/README.md
    # says why), and every other entry is a PyPI requirement that this environment satisfies
    from importlib.metadata import version

    for line in (space / "requirements.txt").read_text().splitlines():
        if line.strip() and not line.startswith(("#", "-")):
            req = Requirement(line)
            assert req.url is None and req.specifier.contains(version(req.name), prereleases=True), line
    assert (space / "ddpm_hub" / "__init__.py").is_file()
    assert (space / "ddpm_hub" / "datasets" / "mnist5k.parquet").is_file()  # package data too

    env = _space_env(space, tmp_path)
    # the checkout's ddpm_hub (and the editable install) is not importable in this environment...
    elsewhere = subprocess.run(
        [sys.executable, "-c", "import ddpm_hub"], env=env, cwd=tmp_path, capture_output=True, text=True
    )
    assert elsewhere.returncode != 0 and "importable only from" in elsewhere.stderr
    # ...and `python app.py` in the Space's folder runs from its own files
    port = _free_port()
    proc = subprocess.Popen(
        [sys.executable, "app.py", "--port", str(port)],
        cwd=space,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        url = f"http://127.0.0.1:{port}/"
        deadline = time.monotonic() + 300
        while True:
            if proc.poll() is not None:
                pytest.fail(f"app.py exited with {proc.returncode}:\n{proc.stdout.read()}")
            try:
                urllib.request.urlopen(url, timeout=5)
                break
            except OSError:
                if time.monotonic() > deadline:
                    pytest.fail("app.py did not start serving within 300 s")
                time.sleep(1)
        client = Client(url, verbose=False)
        grid, singles, _trajectory, summary = client.predict("", "", "ddim", 8, 2, 0, api_name="/generate")
        assert "2 images" in summary and "ddim" in summary, summary
        assert Path(grid).is_file() and len(singles) == 2
        served_from = subprocess.run(
            [sys.executable, "-c", "import ddpm_hub; print(ddpm_hub.__file__)"],
            env=env,
            cwd=space,
            capture_output=True,
            text=True,
        )
        assert served_from.stdout.strip() == str(space / "ddpm_hub" / "__init__.py")
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
