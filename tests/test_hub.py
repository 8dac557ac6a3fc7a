"""Push and pull through the Hub: unmodified huggingface_hub / diffusers client code against the loopback
Hub of tests/hub_server.py (the ``hub_server`` fixture)."""

from __future__ import annotations

import http.client
import json
from pathlib import Path

import pytest
import torch
from helpers import sample, tiny_unet, unique_repo
from huggingface_hub import HfApi, ModelCard

from ddpm_hub import DDPMHubPipeline, DDPMHubScheduler, load_pipeline
from ddpm_hub.cli import main as cli_main
from ddpm_hub.hub import HubPushError, push, write_model_card

T = 32  # diffusion steps: small enough that sampling the full reverse loop takes well under a second
TRAIN_INFO = {
    "dataset": "mnist5k",
    "image_size": 8,
    "channels": 1,
    "num_train_steps": 1234,
    "batch_size": 64,
    "learning_rate": 2e-4,
    "num_train_timesteps": T,
    "beta_schedule": "linear",
    "backbone": "unet",
    "num_parameters": 54321,
    "mixed_precision": "bf16",
    "ema_decay": 0.995,
    "hardware": "CPU (test machine)",
    "num_processes": 2,
    "wall_time_s": 754.0,
    "final_loss": 0.0421,
    "ddpm_hub_version": "0.1.0",
    "plugins": [{"distribution": "ddpm-hub-schedules", "version": "0.3.1"}],
}


def make_run(root: Path, seed: int = 0) -> Path:
    """A training run folder as `ddpm-hub train` lays it out, with things a push must leave behind."""
    run = root / f"run-{seed}"
    DDPMHubPipeline(tiny_unet(seed=seed), DDPMHubScheduler(num_train_timesteps=T)).save_pretrained(
        run / "pipeline"
    )
    from PIL import Image

    Image.new("L", (20, 20), 128).save(run / "samples.png")
    Image.new("RGB", (30, 20), (200, 10, 10)).save(run / "loss.png")
    (run / "train_info.json").write_text(json.dumps(TRAIN_INFO))
    (run / "config.yaml").write_text("dataset: mnist5k\n")
    (run / "checkpoints" / "checkpoint-10").mkdir(parents=True)
    (run / "checkpoints" / "checkpoint-10" / "optimizer.bin").write_bytes(b"\x80\x04pickle")
    (run / "checkpoints" / "checkpoint-10" / "model.safetensors").write_bytes(b"x")
    (run / "logs").mkdir()
    (run / "logs" / "events.out.tfevents.1").write_bytes(b"tb")
    (run / "samples").mkdir()
    Image.new("L", (20, 20), 0).save(run / "samples" / "step-10.png")
    return run


@pytest.fixture
def run_dir(tmp_path):
    return make_run(tmp_path)


@pytest.fixture
def cache(tmp_path):
    """An empty Hugging Face cache for this test."""
    return tmp_path / "hf-cache"


# -- the push ---------------------------------------------------------------------------------------


def test_push_uploads_pipeline_card_and_images_never_checkpoints_logs_or_config(hub_server, run_dir):
    repo_id = unique_repo(hub_server.user, "ddpm-mnist")
    info = push(run_dir, repo_id)

    files = hub_server.files(repo_id)
    assert info.oid == hub_server.repo(repo_id).branches["main"]
    assert sorted(files) == [
        ".gitattributes",
        "README.md",
        "ddpm_hub.pipeline.py",  # the code that diffusers' trust_remote_code runs (tests/test_remote_code.py)
        "loss.png",
        "model_index.json",
        "samples.png",
        "scheduler/ddpm_hub.scheduler.py",
        "scheduler/scheduler_config.json",
        "unet/config.json",
        "unet/ddpm_hub.models.unet.py",
        "unet/diffusion_pytorch_model.safetensors",
    ]
    assert files["unet/diffusion_pytorch_model.safetensors"].lfs is not None  # weights travel as LFS
    # the user's run folder is left as it was: the card was written into a staging folder
    assert not (run_dir / "pipeline" / "README.md").exists()

    api = HfApi()
    infos = {i.path: i for i in api.get_paths_info(repo_id, ["unet", "README.md", "nope"])}
    assert sorted(infos) == ["README.md", "unet"] and infos["README.md"].size == files["README.md"].size
    assert api.file_exists(repo_id, "unet/config.json") and not api.file_exists(repo_id, "unet/x.bin")
    assert api.repo_exists(repo_id) and not api.repo_exists(f"{hub_server.user}/nope")
    model = api.model_info(repo_id)
    assert model.library_name == "diffusers"
    assert model.pipeline_tag == "unconditional-image-generation"
    assert {"ddpm", "ddpm-hub", "diffusers", "unconditional-image-generation"} <= set(model.tags)
    assert model.card_data["datasets"] == ["ylecun/mnist"]
    assert model.card_data["license"] == "apache-2.0"


