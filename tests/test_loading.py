"""ddpm_hub.loading: load_pipeline from a local folder or a Hub repo, and every way that can fail.

Hub repos are made with plain huggingface_hub / diffusers client code against the loopback Hub of
tests/hub_server.py (the ``hub_server`` fixture), so that loading is tested without ddpm-hub's push.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import DDPMPipeline, DDPMScheduler, UNet2DModel
from helpers import sample, tiny_unet, unique_repo
from huggingface_hub import HfApi

from ddpm_hub import DDPMHubPipeline, DDPMHubScheduler, UNet, load_pipeline
from ddpm_hub.loading import PICKLE_SUFFIXES, HubLoadError, check_repo_files

T = 32  # diffusion steps: the full reverse loop of a tiny UNet takes well under a second


def tiny_pipeline(seed: int = 0) -> DDPMHubPipeline:
    return DDPMHubPipeline(tiny_unet(seed=seed), DDPMHubScheduler(num_train_timesteps=T))


def upload(repo_id: str, folder: Path, private: bool = False):
    api = HfApi()
    api.create_repo(repo_id, private=private)
    return api.upload_folder(repo_id=repo_id, folder_path=folder)


@pytest.fixture
def cache(tmp_path):
    """An empty Hugging Face cache for this test."""
    return tmp_path / "hf-cache"


@pytest.fixture
def folder(tmp_path) -> Path:
    """A saved ddpm-hub pipeline folder."""
    tiny_pipeline().save_pretrained(tmp_path / "pipeline")
    return tmp_path / "pipeline"


# -- local folders ----------------------------------------------------------------------------------


def test_a_run_folder_loads_its_pipeline(folder):
    run = folder.parent
    assert torch.equal(sample(load_pipeline(run)), sample(load_pipeline(folder)))
    assert torch.equal(sample(load_pipeline(str(folder))), sample(tiny_pipeline()))


def test_loads_a_stock_diffusers_ddpm_folder(tmp_path):
    unet = UNet2DModel(
        sample_size=16,
        in_channels=3,
        out_channels=3,
        block_out_channels=(16, 32),
        down_block_types=("DownBlock2D", "AttnDownBlock2D"),
        up_block_types=("AttnUpBlock2D", "UpBlock2D"),
        layers_per_block=1,
        norm_num_groups=8,
    )
    stock = DDPMPipeline(unet=unet, scheduler=DDPMScheduler(num_train_timesteps=1000))
    stock.set_progress_bar_config(disable=True)
    stock.save_pretrained(tmp_path)
    loaded = load_pipeline(tmp_path)
    loaded.set_progress_bar_config(disable=True)
    assert isinstance(loaded, DDPMHubPipeline) and isinstance(loaded.unet, UNet2DModel)
    stock = DDPMPipeline.from_pretrained(tmp_path)  # diffusers' own loader, same folder
    stock.set_progress_bar_config(disable=True)
    gen = torch.Generator().manual_seed
    a = stock(batch_size=1, generator=gen(0), num_inference_steps=12, output_type="np").images
    b = loaded(batch_size=1, generator=gen(0), num_inference_steps=12, output_type="np").images
    np.testing.assert_array_equal(a, b)
    images = loaded(batch_size=1, sampler="ddim", num_inference_steps=8, output_type="pt").images
    assert images.shape == (1, 3, 16, 16)


def test_incomplete_or_unsafe_folders_are_refused(folder, tmp_path):
    with pytest.raises(FileNotFoundError, match=r"not a pipeline folder: it has no model_index.json"):
        load_pipeline(tmp_path / "pipeline" / "unet")
    weights = folder / "unet" / "diffusion_pytorch_model.safetensors"
    weights.rename(weights.with_suffix(".bin"))
    with pytest.raises(ValueError, match=r"weights only as pickle files \(diffusion_pytorch_model.bin\)"):
        load_pipeline(folder)
    weights.with_suffix(".bin").unlink()
    with pytest.raises(FileNotFoundError, match=r"unet/ has no .safetensors weights"):
        load_pipeline(folder)


@pytest.mark.parametrize("suffix", PICKLE_SUFFIXES)
def test_one_pickle_list_for_folders_and_repo_file_lists(folder, suffix):
    """A pickle-only unet is refused the same way from a local folder and from a repo's file list."""
    weights = folder / "unet" / "diffusion_pytorch_model.safetensors"
    weights.rename(weights.with_suffix(suffix))
    with pytest.raises(ValueError, match=rf"only as pickle files \(diffusion_pytorch_model\{suffix}\)"):
        load_pipeline(folder)
    files = ["model_index.json", "unet/config.json", f"unet/diffusion_pytorch_model{suffix}"]
    with pytest.raises(HubLoadError, match=r"only as pickle files .*nothing was downloaded") as err:
        check_repo_files(files, "me/model")
    assert err.value.reason == "pickle_only"


