"""The UNet backbone: shapes, channel counts, sizes, bad input, save/load, and learning with the scheduler."""

from pathlib import Path

import datasets
import pytest
import torch
import torch.nn.functional as F

from ddpm_hub import DDPMHubScheduler, UNet

BUILTIN = Path(__file__).parents[1] / "ddpm_hub" / "datasets" / "mnist5k.parquet"


def small(**kwargs):
    base = dict(
        base_channels=16,
        channel_mult=(1, 2, 2),
        num_res_blocks=1,
        attention_resolutions=(),
        dropout=0.0,
        norm_num_groups=8,
    )
    return UNet(**{**base, **kwargs})


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("size, attn", [(28, (14,)), (32, (8,)), (64, (16,))])
def test_output_has_the_input_shape(channels, size, attn):
    unet = small(sample_size=size, in_channels=channels, attention_resolutions=attn)
    x = torch.randn(2, channels, size, size)
    out = unet(x, torch.tensor([0, 511])).sample
    assert out.shape == x.shape
    assert unet.config.out_channels == channels


def test_scalar_and_batched_timesteps_agree():
    unet = small(sample_size=28, in_channels=1)
    with torch.no_grad():  # the zero-initialised residual branches would hide the time conditioning
        for p in unet.parameters():
            p.normal_(std=0.1)
    x = torch.randn(3, 1, 28, 28)
    a = unet(x, 7).sample
    b = unet(x, torch.tensor(7)).sample
    c = unet(x, torch.full((3,), 7)).sample
    assert torch.equal(a, b) and torch.equal(a, c)
    assert not torch.allclose(a, unet(x, 300).sample)  # the timestep conditions the output


def test_paper_cifar10_configuration_has_35_7m_parameters():
    unet = UNet(
        sample_size=32,
        in_channels=3,
        base_channels=128,
        channel_mult=(1, 2, 2, 2),
        num_res_blocks=2,
        attention_resolutions=(16,),
        dropout=0.1,
    )
    assert sum(p.numel() for p in unet.parameters()) == pytest.approx(35.7e6, rel=0.005)


def test_multi_head_attention_runs():
    unet = small(sample_size=32, in_channels=3, attention_resolutions=(16, 8), attention_head_dim=8)
    assert unet(torch.randn(1, 3, 32, 32), 3).sample.shape == (1, 3, 32, 32)


def test_wrong_channel_count_is_a_clear_error():
    unet = small(sample_size=28, in_channels=1)
    with pytest.raises(
        ValueError, match=r"expects samples of shape \(batch, 1, H, W\).*got \(2, 3, 28, 28\)"
    ):
        unet(torch.randn(2, 3, 28, 28), 0)


def test_unsupported_size_is_a_clear_error():
    with pytest.raises(ValueError, match=r"sample_size 28x28 is not supported.*divisible by 8"):
        small(sample_size=28, channel_mult=(1, 2, 2, 2))
    unet = small(sample_size=28, in_channels=1)
    with pytest.raises(ValueError, match=r"input size 30x30 is not supported.*divisible by 4"):
        unet(torch.randn(1, 1, 30, 30), 0)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(attention_resolutions=(5,)), r"attention_resolutions \[5\] match no level.*\[28, 14, 7\]"),
        (dict(base_channels=12, norm_num_groups=8), r"norm_num_groups=8 must divide"),
        (dict(in_channels=0), r"in_channels must be a positive integer, got 0"),
        (dict(dropout=1.0), r"dropout must be in \[0, 1\)"),
    ],
)
def test_bad_configuration_is_a_clear_error(kwargs, match):
    with pytest.raises(ValueError, match=match):
        small(**{"sample_size": 28, "in_channels": 1, **kwargs})


def test_save_load_round_trip_reproduces_outputs(tmp_path):
    unet = small(sample_size=28, in_channels=1, attention_resolutions=(7,))
    torch.nn.init.normal_(unet.conv_out.weight)
    unet.save_pretrained(tmp_path)
    assert (tmp_path / "diffusion_pytorch_model.safetensors").is_file()
    loaded = UNet.from_pretrained(tmp_path)
    x = torch.randn(2, 1, 28, 28)
    assert torch.equal(unet(x, 10).sample, loaded(x, 10).sample)


def test_small_unet_overfits_one_batch():
    """The seed's training step on one fixed batch (fixed t and noise): the epsilon-MSE falls tenfold.

    Proof that the forward process (add_noise) and the model learn together."""
    torch.manual_seed(0)
    images = datasets.load_dataset("parquet", data_files=str(BUILTIN), split="train").select(range(4))
    batch = (
        torch.stack(
            [
                torch.tensor(list(im.getdata()), dtype=torch.float32).reshape(1, 28, 28)
                for im in images["image"]
            ]
        )
        / 127.5
        - 1
    )
    scheduler = DDPMHubScheduler()
    model = small(sample_size=28, in_channels=1, attention_resolutions=(7,))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    t = torch.randint(0, 512, (batch.shape[0],))
    noise = torch.randn_like(batch)
    x_noisy = scheduler.add_noise(batch, noise, t)
    losses = []
    for _ in range(150):
        loss = F.mse_loss(noise, model(x_noisy, t).sample)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0] / 10, f"loss went from {losses[0]:.4f} to {losses[-1]:.4f}"


def test_every_gradient_has_its_parameters_layout():
    """DDP copies a gradient whose strides differ from its parameter's into its bucket on every step, with the
    warning "Grad strides do not match bucket view strides". At batch 64 SDPA's output layout used to make the
    attention projection's input channels-last, and proj.weight's gradient came back channels-last."""
    from ddpm_hub.config import MNIST_MODEL

    torch.manual_seed(0)
    model = UNet(
        sample_size=28,
        in_channels=1,
        **{k: tuple(v) if isinstance(v, list) else v for k, v in MNIST_MODEL.items()},
    )
    x, t = torch.randn(64, 1, 28, 28), torch.randint(0, 512, (64,))
    names, params = zip(*model.named_parameters(), strict=True)
    grads = torch.autograd.grad(model(x, t).sample.square().mean(), params)
    assert [n for n, p, g in zip(names, params, grads, strict=True) if g.stride() != p.stride()] == []