def test_model_card_says_how_it_was_trained_and_how_to_load_it(tmp_path, run_dir):
    path = write_model_card(run_dir / "pipeline", TRAIN_INFO, repo_id="me/ddpm-mnist", license="mit")
    card = ModelCard.load(path)
    assert card.data.library_name == "diffusers"
    assert card.data.license == "mit"
    assert card.data.pipeline_tag == "unconditional-image-generation"
    text = card.text
    for expected in (
        "mnist5k",
        "| training steps | 1234 |",
        "| batch size (global) | 64 |",
        f"| diffusion steps T | {T} |",
        "linear (beta_start=",
        "`unet`, 54.3k parameters",
        "CPU (test machine) x 2 processes",
        "12.6 min",
        "bf16",
        "0.0421",
        "![Samples from this model](samples.png)",
        "![Training loss](loss.png)",
        'pipe = load_pipeline("me/ddpm-mnist")',
        "ddpm-hub sample me/ddpm-mnist",
        "`ddpm-hub-schedules` (trained with 0.3.1)",
        "'ddpm-hub-schedules>=0.3.1'",
        "dpm-solver++",
    ):
        assert expected in text, expected
    # the images the card shows sit next to it
    assert (run_dir / "pipeline" / "samples.png").is_file() and (run_dir / "pipeline" / "loss.png").is_file()

    # without a training record the card says so, and counts the parameters from the weights
    bare = tmp_path / "bare"
    unet = tiny_unet()
    DDPMHubPipeline(unet, DDPMHubScheduler(num_train_timesteps=T)).save_pretrained(bare)
    text = ModelCard.load(write_model_card(bare, None)).text
    assert "No training record" in text
    n = sum(p.numel() for p in unet.parameters())
    assert f"{n / 1e3:.1f}k parameters" in text
    assert "samples.png" not in text


@pytest.mark.parametrize(
    ("prediction_type", "objective"),
    [
        ("epsilon", "the MSE of the predicted added noise"),
        ("v_prediction", "the MSE of the predicted velocity v = sqrt(alpha_bar) * noise"),
        ("sample", "the MSE of the predicted clean image x_0"),
    ],
)
def test_the_card_states_the_objective_of_the_prediction_type(tmp_path, prediction_type, objective):
    folder = tmp_path / prediction_type
    scheduler = DDPMHubScheduler(num_train_timesteps=T, prediction_type=prediction_type)
    DDPMHubPipeline(tiny_unet(), scheduler).save_pretrained(folder)
    text = ModelCard.load(write_model_card(folder, TRAIN_INFO)).text
    assert f"Objective: {objective}" in text and f"| prediction | {prediction_type} |" in text
    assert ("noise" in text.split("Objective:")[1].splitlines()[0]) == (prediction_type != "sample")


def test_the_card_takes_sampler_steps_from_the_registry(run_dir, monkeypatch):
    import dataclasses

    from ddpm_hub import plugins

    registry = plugins._registry("samplers")
    for name, steps in (("ddim", 7), ("dpm-solver++", 9), ("sde-dpm-solver++", 11)):
        monkeypatch.setitem(registry, name, dataclasses.replace(registry[name], default_steps=steps))
    text = ModelCard.load(write_model_card(run_dir / "pipeline", TRAIN_INFO)).text
    assert "`sde-dpm-solver++` (11 steps" in text and "`dpm-solver++` (9 steps" in text
    assert "`ddim` (7 steps" in text and 'sampler="sde-dpm-solver++", num_inference_steps=11)' in text


