"""The DiT backbone: the backbone contract, adaLN-Zero, patch-size errors, save/load, and that it learns."""

import json

import pytest
import torch
from ddpm_hub_dit import DiT, DiTOutput

from ddpm_hub import DDPMHubPipeline, DDPMHubScheduler, load_pipeline, plugins

TINY = dict(patch_size=4, hidden_size=32, depth=2, num_heads=2, frequency_embedding_size=32)


def nudge(model):
    """Move every zero-initialised (adaLN-Zero) weight off zero, as training would."""
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.02 * torch.randn(p.shape, generator=g))
    return model


@pytest.mark.parametrize("channels", [1, 3])
def test_output_shape_and_contract(channels):
    model = DiT(sample_size=16, in_channels=channels, **TINY)
    assert (model.config.sample_size, model.config.in_channels, model.config.out_channels) == (
        16,
        channels,
        channels,
    )
    x = torch.randn(3, channels, 16, 16)
    out = model(x, torch.tensor([0, 10, 99]))
    assert isinstance(out, DiTOutput) and out.sample.shape == x.shape
    assert model(x, 5, return_dict=False)[0].shape == x.shape  # scalar timestep, tuple output
    assert model(x, torch.tensor(5.0)).sample.shape == x.shape  # float tensor timestep


def test_out_channels_and_non_square_images():
    model = DiT(sample_size=(8, 16), in_channels=3, out_channels=6, **TINY)
    assert model(torch.randn(2, 3, 8, 16), 1).sample.shape == (2, 6, 8, 16)


def test_adaln_zero_starts_at_zero_output_and_identity_blocks():
    model = DiT(sample_size=16, in_channels=1, **TINY)
    x = torch.randn(2, 1, 16, 16)
    assert torch.count_nonzero(model(x, 3).sample) == 0
    tokens, c = model.patchify(x), torch.randn(2, 32)
    torch.testing.assert_close(model.blocks[0](tokens, c), tokens)


def test_timestep_conditions_the_output():
    model = nudge(DiT(sample_size=16, in_channels=1, **TINY))
    x = torch.randn(2, 1, 16, 16)
    assert not torch.allclose(model(x, 1).sample, model(x, 400).sample, atol=1e-4)
    # per-sample timesteps: each image gets its own conditioning
    both = model(x, torch.tensor([1, 400])).sample
    torch.testing.assert_close(both[1], model(x, 400).sample[1])


def test_patchify_unpatchify_round_trip():
    model = DiT(sample_size=(8, 12), in_channels=3, **TINY)
    p = 4
    x = torch.randn(2, 3, 8, 12)
    # unpatchify is the inverse of cutting the image into p x p patches in raster order
    patches = x.unfold(2, p, p).unfold(3, p, p)  # (B, C, h, w, p, p)
    tokens = patches.permute(0, 2, 3, 4, 5, 1).reshape(2, 2 * 3, p * p * 3)
    torch.testing.assert_close(model.unpatchify(tokens, 8, 12), x)


def test_sizes_not_divisible_by_the_patch_size_fail_clearly():
    with pytest.raises(
        ValueError, match=r"sample_size 30x30 .*divisible by patch_size=4 \(for example 28 or 32\)"
    ):
        DiT(sample_size=30, in_channels=1, **TINY)
    model = DiT(sample_size=16, in_channels=1, **TINY)
    with pytest.raises(ValueError, match=r"input size 18x16 .*patch_size=4"):
        model(torch.randn(1, 1, 18, 16), 0)
    with pytest.raises(ValueError, match=r"expects samples of shape \(batch, 1, H, W\)"):
        model(torch.randn(1, 3, 16, 16), 0)
    with pytest.raises(ValueError, match="divisible by num_heads"):
        DiT(sample_size=16, in_channels=1, patch_size=4, hidden_size=30, num_heads=4)


def test_position_embeddings_sincos_any_size_learned_fixed_grid():
    sincos = nudge(DiT(sample_size=16, in_channels=1, **TINY))
    assert sincos(torch.randn(1, 1, 24, 8), 0).sample.shape == (1, 1, 24, 8)
    assert "pos_embed" not in sincos.state_dict()  # fixed, not saved, not averaged by an EMA
    learned = DiT(sample_size=16, in_channels=1, pos_embed_type="learned", **TINY)
    assert "pos_embed" in dict(learned.named_parameters())
    with pytest.raises(ValueError, match="learned position embeddings for 16x16"):
        learned(torch.randn(1, 1, 24, 8), 0)