def test_invalid_repo_id_and_missing_local_folder(tmp_path):
    with pytest.raises(ValueError, match="neither an existing local folder nor a valid Hub repo id"):
        load_pipeline("not a repo!")
    with pytest.raises(ValueError, match="neither an existing local folder nor a valid Hub repo id"):
        load_pipeline("a/b/c")
    with pytest.raises(FileNotFoundError, match="no pipeline folder at"):
        load_pipeline(tmp_path / "missing")
    with pytest.raises(FileNotFoundError, match="no pipeline folder at"):
        load_pipeline("./missing")


def test_hub_load_error_is_still_importable_from_ddpm_hub_hub():
    from ddpm_hub import hub

    assert hub.HubLoadError is HubLoadError


# -- Hub repos --------------------------------------------------------------------------------------


def test_offline_loads_from_the_cache(hub_server, folder, cache, monkeypatch):
    import huggingface_hub.constants

    repo_id = unique_repo(hub_server.user, "offline")
    info = upload(repo_id, folder)
    online = sample(load_pipeline(repo_id, cache_dir=cache))
    load_pipeline(repo_id, revision=info.oid, cache_dir=cache)

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    n_requests = len(hub_server.state.requests)
    assert torch.equal(sample(load_pipeline(repo_id, cache_dir=cache)), online)
    assert torch.equal(sample(load_pipeline(repo_id, revision=info.oid, cache_dir=cache)), online)
    assert len(hub_server.state.requests) == n_requests  # not one request went out

    with pytest.raises(HubLoadError, match="not in the local cache .* offline mode is on") as err:
        load_pipeline(repo_id, cache_dir=cache.parent / "other-cache")
    assert err.value.reason == "offline_not_cached"


def test_hub_down_loads_from_the_cache_or_says_it_cannot_be_reached(hub_server, folder, cache, monkeypatch):
    repo_id = unique_repo(hub_server.user, "outage")
    upload(repo_id, folder)
    online = sample(load_pipeline(repo_id, cache_dir=cache))
    monkeypatch.setattr(hub_server.state, "outage", 503)
    assert torch.equal(sample(load_pipeline(repo_id, cache_dir=cache)), online)
    with pytest.raises(HubLoadError, match=r"not in the local cache .* cannot be reached \(.*503") as err:
        load_pipeline(repo_id, cache_dir=cache.parent / "other-cache")
    assert err.value.reason == "offline_not_cached"


def test_repo_not_found(hub_server, cache):
    with pytest.raises(HubLoadError, match="was not found on http://127.0.0.1.*check the repo id") as err:
        load_pipeline(f"{hub_server.user}/no-such-model", cache_dir=cache)
    assert err.value.reason == "repo_not_found"


def test_revision_not_found(hub_server, folder, cache):
    repo_id = unique_repo(hub_server.user, "revisions")
    upload(repo_id, folder)
    with pytest.raises(HubLoadError, match="has no revision 'v9'.*branch, tag or commit sha") as err:
        load_pipeline(repo_id, revision="v9", cache_dir=cache)
    assert err.value.reason == "revision_not_found"


def test_private_repo_without_a_token_needs_authentication(hub_server, folder, cache, monkeypatch):
    repo_id = unique_repo(hub_server.user, "secret")
    upload(repo_id, folder, private=True)
    assert torch.equal(sample(load_pipeline(repo_id, cache_dir=cache)), sample(tiny_pipeline()))
    monkeypatch.delenv("HF_TOKEN")
    with pytest.raises(
        HubLoadError, match="private and needs authentication: you are not logged in.*hf auth login"
    ) as err:
        load_pipeline(repo_id, cache_dir=cache.parent / "other-cache")
    assert err.value.reason == "authentication"
    with pytest.raises(HubLoadError, match="refused the token") as err:
        load_pipeline(repo_id, cache_dir=cache.parent / "other-cache", token="hf_not_a_valid_token")
    assert err.value.reason == "authentication"