def test_a_card_written_at_training_time_gets_the_repo_id_when_pushed(hub_server, run_dir):
    write_model_card(run_dir / "pipeline", TRAIN_INFO)  # as training does, before any repo exists
    local = (run_dir / "pipeline" / "README.md").read_text()
    assert 'load_pipeline("NS/NAME")' in local
    repo_id = unique_repo(hub_server.user, "card")
    push(run_dir, repo_id)
    text = hub_server.files(repo_id)["README.md"].content.decode()
    assert f'load_pipeline("{repo_id}")' in text and "NS/NAME" not in text
    assert (run_dir / "pipeline" / "README.md").read_text() == local  # the user's file is untouched


def test_push_settings_are_checked_without_the_network(hub_server, monkeypatch):
    from ddpm_hub.hub import check_push_settings

    check_push_settings(f"{hub_server.user}/model")
    for bad, message in (
        (None, "needs hub_repo_id"),
        ("model", "give the namespace too"),
        ("a b/c", "invalid"),
    ):
        with pytest.raises(ValueError, match=message):
            check_push_settings(bad)
    monkeypatch.delenv("HF_TOKEN")
    with pytest.raises(ValueError, match="needs a Hub token with write access and none is set"):
        check_push_settings(f"{hub_server.user}/model")
    check_push_settings(f"{hub_server.user}/model", push=False)


def test_push_errors_say_what_to_do(hub_server, run_dir, monkeypatch, capsys):
    with pytest.raises(HubPushError, match="cannot write to someone-else/model.*your own namespace"):
        push(run_dir, "someone-else/model")
    with pytest.raises(
        HubPushError, match="needs a Hub token with write access and the Hub rejected your token"
    ):
        push(run_dir, f"{hub_server.user}/model", token="hf_wrong")
    with pytest.raises(SystemExit, match="ddpm-hub push: error: .*is not a pipeline folder"):
        cli_main(["push", str(run_dir / "logs"), "--repo-id", f"{hub_server.user}/model"])
    monkeypatch.delenv("HF_TOKEN")  # checked first, before the folder and the network
    with pytest.raises(HubPushError, match="you are not logged in: log in with `hf auth login`"):
        push(run_dir, f"{hub_server.user}/model")
    with pytest.raises(SystemExit, match="ddpm-hub push: error: .*you are not logged in"):
        cli_main(["push", str(run_dir / "logs"), "--repo-id", f"{hub_server.user}/model"])
    with pytest.raises(
        SystemExit, match="ddpm-hub sample: error: 'bad id!' is neither an existing local folder"
    ):
        cli_main(["sample", "bad id!"])
    with pytest.raises(SystemExit, match="ddpm-hub sample: error: .*not found .*you are not logged in"):
        cli_main(["sample", f"{hub_server.user}/missing", "--num-images", "1"])


# -- the round trip ---------------------------------------------------------------------------------


def test_round_trip_push_then_pull_into_an_empty_cache_gives_the_same_images(hub_server, run_dir, cache):
    repo_id = unique_repo(hub_server.user, "round-trip")
    push(run_dir, repo_id)

    pulled = load_pipeline(repo_id, cache_dir=cache)
    local = load_pipeline(run_dir)
    assert torch.equal(sample(pulled), sample(local))
    assert torch.equal(
        sample(pulled, sampler="ddim", num_inference_steps=8),
        sample(local, sampler="ddim", num_inference_steps=8),
    )
    snapshot = next((cache / f"models--{repo_id.replace('/', '--')}" / "snapshots").iterdir())
    assert not any(p.suffix in (".bin", ".pt", ".pth") for p in snapshot.rglob("*"))


