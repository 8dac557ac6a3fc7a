"""The UNet under the fast-path memory format and precision gives the fp32 result (benchmarks/ measures speed)."""

import torch

from ddpm_hub import UNet


def _model_and_input(kwargs):
    torch.manual_seed(0)
    unet = UNet(**kwargs)
    for p in unet.parameters():  # the zero-initialised output convs would make every comparison trivial
        torch.nn.init.normal_(p, std=0.05)
    x = torch.randn(3, kwargs["in_channels"], 28, 28, generator=torch.Generator().manual_seed(1))
    return unet.eval(), x, torch.tensor([0, 100, 511])


def test_channels_last_matches_contiguous(tiny_unet_kwargs):
    unet, x, t = _model_and_input(tiny_unet_kwargs)
    with torch.inference_mode():
        ref = unet(x, t).sample
        unet = unet.to(memory_format=torch.channels_last)
        out = unet(x.contiguous(memory_format=torch.channels_last), t).sample
    assert out.shape == ref.shape
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-4)


def test_bf16_autocast_stays_close_to_fp32(tiny_unet_kwargs):
    unet, x, t = _model_and_input(tiny_unet_kwargs)
    with torch.inference_mode():
        ref = unet(x, t).sample
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = unet(x, t).sample
    assert out.dtype == torch.bfloat16
    err = (out.float() - ref).norm() / ref.norm()
    assert err < 0.05, f"relative error {err:.3f}"
