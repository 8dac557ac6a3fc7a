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

FAST = dict(model="", revision="", sampler="ddim", steps=8, num_images=2, seed=0)


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
    assert params == [
        "model",
        "revision",
        "sampler",
        "steps",
        "num_images",
        "seed",
        "digit",
        "guidance_scale",
    ]


def test_generate_returns_the_requested_images_and_trajectory(client):
    grid, singles, trajectory, summary = _generate(client, num_images=3)
    assert len(singles) == 3
    assert np.asarray(Image.open(grid)).std() > 5  # the grid is not blank
    # the trajectory: x_t and the predicted x_0 at 6 of the 8 steps (API_TRAJECTORY_FRAMES), first and last included
    captions = [item["caption"] for item in trajectory]
    assert len(captions) == 12
    assert captions[0] == "x after step 1/8 (t=511)" and captions[1] == "predicted x0 at t=511"
    assert captions[-2].startswith("x after step 8/8")
    assert "3 images" in summary and "ddim" in summary


def _pixels(path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("L"), dtype=np.int16)


def test_same_seed_gives_the_same_images(client):
    first, second, other = (_generate(client, seed=s)[0] for s in (7, 7, 8))
    assert np.array_equal(_pixels(first), _pixels(second))
    assert not np.array_equal(_pixels(first), _pixels(other))


def test_out_of_range_inputs_give_a_message_not_a_traceback(client):
    assert "maximum value 16" in _error(client, num_images=17)  # the sliders' bounds, checked by gradio
    assert "minimum value" in _error(client, steps=0)
    assert "minimum value 0" in _error(client, seed=-1)
    # within the slider's range but past this model's T=512: the sampler's registry entry bounds it
    message = _error(client, steps=600)
    assert "takes between 8 and 512 steps" in message and "T=512" in message
    assert "minimum value 5" in _error(
        client, steps=2
    )  # the lowest of the samplers' min_steps (dpm-solver++'s)
    assert "euler-typo" in _error(client, sampler="euler-typo")


def test_invalid_repo_id_is_reported(client):
    message = _error(client, model="not a repo!")
    assert "is not a model name this Space can load" in message and "namespace/model-name" in message


def test_missing_repo_is_reported(client):
    # The test suite runs with the Hub unreachable (HF_HUB_OFFLINE=1): the message says so in the visitor's
    # words (no cache folder, no environment variable), no traceback.
    message = _error(client, model="ddpm-hub-tests/does-not-exist")
    assert "The Hugging Face Hub cannot be reached from this Space right now" in message
    assert "ddpm-hub-tests/does-not-exist" in message
    assert "HF_HUB_OFFLINE" not in message and os.environ["HF_HOME"] not in message


def test_visitor_local_path_is_refused_by_default(client, space_app):
    folder = str(space_app.DEFAULT_MODEL_DIR)
    message = _error(client, model=folder)
    # one message for the visitor: no operator switches, no hint about the server's files
    assert "is not a model name this Space can load" in message and "--allow-local-paths" not in message
    message = _error(client, model="/etc/passwd")
    assert "'/etc/passwd' is not a model name this Space can load" in message and "server" not in message
    # a relative folder that is also a valid repo id is looked up on the Hub only, never on disk
    message = _error(client, model="spaces/default-model")
    assert "Hub cannot be reached" in message


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
    scheduler = space_app.load_model(default).pipe.scheduler
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


def test_pipelines_are_cached(space_app, tmp_path):
    default = space_app.ModelRef("local", str(space_app.DEFAULT_MODEL_DIR))
    assert space_app.load_model(default).pipe is space_app.load_model(default).pipe
    assert space_app.PIPELINES.size == space_app.CACHED_PIPELINES
    # a local training run: its checkpoints and logs changing does not reload it; a re-saved pipeline does
    run = tmp_path / "run"
    shutil.copytree(space_app.DEFAULT_MODEL_DIR, run / "pipeline")
    ref = space_app.ModelRef("local", str(run))
    first = space_app.load_model(ref).pipe
    (run / "logs.txt").write_text("step 10")
    assert space_app.load_model(ref).pipe is first
    later = time.time() + 10
    os.utime(run / "pipeline" / "model_index.json", (later, later))
    assert space_app.load_model(ref).pipe is not first