def tiny_train_config(output_dir: Path, **overrides):
    from ddpm_hub.config import load_config

    model = dict(
        base_channels=8,
        channel_mult=[1, 2],
        num_res_blocks=1,
        attention_resolutions=[],
        dropout=0.0,
        norm_num_groups=4,
    )
    values = {
        "output_dir": str(output_dir),
        "max_steps": 4,
        "batch_size": 8,
        "data.max_samples": 64,
        "data.image_size": 8,
        "data.num_workers": 0,
        "model": model,
        "scheduler": {"num_train_timesteps": T},
        "sample_steps": 0,
        "checkpointing_steps": 0,
        "log_with": "none",
        "num_sample_images": 4,
        **overrides,
    }
    return load_config(None, list(values.items()))


def test_train_with_push_to_hub_then_pull_into_an_empty_cache_gives_the_same_images(
    hub_server, tmp_path, cache
):
    from ddpm_hub.train import train

    repo_id = unique_repo(hub_server.user, "trained")
    run = train(tiny_train_config(tmp_path / "run", push_to_hub=True, hub_repo_id=repo_id))
    assert (run / "checkpoints").is_dir()  # left behind, as are logs and config.yaml
    files = hub_server.files(repo_id)
    assert not any(p.startswith(("checkpoints", "logs", "samples/")) or p.endswith(".yaml") for p in files)
    assert {"README.md", "samples.png", "loss.png", "unet/diffusion_pytorch_model.safetensors"} <= set(files)
    card = files["README.md"].content.decode()
    assert f'load_pipeline("{repo_id}")' in card and "| training steps | 4 |" in card
    assert HfApi().list_repo_commits(repo_id)[0].title.startswith("ddpm-hub train: 4 steps on mnist5k")

    pulled = load_pipeline(repo_id, cache_dir=cache)
    assert torch.equal(sample(pulled), sample(load_pipeline(run)))


def test_cli_push_of_a_run_gets_the_commit_message_that_training_gives_it(hub_server, run_dir, tmp_path):
    """`ddpm-hub push RUN` and training's push_to_hub are one function (hub.push): the default commit message
    says what the run did, from its train_info.json; a bare pipeline folder gets the generic one."""
    repo_id = unique_repo(hub_server.user, "cli-message")
    cli_main(["push", str(run_dir), "--repo-id", repo_id])
    steps, dataset, loss = (TRAIN_INFO[k] for k in ("num_train_steps", "dataset", "final_loss"))
    title = HfApi().list_repo_commits(repo_id)[0].title
    assert title == f"ddpm-hub train: {steps} steps on {dataset}, final loss {loss:.4f}"

    bare = tmp_path / "bare"
    DDPMHubPipeline(tiny_unet(), DDPMHubScheduler(num_train_timesteps=T)).save_pretrained(bare)
    push(bare, repo_id)
    assert HfApi().list_repo_commits(repo_id)[0].title.startswith("Upload DDPM pipeline with ddpm-hub (")


def test_push_to_hub_settings_are_checked_before_training(hub_server, tmp_path, monkeypatch):
    from ddpm_hub.config import ConfigError

    with pytest.raises(ConfigError, match="push_to_hub needs hub_repo_id"):
        tiny_train_config(tmp_path / "a", push_to_hub=True).validate()
    with pytest.raises(ConfigError, match="give the namespace too"):
        tiny_train_config(tmp_path / "a", push_to_hub=True, hub_repo_id="model").validate()
    monkeypatch.delenv("HF_TOKEN")
    with pytest.raises(ConfigError, match="needs a Hub token with write access and none is set"):
        tiny_train_config(tmp_path / "a", push_to_hub=True, hub_repo_id="me/model").validate()
    tiny_train_config(tmp_path / "a", hub_repo_id="me/model").validate()  # names the card's repo, no push


def test_push_twice_makes_a_new_commit_and_the_old_revision_still_loads_by_sha(hub_server, tmp_path, cache):
    repo_id = unique_repo(hub_server.user, "twice")
    first = push(make_run(tmp_path, seed=1), repo_id, commit_message="first model")
    second = push(make_run(tmp_path, seed=2), repo_id, commit_message="second model")
    assert first.oid != second.oid
    commits = HfApi().list_repo_commits(repo_id)
    assert [c.title for c in commits[:2]] == ["second model", "first model"]

    old = sample(load_pipeline(repo_id, revision=first.oid, cache_dir=cache))
    new = sample(load_pipeline(repo_id, cache_dir=cache))
    assert torch.equal(old, sample(load_pipeline(tmp_path / "run-1")))
    assert torch.equal(new, sample(load_pipeline(tmp_path / "run-2")))
    assert not torch.equal(old, new)
    # a short sha works too
    assert torch.equal(sample(load_pipeline(repo_id, revision=first.oid[:8], cache_dir=cache)), old)


