"""The Space (spaces/app.py) through gradio_client against the app launched in-process, and its functions."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request

import numpy as np
import pytest
import torch
from gradio_client import Client  # noqa: E402
from gradio_client.exceptions import AppError  # noqa: E402
from PIL import Image

FAST = dict(model="", revision="", sampler="ddim", steps=5, num_images=2, seed=0)


@pytest.fixture(scope="module")
def client(space_url):
    return Client(space_url, verbose=False)


@pytest.fixture(scope="module")
def local_client(launch_space):
    """A Space whose operator allowed local folders."""
    return Client(launch_space(allow_local_paths=True), verbose=False)


def _generate(client, **overrides):
    return client.predict(**{**FAST, **overrides}, api_name="/generate")


def _error(client, **overrides) -> str:
    with pytest.raises(AppError) as info:
        _generate(client, **overrides)
    message = str(info.value)
    assert "Traceback" not in message
    return message


def test_api_names_are_stable(client):
    endpoints = client.view_api(print_info=False, return_format="dict")["named_endpoints"]
    assert set(endpoints) == {"/generate", "/schedule", "/forward_process"}
    params = [p["parameter_name"] for p in endpoints["/generate"]["parameters"]]
    assert params == ["model", "revision", "sampler", "steps", "num_images", "seed"]


def test_generate_returns_the_requested_images_and_trajectory(client):
    grid, singles, trajectory, summary = _generate(client, num_images=3)
    assert len(singles) == 3
    assert np.asarray(Image.open(grid)).std() > 5  # the grid is not blank
    # the trajectory: x_t and the predicted x_0 at each of the 5 steps (up to 6 frames)
    captions = [item["caption"] for item in trajectory]
    assert len(captions) == 10
    assert captions[0] == "x after step 1/5 (t=511)" and captions[1] == "predicted x0 at t=511"
    assert captions[-2].startswith("x after step 5/5")
    assert "3 images" in summary and "ddim" in summary


def _pixels(path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("L"), dtype=np.int16)


def test_same_seed_gives_the_same_images(client):
    first, second, other = (_generate(client, seed=s)[0] for s in (7, 7, 8))
    assert np.array_equal(_pixels(first), _pixels(second))
    assert not np.array_equal(_pixels(first), _pixels(other))


def test_out_of_range_inputs_give_a_message_not_a_traceback(client):
    assert "maximum value 16" in _error(client, num_images=17)  # the sliders' bounds, checked by gradio
    assert "minimum value 1" in _error(client, steps=0)
    assert "minimum value 0" in _error(client, seed=-1)
    # within the slider's range but past this model's T=512: the app's own check
    message = _error(client, steps=600)
    assert "Steps must be a whole number between 1 and 512" in message and "T=512" in message
    assert "euler-typo" in _error(client, sampler="euler-typo")


def test_invalid_repo_id_is_reported(client):
    message = _error(client, model="not a repo!")
    assert "not a valid Hub repo id" in message and "namespace/model-name" in message


def test_missing_repo_is_reported(client):
    # The test suite runs with the Hub unreachable (HF_HUB_OFFLINE=1): the message says so, no traceback.
    message = _error(client, model="ddpm-hub-tests/does-not-exist")
    assert "could not download ddpm-hub-tests/does-not-exist from the Hub" in message


def test_visitor_local_path_is_refused_by_default(client, space_app):
    folder = str(space_app.DEFAULT_MODEL_DIR)
    message = _error(client, model=folder)
    assert "looks like a path on the server" in message and "--allow-local-paths" in message
    # a relative folder that is also a valid repo id is looked up on the Hub only, never on disk
    message = _error(client, model="spaces/default-model")
    assert "from the Hub" in message


def test_local_path_is_loaded_when_the_operator_allows_it(local_client, space_app):
    _, singles, _, summary = _generate(local_client, model=str(space_app.DEFAULT_MODEL_DIR))
    assert len(singles) == 2 and "default-model" in summary


def test_allow_local_env_var(space_app, monkeypatch):
    monkeypatch.delenv(space_app.ALLOW_LOCAL_ENV, raising=False)
    assert not space_app.env_allows_local_paths()
    monkeypatch.setenv(space_app.ALLOW_LOCAL_ENV, "1")
    assert space_app.env_allows_local_paths()


def test_checkpoint_needing_a_missing_plugin_names_it(local_client, space_app, tmp_path):
    folder = tmp_path / "needs-plugin"
    shutil.copytree(space_app.DEFAULT_MODEL_DIR, folder)
    index = json.loads((folder / "model_index.json").read_text())
    index["unet"] = ["ddpm_hub_missing_plugin_for_tests", "MissingNet"]
    index["_ddpm_hub_requires"] = {"unet": {"distribution": "ddpm-hub-missing-plugin", "version": "0.3.0"}}
    (folder / "model_index.json").write_text(json.dumps(index))
    message = _error(local_client, model=str(folder))
    assert "needs a plugin" in message and "pip install ddpm-hub-missing-plugin" in message


def test_schedule_plots_come_from_the_models_scheduler(space_app):
    default = space_app.ModelRef("local", str(space_app.DEFAULT_MODEL_DIR))
    beta_df, curves_df, summary = space_app.schedule("", None, allow_local=False, default=default)
    scheduler = space_app.load_model(default).scheduler
    T = scheduler.config.num_train_timesteps
    assert np.allclose(beta_df["value"], scheduler.betas.numpy())
    curves = {name: group["value"].to_numpy() for name, group in curves_df.groupby("curve")}
    alpha_bar = scheduler.alphas_cumprod.numpy()
    assert np.allclose(curves["alpha_bar_t"], alpha_bar)
    assert np.allclose(curves["signal sqrt(alpha_bar_t)"], np.sqrt(alpha_bar))
    assert np.allclose(curves["noise sqrt(1 - alpha_bar_t)"], np.sqrt(1 - alpha_bar))
    assert all(len(v) == T for v in curves.values())
    assert f"T={T}" in summary


def test_schedule_and_forward_process_endpoints(client):
    _, _, summary = client.predict(model="", revision="", api_name="/schedule")
    assert "T=512" in summary
    strip, text = client.predict(
        model="", revision="", image=None, dataset_index=3, t=100, seed=0, api_name="/forward_process"
    )
    assert np.asarray(Image.open(strip)).std() > 5
    assert "t=100" in text and "MNIST-5k digit #3" in text
    with pytest.raises(AppError, match="512|511"):
        client.predict(
            model="", revision="", image=None, dataset_index=3, t=512, seed=0, api_name="/forward_process"
        )


def _panels(strip: Image.Image) -> list[np.ndarray]:
    """The three panels (x_0, eps, x_t) of a forward-process strip."""
    a = np.asarray(strip.convert("L"), dtype=np.float64)
    h, w = a.shape
    factor = (3 * h - w) // 4  # the grid is (S + 4) x (3S + 8) pixels before upscaling by a whole factor
    pad, side = 2 * factor, h - 4 * factor
    return [a[pad : pad + side, pad + k * (side + pad) : pad + k * (side + pad) + side] for k in range(3)]


def test_forward_process_goes_from_image_to_noise(space_app):
    default = space_app.ModelRef("local", str(space_app.DEFAULT_MODEL_DIR))
    opts = dict(allow_local=False, default=default)
    x0, _, xt = _panels(space_app.forward_process("", None, None, 5, 0, 0, **opts)[0])
    assert np.abs(xt - x0).mean() < 0.05 * 255  # t=0: x_t is almost the image
    _, eps, xt = _panels(space_app.forward_process("", None, None, 5, 511, 0, **opts)[0])
    assert np.abs(xt - eps).mean() < 0.02 * 255  # t=T-1: x_t is almost the noise
    # an uploaded image is used instead of the dataset digit, resized to the model's 28x28
    upload = Image.fromarray(np.tile(np.linspace(0, 255, 64, dtype=np.uint8), (64, 1))).convert("RGB")
    x0_up, _, _ = _panels(space_app.forward_process("", None, upload, 5, 0, 0, **opts)[0])
    assert x0_up[:, -5:].mean() > x0_up[:, :5].mean() + 100  # the left-to-right ramp survives


def test_pipelines_are_cached(space_app):
    default = space_app.ModelRef("local", str(space_app.DEFAULT_MODEL_DIR))
    assert space_app.load_model(default) is space_app.load_model(default)
    assert space_app._load_cached.cache_info().maxsize == 4


def test_generate_function_matches_the_pipeline(space_app):
    """The app adds no arithmetic: its images are the pipeline's own, for the same seed."""
    default = space_app.ModelRef("local", str(space_app.DEFAULT_MODEL_DIR))
    _, singles, _, _ = space_app.generate("", "", "dpm-solver++", 4, 2, 3, allow_local=False, default=default)
    pipe = space_app.load_model(default)
    images = pipe(
        batch_size=2,
        generator=torch.Generator().manual_seed(3),
        num_inference_steps=4,
        sampler="dpm-solver++",
        output_type="np",
    ).images
    first = np.asarray(singles[0][0].convert("L"))[::4, ::4]  # undo the 4x nearest upscaling
    assert np.array_equal(first, (images[0, ..., 0] * 255).round().astype(np.uint8))