@pytest.mark.parametrize("pos_embed_type", ["sincos", "learned"])
def test_save_load_round_trip(tmp_path, pos_embed_type):
    model = nudge(DiT(sample_size=16, in_channels=3, pos_embed_type=pos_embed_type, **TINY)).eval()
    model.save_pretrained(tmp_path)
    assert (tmp_path / "diffusion_pytorch_model.safetensors").is_file()
    assert json.loads((tmp_path / "config.json").read_text())["_class_name"] == "DiT"
    loaded = DiT.from_pretrained(tmp_path).eval()
    assert {k: v for k, v in loaded.config.items() if not k.startswith("_")} == {
        k: v for k, v in model.config.items() if not k.startswith("_")
    }
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(
            loaded(x, torch.tensor([3, 7])).sample, model(x, torch.tensor([3, 7])).sample
        )


def test_overfits_one_batch():
    """Predicting fixed noise for a fixed batch: the loss falls by 50x in 150 Adam steps."""
    torch.manual_seed(0)
    model = DiT(sample_size=8, in_channels=1, patch_size=2, hidden_size=64, depth=2, num_heads=4)
    scheduler = DDPMHubScheduler(num_train_timesteps=100)
    x0 = torch.rand(8, 1, 8, 8) * 2 - 1
    noise = torch.randn_like(x0)
    t = torch.randint(0, 100, (8,))
    noisy = scheduler.add_noise(x0, noise, t)
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    losses = []
    for _ in range(150):
        loss = torch.nn.functional.mse_loss(model(noisy, t).sample, noise)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[0] > 0.8  # zero output at init: the loss is the noise's variance
    assert losses[-1] < losses[0] / 50


def test_gradient_checkpointing_gives_the_same_gradients():
    model = nudge(DiT(sample_size=8, in_channels=1, **TINY))
    x = torch.randn(2, 1, 8, 8)
    model(x, 3).sample.square().sum().backward()
    reference = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    model.enable_gradient_checkpointing()
    model(x, 3).sample.square().sum().backward()
    for p, g in zip(model.parameters(), reference, strict=True):
        torch.testing.assert_close(p.grad, g)


def test_registered_as_backbone_dit():
    entry = plugins.get_backbones()["dit"]
    assert entry.obj is DiT
    assert (entry.distribution, entry.version, entry.plugin) == ("ddpm-hub-dit", "0.1.0", "dit")


def test_pipeline_samples_saves_and_loads_with_provenance(tmp_path):
    model = nudge(DiT(sample_size=8, in_channels=1, **TINY))
    pipe = DDPMHubPipeline(unet=model, scheduler=DDPMHubScheduler(num_train_timesteps=100))
    images = pipe(batch_size=2, generator=torch.Generator().manual_seed(0), output_type="pt").images
    assert images.shape == (2, 1, 8, 8) and images.min() >= 0 and images.max() <= 1
    pipe.save_pretrained(tmp_path)
    index = json.loads((tmp_path / "model_index.json").read_text())
    assert index["unet"] == ["ddpm_hub_dit.model", "DiT"]
    assert index["_ddpm_hub_requires"]["unet"] == {
        "distribution": "ddpm-hub-dit",
        "version": "0.1.0",
        "backbone": "dit",
    }
    loaded = load_pipeline(tmp_path)
    assert isinstance(loaded.unet, DiT)
    again = loaded(batch_size=2, generator=torch.Generator().manual_seed(0), output_type="pt").images
    torch.testing.assert_close(again, images)


def test_class_conditioning_with_a_null_class_and_guided_sampling(tmp_path):
    torch.manual_seed(0)
    plain = DiT(sample_size=16, in_channels=1, **TINY).state_dict()
    torch.manual_seed(0)
    model = nudge(DiT(sample_size=16, in_channels=1, num_class_embeds=4, **TINY))
    assert model.y_embedder.num_embeddings == 5 and set(model.state_dict()) - set(plain) == {
        "y_embedder.weight"
    }
    x = torch.randn(1, 1, 16, 16).expand(3, -1, -1, -1)
    out = model(x, 7, class_labels=torch.tensor([0, 3, 4])).sample
    assert (out[0] - out[1]).abs().max() > 1e-4  # the label conditions the output
    torch.testing.assert_close(model(x, 7).sample[2], out[2])  # no labels: the null class
    with pytest.raises(ValueError, match="unconditional.*takes no class_labels"):
        DiT(sample_size=16, in_channels=1, **TINY)(x, 7, class_labels=torch.tensor([0, 1, 2]))
    pipe = DDPMHubPipeline(unet=model, scheduler=DDPMHubScheduler(), class_names=["a", "b", "c", "d"])
    pipe.set_progress_bar_config(disable=True)
    images = pipe(
        class_labels=["d", "a"], guidance_scale=3.0, sampler="ddim", num_inference_steps=8, output_type="pt"
    )
    assert images.images.shape == (2, 1, 16, 16) and torch.isfinite(images.images).all()
    pipe.save_pretrained(tmp_path / "dit")
    assert load_pipeline(tmp_path / "dit").class_names == ["a", "b", "c", "d"]