def test_pickle_only_repo_is_refused_without_downloading_the_pickle(hub_server, tmp_path, cache):
    folder = tmp_path / "pickled"
    tiny_pipeline().save_pretrained(folder, safe_serialization=False)
    assert (folder / "unet" / "diffusion_pytorch_model.bin").is_file()
    repo_id = unique_repo(hub_server.user, "pickled")
    upload(repo_id, folder)

    n_requests = len(hub_server.state.requests)
    with pytest.raises(
        HubLoadError, match=r"only as pickle files \(unet/diffusion_pytorch_model.bin\).*safetensors only"
    ) as err:
        load_pipeline(repo_id, cache_dir=cache)
    assert err.value.reason == "pickle_only"
    assert not any("/resolve/" in path for _, path in hub_server.state.requests[n_requests:])
    assert not cache.exists() or not list(cache.rglob("*.bin"))


def test_incomplete_pipeline_repo(hub_server, folder, tmp_path, cache):
    (folder / "scheduler" / "scheduler_config.json").unlink()
    repo_id = unique_repo(hub_server.user, "incomplete")
    upload(repo_id, folder)
    with pytest.raises(
        HubLoadError, match="not a complete pipeline.*the scheduler/ folder is missing"
    ) as err:
        load_pipeline(repo_id, cache_dir=cache)
    assert err.value.reason == "incomplete"

    no_index = tmp_path / "no-index"
    (no_index / "unet").mkdir(parents=True)
    (no_index / "unet" / "config.json").write_text("{}")
    repo_id = unique_repo(hub_server.user, "not-a-pipeline")
    upload(repo_id, no_index)
    n_requests = len(hub_server.state.requests)
    with pytest.raises(HubLoadError, match="is not a diffusers pipeline: it has no model_index.json"):
        load_pipeline(repo_id, cache_dir=cache)
    assert not any("/resolve/" in path for _, path in hub_server.state.requests[n_requests:])


# -- repos pushed by diffusers' own push_to_hub -----------------------------------------------------


def test_stock_diffusers_ddpm_pipeline_pushed_by_diffusers_loads(hub_server, cache):
    torch.manual_seed(0)
    unet = UNet2DModel(
        sample_size=8,
        in_channels=1,
        out_channels=1,
        block_out_channels=(8, 16),
        layers_per_block=1,
        down_block_types=("DownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "UpBlock2D"),
        norm_num_groups=4,
    )
    stock = DDPMPipeline(unet=unet, scheduler=DDPMScheduler(num_train_timesteps=T))
    repo_id = unique_repo(hub_server.user, "ddpm-stock")
    stock.push_to_hub(repo_id)  # diffusers' own upload: create_repo, model card, upload_folder
    assert "model_index.json" in hub_server.files(repo_id)

    pipe = load_pipeline(repo_id, cache_dir=cache)
    assert type(pipe.unet).__name__ == "UNet2DModel" and type(pipe.scheduler).__name__ == "DDPMScheduler"
    expected = stock(
        batch_size=2, generator=torch.Generator().manual_seed(0), num_inference_steps=T, output_type="np"
    ).images
    got = pipe(batch_size=2, generator=torch.Generator().manual_seed(0), output_type="np").images
    assert expected.shape == got.shape == (2, 8, 8, 1)
    assert abs(expected - got).max() < 1e-5


def test_ddpm_hub_pipeline_pushed_with_diffusers_push_to_hub_loads(hub_server, cache):
    pipe = tiny_pipeline(3)
    repo_id = unique_repo(hub_server.user, "diffusers-push")
    pipe.push_to_hub(repo_id)
    assert torch.equal(sample(load_pipeline(repo_id, cache_dir=cache)), sample(pipe))


def test_loading_never_patches_torch_process_wide(tmp_path, monkeypatch):
    # accelerate's init_empty_weights patches nn.Module.register_parameter for the whole process: two loads
    # overlapping in a Space's worker threads once left it patched, and every later model was on "meta"
    import accelerate

    def patched_process_wide(*args, **kwargs):
        raise AssertionError("load_pipeline used accelerate.init_empty_weights")

    monkeypatch.setattr(accelerate, "init_empty_weights", patched_process_wide)
    tiny_pipeline().save_pretrained(tmp_path / "pipe")
    pipe = load_pipeline(tmp_path / "pipe")
    assert {p.device.type for p in pipe.unet.parameters()} == {"cpu"}
    assert (
        UNet(
            sample_size=8,
            in_channels=1,
            base_channels=8,
            channel_mult=(1,),
            attention_resolutions=(),
            norm_num_groups=4,
        ).conv_in.weight.device.type
        == "cpu"
    )