def test_generate_function_matches_the_pipeline(space_app):
    """The app adds no arithmetic: its images are the pipeline's own, for the same seed."""
    default = space_app.ModelRef("local", str(space_app.DEFAULT_MODEL_DIR))
    _, singles, _, _ = space_app.generate("", "", "dpm-solver++", 5, 2, 3, allow_local=False, default=default)
    pipe = space_app.load_model(default).pipe
    images = pipe(
        batch_size=2,
        generator=torch.Generator().manual_seed(3),
        num_inference_steps=5,
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

    assert "There is no model" in _error(client, model=f"{hub.user}/no-such-model-{uuid.uuid4().hex[:8]}")
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


def test_the_model_box_names_the_operators_default_model(space_app, hub_server, tmp_path):
    """`ddpm-hub space --model user/name` shows "default (user/name)", not the bundled model's label, and that
    label (or the old one) loads the operator's default; the bundled default keeps its description."""
    import uuid

    from huggingface_hub import HfApi

    def model_box(demo):
        return next(b for b in demo.blocks.values() if getattr(b, "elem_id", None) == "model")

    assert model_box(space_app.build_demo()).value == space_app.DEFAULT_MODEL_LABEL
    repo_id = f"{hub_server.user}/space-default-{uuid.uuid4().hex[:8]}"
    HfApi(endpoint=hub_server.url, token=hub_server.token).create_repo(repo_id)
    box = model_box(space_app.build_demo(default_model=repo_id))
    assert box.value == f"default ({repo_id})" and box.choices[0][0] == f"default ({repo_id})"
    default = space_app.operator_default(repo_id)
    for label in (box.value, space_app.DEFAULT_MODEL_LABEL, ""):
        assert space_app.resolve_model(label, None, allow_local=False, default=default) == default
    folder = tmp_path / "my-model"
    shutil.copytree(space_app.DEFAULT_MODEL_DIR, folder)
    assert model_box(space_app.build_demo(default_model=folder)).value == f"default ({folder})"


def test_a_default_model_that_cannot_load_stops_the_space_before_it_serves(space_app, hub_server):
    """The operator's --model is loaded before serving: a repo that does not exist is a clear error (exit 2 from
    `ddpm-hub space`, nothing served); the bundled model loads."""
    import uuid

    missing = f"{hub_server.user}/no-such-default-{uuid.uuid4().hex[:8]}"
    with pytest.raises(space_app.SpaceInputError, match="There is no model"):
        space_app.check_default_model(space_app.operator_default(missing))
    assert space_app.check_default_model(space_app.operator_default(None)) is None
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    proc = subprocess.run(
        [sys.executable, "-m", "ddpm_hub.cli", "space", "--model", missing, "--port", str(port)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert f"ddpm-hub space: error: --model: There is no model '{missing}' on the Hub" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_a_default_model_out_of_reach_is_a_warning_not_a_crash(space_app):
    """Offline (this suite's default) and not in the cache: it cannot load *now*, so a warning; the Space
    still starts and its visitors read why."""
    warning = space_app.check_default_model(space_app.ModelRef("hub", "nobody/not-cached"))
    assert warning.startswith("the default model nobody/not-cached cannot be loaded now")
    assert "cannot be reached" in warning


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


@pytest.mark.parametrize("name", ["default-model", "cond-model"])
def test_bundled_model_cards_describe_their_own_training(space_app, name):
    """The hand-finished cards of the bundled models keep the generated card's facts about the weights beside
    them: the prediction type and its objective (a retrained model must not keep its predecessor's)."""
    from ddpm_hub.hub import _objective

    folder = space_app.DEFAULT_MODEL_DIR.parent / name
    scheduler = json.loads((folder / "scheduler" / "scheduler_config.json").read_text())
    card = (folder / "README.md").read_text()
    assert f"| prediction | {scheduler['prediction_type']} |" in card
    assert f"Objective: {_objective(scheduler)}, on images scaled to [-1, 1]." in card


# --- models from the (loopback) Hub: resolved to a commit per request, loaded by ddpm_hub.load_pipeline -------


def _new_repo(hub, api, name: str) -> str:
    import uuid

    repo_id = f"{hub.user}/{name}-{uuid.uuid4().hex[:8]}"
    api.create_repo(repo_id)
    return repo_id


def test_a_new_push_to_main_is_served_without_a_restart(hub_server, client, space_app, tmp_path, monkeypatch):
    from huggingface_hub import HfApi
    from safetensors.torch import load_file, save_file

    api = HfApi(endpoint=hub_server.url, token=hub_server.token)
    repo_id = _new_repo(hub_server, api, "space-pushed")
    first = api.upload_folder(folder_path=space_app.DEFAULT_MODEL_DIR, repo_id=repo_id)
    grid_1, _, _, summary = _generate(client, model=repo_id)
    assert f"commit {first.oid[:8]}" in summary

    # push new weights to main: the running Space serves them on the next request
    weights = next((space_app.DEFAULT_MODEL_DIR / "unet").glob("*.safetensors"))
    state = {k: v * 0.5 if v.is_floating_point() else v for k, v in load_file(weights).items()}
    save_file(state, tmp_path / weights.name)
    second = api.upload_file(
        path_or_fileobj=tmp_path / weights.name, path_in_repo=f"unet/{weights.name}", repo_id=repo_id
    )
    grid_2, _, _, summary = _generate(client, model=repo_id)
    assert f"commit {second.oid[:8]}" in summary
    assert not np.array_equal(_pixels(grid_1), _pixels(grid_2))
    # the first commit is still there by its id, and gives the first images (from the cache)
    loads = space_app.PIPELINES.loads
    grid_3, _, _, _ = _generate(client, model=repo_id, revision=first.oid)
    assert np.array_equal(_pixels(grid_1), _pixels(grid_3))
    assert space_app.PIPELINES.loads == loads  # cached by commit: not loaded again
    _generate(client, model=repo_id)
    assert space_app.PIPELINES.loads == loads  # main is still at the second commit: cached too

    # the Hub out of reach: the commit main pointed at last is still served
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    grid_4, _, _, summary = _generate(client, model=repo_id)
    assert f"commit {second.oid[:8]}" in summary and np.array_equal(_pixels(grid_2), _pixels(grid_4))


def test_a_repo_that_is_not_a_pipeline_is_refused_from_its_file_list(hub_server, client):
    from huggingface_hub import HfApi

    api = HfApi(endpoint=hub_server.url, token=hub_server.token)
    repo_id = _new_repo(hub_server, api, "space-not-a-pipeline")
    api.upload_file(path_or_fileobj=b"{}", path_in_repo="config.json", repo_id=repo_id)
    api.upload_file(
        path_or_fileobj=os.urandom(2 * 1024 * 1024), path_in_repo="model.safetensors", repo_id=repo_id
    )
    before = len(hub_server.state.requests)
    message = _error(client, model=repo_id)
    assert f"'{repo_id}' is not a diffusion pipeline this Space can load" in message
    assert "nothing was downloaded" in message
    requests = hub_server.state.requests[before:]
    assert requests and not [path for _, path in requests if "/resolve/" in path]  # only the file list


def test_a_pickle_only_repo_is_refused_with_the_reason(hub_server, client, space_app):
    from huggingface_hub import HfApi

    api = HfApi(endpoint=hub_server.url, token=hub_server.token)
    repo_id = _new_repo(hub_server, api, "space-pickled")
    folder = space_app.DEFAULT_MODEL_DIR
    for path in ("model_index.json", "scheduler/scheduler_config.json", "unet/config.json"):
        api.upload_file(path_or_fileobj=folder / path, path_in_repo=path, repo_id=repo_id)
    api.upload_file(
        path_or_fileobj=b"\x80\x04pickle", path_in_repo="unet/diffusion_pytorch_model.bin", repo_id=repo_id
    )
    before = len(hub_server.state.requests)
    message = _error(client, model=repo_id)
    assert "has its weights as pickle files only" in message and "safetensors" in message
    assert os.environ["HF_HOME"] not in message and "/tmp" not in message  # no server path
    assert not [path for _, path in hub_server.state.requests[before:] if "/resolve/" in path]


# --- the page's own functions -----------------------------------------------------------------------------


def test_generation_streams_frames_before_the_run(space_app):
    default = space_app.ModelRef("local", str(space_app.DEFAULT_MODEL_DIR))
    items = list(space_app.generate_stream("", "", "ddim", 8, 2, 0, allow_local=False, default=default))
    *batches, run = items
    assert isinstance(run, space_app.Run) and all(isinstance(b, list) for b in batches)
    frames = [f for b in batches for f in b]
    assert [f.step for f in frames] == [1, 2, 3, 4, 5, 6, 7, 8] == [f.step for f in run.frames]
    assert run.images.shape == (2, 1, 28, 28) and frames[0].x0.shape == (2, 1, 28, 28)
    # x_0 comes from the pipeline's callback: the last frame's x_t is the final image
    final = space_app._to_uint8(torch.from_numpy(frames[-1].sample).float() / 127.5 - 1)
    assert np.array_equal(final, run.images)
    # a long run keeps MAX_FRAMES evenly spaced steps, the first and the last among them
    kept = sorted(space_app.recorded_steps(512))
    assert len(kept) == space_app.MAX_FRAMES and kept[0] == 0 and kept[-1] == 511


def test_a_fast_run_still_streams_several_pictures(space_app):
    """However far the page lags behind the sampler, one update carries at most a few steps."""
    from types import SimpleNamespace

    class InstantPipe:
        def __call__(self, *, batch_size, num_inference_steps, callback_on_step_end, **_):
            x = torch.zeros(batch_size, 1, 4, 4)
            for i in range(num_inference_steps):
                callback_on_step_end(self, i, 999 - i, {"sample": x, "pred_original_sample": x})
            return SimpleNamespace(images=x)

    stream = space_app._sample(InstantPipe(), sampler="ddim", steps=20, n=2, seed=0)
    batches = [next(stream)]
    time.sleep(0.5)  # the sampler is done: every frame waits in the queue
    *rest, images = list(stream)
    batches += rest
    assert images.shape == (2, 1, 4, 4)
    assert [f.step for b in batches for f in b] == list(range(1, 21))
    assert len(batches) >= space_app.LIVE_UPDATES and max(len(b) for b in batches) <= 20 // 8


def test_the_reproduce_line_makes_the_same_grid(space_app, tmp_path, monkeypatch):
    import shlex

    default = space_app.ModelRef("local", str(space_app.DEFAULT_MODEL_DIR))
    *_, run = space_app.generate_stream("", "", "ddim", 8, 3, 11, allow_local=False, default=default)
    assert run.command == (
        "ddpm-hub sample spaces/default-model --sampler ddim --steps 8 --num-images 3 --seed 11 --out grid.png"
    )
    argv = shlex.split(run.command.replace("--out grid.png", f"--out {tmp_path / 'grid.png'}"))
    monkeypatch.setenv("SPACE_ID", "someone/ddpm-space")  # deployed: the line fetches the bundled model first
    assert space_app.reproduce_command(run, default).startswith(
        "hf download someone/ddpm-space --repo-type space --include 'default-model/*' --local-dir ddpm-space "
        "&& ddpm-hub sample ddpm-space/default-model --sampler ddim"
    )
    repo = space_app.DEFAULT_MODEL_DIR.parents[1]
    subprocess.run(
        [sys.executable, "-m", "ddpm_hub.cli", *argv[1:]], cwd=repo, check=True, capture_output=True
    )
    from_cli = np.asarray(Image.open(tmp_path / "grid.png"))
    downloaded = np.asarray(Image.open(space_app.grid_file(run)))
    factor = downloaded.shape[0] // from_cli.shape[0]
    assert np.array_equal(
        downloaded[::factor, ::factor], from_cli
    )  # the download is the CLI's grid, enlarged


def test_sampler_labels_and_step_bounds_come_from_the_registry(space_app):
    from ddpm_hub.plugins import get_samplers

    for name, entry in get_samplers().items():
        label = space_app.sampler_label(name)
        assert (f"{entry.default_steps} steps" if entry.default_steps else "all T steps") in label
        low, default, high = space_app.step_bounds(name, 512)
        assert (low, high) == (min(entry.min_steps, 512), 512) and low <= default <= high
    assert space_app.step_bounds("ddpm", 100)[1:] == (100, 100)


def test_an_upload_keeps_its_colour_and_size_or_says_why_not(space_app):
    default = space_app.ModelRef("local", str(space_app.DEFAULT_MODEL_DIR))
    opts = dict(allow_local=False, default=default)
    red = Image.new("RGB", (60, 40), (200, 30, 30))
    strip, text = space_app.forward_process("", None, red, 0, 0, 0, **opts)
    assert "your image (colour, 60x40)" in text
    x0 = np.asarray(strip.convert("RGB"))[10:-10, 10 : strip.width // 3 - 10]
    assert (x0[..., 0].astype(int) - x0[..., 2]).min() > 100  # still red at t=0
    big = Image.new("RGBA", (1024, 800), (0, 0, 255, 0))
    _, text = space_app.forward_process("", None, big, 0, 0, 0, **opts)
    assert "transparent parts shown on white" in text and "from 1024x800 to 512x400" in text