def test_cli_space_serves_the_app(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen(
        [sys.executable, "-m", "ddpm_hub.cli", "space", "--port", str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env={**os.environ},
    )
    try:
        deadline = time.monotonic() + 240
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/config", timeout=5) as response:
                    config = json.loads(response.read())
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise AssertionError(
                        f"ddpm-hub space did not start:\n{proc.stdout.read().decode()}"
                    ) from None
                time.sleep(1)
        assert config["title"].startswith("ddpm-hub")
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_model_from_the_loopback_hub(hub_server, client, space_app):
    """A model pushed to the (loopback) Hub loads by repo id and revision; Hub errors read as messages."""
    hub = hub_server
    import uuid

    from huggingface_hub import HfApi

    api = HfApi(endpoint=hub.url, token=hub.token)
    repo_id = f"{hub.user}/space-model-{uuid.uuid4().hex[:8]}"
    api.create_repo(repo_id)
    commit = api.upload_folder(folder_path=space_app.DEFAULT_MODEL_DIR, repo_id=repo_id)
    grid, singles, _, summary = _generate(client, model=repo_id)
    assert len(singles) == 2 and repo_id in summary
    local = _generate(client)[0]
    assert np.array_equal(_pixels(grid), _pixels(local))  # the same weights give the same images
    _, singles, _, summary = _generate(client, model=repo_id, revision=commit.oid)
    assert len(singles) == 2 and f"{repo_id}@{commit.oid}" in summary

    assert "no model repo" in _error(client, model=f"{hub.user}/no-such-model-{uuid.uuid4().hex[:8]}")
    assert "has no revision 'no-such-branch'" in _error(client, model=repo_id, revision="no-such-branch")

    needs_plugin = f"{hub.user}/space-needs-plugin-{uuid.uuid4().hex[:8]}"
    api.create_repo(needs_plugin)
    api.upload_folder(folder_path=space_app.DEFAULT_MODEL_DIR, repo_id=needs_plugin)
    index = json.loads((space_app.DEFAULT_MODEL_DIR / "model_index.json").read_text())
    index["unet"] = ["ddpm_hub_missing_plugin_for_tests", "MissingNet"]
    index["_ddpm_hub_requires"] = {"unet": {"distribution": "ddpm-hub-missing-plugin", "version": "0.3.0"}}
    api.upload_file(
        path_or_fileobj=json.dumps(index).encode(), path_in_repo="model_index.json", repo_id=needs_plugin
    )
    assert "pip install ddpm-hub-missing-plugin" in _error(client, model=needs_plugin)


def test_space_readme_front_matter_matches_the_app(space_app):
    import gradio
    import yaml

    readme = (space_app.DEFAULT_MODEL_DIR.parent / "README.md").read_text()
    assert readme.startswith("---\n")
    meta = yaml.safe_load(readme.split("---\n")[1])
    for key in ("title", "emoji", "colorFrom", "colorTo", "short_description", "license"):
        assert meta.get(key), key
    assert meta["sdk"] == "gradio" and meta["sdk_version"] == gradio.__version__
    assert (space_app.DEFAULT_MODEL_DIR.parent / meta["app_file"]).is_file()
    assert len(meta["short_description"]) <= 60  # the Hub's limit


def test_bundled_default_model_is_small_safetensors_with_a_card(space_app):
    folder = space_app.DEFAULT_MODEL_DIR
    files = [p for p in folder.rglob("*") if p.is_file()]
    assert sum(p.stat().st_size for p in files) <= 10 * 1024 * 1024
    assert not [p for p in files if p.suffix in (".bin", ".pt", ".pth", ".ckpt", ".pkl")]
    assert list((folder / "unet").glob("*.safetensors"))
    T = json.loads((folder / "scheduler" / "scheduler_config.json").read_text())["num_train_timesteps"]
    assert f"T={T}" in (folder / "README.md").read_text()  # the card says how the model was made
