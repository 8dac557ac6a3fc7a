"""The UNet that predicts the added noise (seed: "Model and Optimizer").

The architecture of Ho et al. 2020 (their ``diffusion_tf/models/unet.py``): a sinusoidal time embedding
fed through a 2-layer MLP, residual blocks (GroupNorm, SiLU, 3x3 conv) that add the time embedding,
self-attention at chosen resolutions, strided-conv downsampling and nearest + conv upsampling, with
skip connections. The paper's CIFAR-10 model (``base_channels=128, channel_mult=(1, 2, 2, 2),
num_res_blocks=2, attention_resolutions=(16,), dropout=0.1``) has 35.7M parameters.

Shapes: ``sample`` (B, in_channels, H, W), ``timestep`` a scalar or (B,), ``class_labels`` (B,) integers
(class-conditional models only), output (B, out_channels, H, W).

Class conditioning (``num_class_embeds``): a learned embedding per class, plus one for the null class used by
classifier-free guidance, added to the time embedding (as diffusers' ``UNet2DModel`` adds its class
embedding); see ``ddpm_hub.conditioning``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from diffusers import UNet2DModel
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from diffusers.utils import BaseOutput
from torch import nn

from ..conditioning import embedding_labels
from ..hookspecs import hookimpl


@dataclass
class UNetOutput(BaseOutput):
    """sample: the predicted noise (or v / x_0, per the scheduler's prediction_type), (B, out_channels, H, W)."""

    sample: torch.Tensor


def timestep_embedding(timesteps: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding of (B,) timesteps -> (B, dim), as in the Transformer and DDPM papers."""
    half = dim // 2
    freqs = torch.exp(
        -math.log(max_period)
        * torch.arange(half, device=timesteps.device, dtype=torch.float32)
        / max(half - 1, 1)
    )
    args = timesteps.float()[:, None] * freqs[None]
    emb = torch.cat([torch.sin(args), torch.cos(args)], dim=1)
    if dim % 2:
        emb = F.pad(emb, (0, 1))
    return emb


class ResBlock(nn.Module):
    """GroupNorm -> SiLU -> conv, + time embedding, GroupNorm -> SiLU -> dropout -> conv, plus the skip."""

    def __init__(self, in_ch: int, out_ch: int, temb_ch: int, dropout: float, groups: int):
        super().__init__()
        self.norm1 = nn.GroupNorm(groups, in_ch)
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, padding=1)
        self.temb_proj = nn.Linear(temb_ch, out_ch)
        self.norm2 = nn.GroupNorm(groups, out_ch)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, padding=1)
        nn.init.zeros_(self.conv2.weight)
        nn.init.zeros_(self.conv2.bias)
        self.skip = nn.Conv2d(in_ch, out_ch, 1) if in_ch != out_ch else nn.Identity()

    def forward(self, x: torch.Tensor, temb: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = h + self.temb_proj(temb)[:, :, None, None]
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))
        return self.skip(x) + h


class AttnBlock(nn.Module):
    """Self-attention over the H*W positions, through ``F.scaled_dot_product_attention``."""

    def __init__(self, ch: int, groups: int, head_dim: int | None):
        super().__init__()
        self.heads = 1 if head_dim is None else max(ch // head_dim, 1)
        if ch % self.heads:
            raise ValueError(
                f"attention_head_dim={head_dim} does not divide the {ch} channels of an attention block"
            )
        self.norm = nn.GroupNorm(groups, ch)
        self.qkv = nn.Conv2d(ch, 3 * ch, 1)
        self.proj = nn.Conv2d(ch, ch, 1)
        nn.init.zeros_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, C, H, W = x.shape
        qkv = self.qkv(self.norm(x)).reshape(B, 3, self.heads, C // self.heads, H * W)
        q, k, v = qkv.transpose(-1, -2).unbind(1)  # each (B, heads, H*W, C/heads)
        h = F.scaled_dot_product_attention(q, k, v)
        # contiguous: SDPA's output layout makes this reshape a channels-last view, and a 1x1 conv on it
        # returns proj.weight's gradient with channels-last strides, which DDP copies into its bucket
        # every step ("Grad strides do not match bucket view strides")
        h = h.transpose(-1, -2).reshape(B, C, H, W).contiguous()
        return x + self.proj(h)


class Downsample(nn.Module):
    def __init__(self, ch: int):
        super().__init__()
        self.conv = nn.Conv2d(ch, ch, 3, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class Upsample(nn.Module):
    def __init__(self, ch: int):
        super().__init__()
        self.conv = nn.Conv2d(ch, ch, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class UNet(ModelMixin, ConfigMixin):
    """The DDPM UNet (Ho et al. 2020), configurable for any channel count and size.

    Args:
        sample_size: the training image size (H = W). Inputs must have H and W divisible by
            2 ** (len(channel_mult) - 1).
        in_channels, out_channels: 1 for grayscale, 3 for RGB (out_channels defaults to in_channels).
        base_channels: channels of the first level; level i has ``base_channels * channel_mult[i]``.
        channel_mult: one multiplier per resolution level.
        num_res_blocks: residual blocks per level on the way down (one more on the way up).
        attention_resolutions: feature-map sizes (for ``sample_size`` inputs) that get self-attention.
        dropout: dropout inside the residual blocks.
        norm_num_groups: GroupNorm groups; must divide every level's channel count.
        attention_head_dim: channels per attention head; ``None`` is one head, as in the paper.
        num_class_embeds: number of classes of a class-conditional model (``None``: unconditional). The
            embedding table has one more row, the null class ``num_class_embeds``, for classifier-free guidance.
    """

    _supports_gradient_checkpointing = False
    supports_class_conditioning = True

    @register_to_config
    def __init__(
        self,
        sample_size: int = 32,
        in_channels: int = 3,
        out_channels: int | None = None,
        base_channels: int = 128,
        channel_mult: tuple[int, ...] = (1, 2, 2, 2),
        num_res_blocks: int = 2,
        attention_resolutions: tuple[int, ...] = (16,),
        dropout: float = 0.1,
        norm_num_groups: int = 32,
        attention_head_dim: int | None = None,
        num_class_embeds: int | None = None,
    ):
        super().__init__()
        out_channels = in_channels if out_channels is None else out_channels
        if out_channels != self.config.out_channels:
            self.register_to_config(out_channels=out_channels)
        for name, value in (
            ("in_channels", in_channels),
            ("out_channels", out_channels),
            ("base_channels", base_channels),
            ("num_res_blocks", num_res_blocks),
            *([("num_class_embeds", num_class_embeds)] if num_class_embeds is not None else []),
        ):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"UNet {name} must be a positive integer, got {value!r}")
        if not channel_mult or any(int(m) < 1 for m in channel_mult):
            raise ValueError(
                f"UNet channel_mult must be a non-empty list of positive integers, got {channel_mult!r}"
            )
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"UNet dropout must be in [0, 1), got {dropout!r}")
        self.downscale = 2 ** (len(channel_mult) - 1)
        if sample_size % self.downscale:
            raise ValueError(self._size_message(sample_size, sample_size, "sample_size"))
        widths = [base_channels * int(m) for m in channel_mult]
        bad = [w for w in [base_channels, *widths] if w % norm_num_groups]
        if bad:
            raise ValueError(
                f"norm_num_groups={norm_num_groups} must divide every level's channel count {[base_channels, *widths]}; "
                f"choose base_channels as a multiple of {norm_num_groups} or a smaller norm_num_groups"
            )
        known = {sample_size // 2**i for i in range(len(channel_mult))}
        unknown = [r for r in attention_resolutions if r not in known]
        if unknown:
            raise ValueError(
                f"attention_resolutions {unknown} match no level of this UNet; with sample_size={sample_size} "
                f"and {len(channel_mult)} levels the feature-map sizes are {sorted(known, reverse=True)}"
            )

        temb_ch = base_channels * 4
        g = norm_num_groups
        self.time_embedding = nn.Sequential(
            nn.Linear(base_channels, temb_ch), nn.SiLU(), nn.Linear(temb_ch, temb_ch)
        )
        self.conv_in = nn.Conv2d(in_channels, base_channels, 3, padding=1)

        self.down = nn.ModuleList()
        skip_chs = [base_channels]
        ch, res = base_channels, sample_size
        for level, width in enumerate(widths):
            for _ in range(num_res_blocks):
                attn = (
                    AttnBlock(width, g, attention_head_dim) if res in attention_resolutions else nn.Identity()
                )
                self.down.append(nn.ModuleList([ResBlock(ch, width, temb_ch, dropout, g), attn]))
                ch = width
                skip_chs.append(ch)
            if level != len(widths) - 1:
                self.down.append(Downsample(ch))
                skip_chs.append(ch)
                res //= 2

        self.mid_block1 = ResBlock(ch, ch, temb_ch, dropout, g)
        self.mid_attn = AttnBlock(ch, g, attention_head_dim)
        self.mid_block2 = ResBlock(ch, ch, temb_ch, dropout, g)

        self.up = nn.ModuleList()
        for level in reversed(range(len(widths))):
            width = widths[level]
            for _ in range(num_res_blocks + 1):
                attn = (
                    AttnBlock(width, g, attention_head_dim) if res in attention_resolutions else nn.Identity()
                )
                self.up.append(
                    nn.ModuleList([ResBlock(ch + skip_chs.pop(), width, temb_ch, dropout, g), attn])
                )
                ch = width
            if level != 0:
                self.up.append(Upsample(ch))
                res *= 2

        self.norm_out = nn.GroupNorm(g, ch)
        self.conv_out = nn.Conv2d(ch, out_channels, 3, padding=1)
        nn.init.zeros_(self.conv_out.weight)
        nn.init.zeros_(self.conv_out.bias)
        # Last, so that every other layer draws the same initial weights as the unconditional model's.
        if num_class_embeds is not None:
            self.class_embedding = nn.Embedding(num_class_embeds + 1, temb_ch)  # + the null class

    def _size_message(self, h: int, w: int, what: str) -> str:
        d = self.downscale
        return (
            f"{what} {h}x{w} is not supported by this UNet: with {len(self.config.channel_mult)} levels height and "
            f"width must be divisible by {d} (for example {d * max(h // d, 1)} or {d * (h // d + 1)}); resize the "
            "images or use fewer channel_mult levels"
        )

    def forward(
        self,
        sample: torch.Tensor,
        timestep: torch.Tensor | int | float,
        class_labels: torch.Tensor | None = None,
        return_dict: bool = True,
    ) -> UNetOutput | tuple[torch.Tensor]:
        if sample.ndim != 4 or sample.shape[1] != self.config.in_channels:
            raise ValueError(
                f"UNet expects samples of shape (batch, {self.config.in_channels}, H, W) "
                f"(in_channels={self.config.in_channels}), got {tuple(sample.shape)}"
            )
        h_in, w_in = sample.shape[-2:]
        if h_in % self.downscale or w_in % self.downscale:
            raise ValueError(self._size_message(h_in, w_in, "input size"))
        B = sample.shape[0]
        t = torch.as_tensor(timestep, device=sample.device)
        t = t.reshape(-1).expand(B) if t.numel() == 1 else t.reshape(B)

        temb = self.time_embedding(timestep_embedding(t, self.config.base_channels).to(sample.dtype))
        labels = embedding_labels(class_labels, self.config.num_class_embeds, B, "UNet")
        if labels is not None:
            temb = temb + self.class_embedding(labels.to(sample.device)).to(temb.dtype)
        h = self.conv_in(sample)
        skips = [h]
        for layer in self.down:
            if isinstance(layer, Downsample):
                h = layer(h)
            else:
                res_block, attn = layer
                h = attn(res_block(h, temb))
            skips.append(h)
        h = self.mid_block2(self.mid_attn(self.mid_block1(h, temb)), temb)
        for layer in self.up:
            if isinstance(layer, Upsample):
                h = layer(h)
            else:
                res_block, attn = layer
                h = attn(res_block(torch.cat([h, skips.pop()], dim=1), temb))
        out = self.conv_out(F.silu(self.norm_out(h)))
        if not return_dict:
            return (out,)
        return UNetOutput(sample=out)


@hookimpl
def register_backbones(register):
    register("unet", UNet)
    # diffusers' own UNet is a valid backbone too (it is how official checkpoints such as
    # google/ddpm-cifar10-32 load); its config keys are UNet2DModel's.
    register("diffusers-unet2d", UNet2DModel)