def test_push_to_a_new_branch_creates_it_and_leaves_main_alone(hub_server, tmp_path, cache):
    repo_id = unique_repo(hub_server.user, "branches")
    main_commit = push(make_run(tmp_path, seed=1), repo_id)
    branch_commit = push(make_run(tmp_path, seed=2), repo_id, revision="exp/cosine")
    refs = {b.name: b.target_commit for b in HfApi().list_repo_refs(repo_id).branches}
    assert refs == {"main": main_commit.oid, "exp/cosine": branch_commit.oid}
    assert torch.equal(
        sample(load_pipeline(repo_id, revision="exp/cosine", cache_dir=cache)),
        sample(load_pipeline(tmp_path / "run-2")),
    )


def test_private_push_and_pull_with_a_token(hub_server, run_dir, cache):
    repo_id = unique_repo(hub_server.user, "private")
    push(run_dir, repo_id, private=True)
    assert hub_server.repo(repo_id).private
    assert torch.equal(sample(load_pipeline(repo_id, cache_dir=cache)), sample(load_pipeline(run_dir)))


def test_cli_push_then_sample_from_the_repo(hub_server, run_dir, tmp_path, capsys):
    repo_id = unique_repo(hub_server.user, "cli")
    assert (
        cli_main(
            [
                "push",
                str(run_dir),
                "--repo-id",
                repo_id,
                "--revision",
                "v1",
                "--commit-message",
                "from the cli",
            ]
        )
        == 0
    )
    sha = hub_server.repo(repo_id).branches["v1"]
    assert sha in capsys.readouterr().out
    assert HfApi().list_repo_commits(repo_id, revision="v1")[0].title == "from the cli"
    out = tmp_path / "grid.png"
    assert (
        cli_main(
            [
                "sample",
                repo_id,
                "--revision",
                "v1",
                "--num-images",
                "4",
                "--steps",
                "8",
                "--sampler",
                "ddim",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    from PIL import Image

    assert Image.open(out).size[0] > 8


def test_push_refuses_an_invalid_repo_id(tmp_path):
    with pytest.raises(ValueError, match="invalid Hub repo id"):
        push(tmp_path, "bad id!")


# -- the loopback Hub itself ------------------------------------------------------------------------


def test_loopback_hub_never_sends_a_body_on_head_errors(hub_server):
    host, port = hub_server.url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=10)
    conn.request("HEAD", f"/{hub_server.user}/no-such-model/resolve/main/model_index.json")
    response = conn.getresponse()
    assert response.status == 401 and response.getheader("X-Error-Code") == "RepoNotFound"
    assert response.read() == b"" and response.getheader("Content-Length") == "0"
    conn.request("GET", "/api/whoami-v2", headers={"Authorization": f"Bearer {hub_server.token}"})
    response = conn.getresponse()  # the same keep-alive connection still works
    assert json.loads(response.read())["name"] == hub_server.user
    conn.close()


def test_the_card_check_asks_the_hub_that_gets_the_push(hub_server, run_dir, monkeypatch):
    # huggingface_hub before 2.x posts RepoCard.validate to huggingface.co whatever HF_ENDPOINT says
    import ddpm_hub.hub as hub_module

    asked = []
    session = hub_module.get_session()  # huggingface_hub's shared client
    post = session.post

    def recorded(url, *args, **kwargs):
        asked.append(str(url))
        return post(url, *args, **kwargs)

    monkeypatch.setattr(session, "post", recorded)
    repo_id = unique_repo(hub_server.user, "validated")
    push(run_dir, repo_id)
    assert {u for u in asked if "validate-yaml" in u} == {f"{hub_server.url}/api/validate-yaml"}
    assert not [u for u in asked if "huggingface.co" in u]
