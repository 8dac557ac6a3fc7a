"""A small Diffusion Transformer (Peebles & Xie 2023, "Scalable Diffusion Models with Transformers").

The image is cut into ``patch_size`` x ``patch_size`` patches, each linearly embedded into a token (a
strided conv), plus a 2-D position embedding (fixed sin-cos, or learned); ``depth`` transformer blocks
process the tokens, conditioned on the timestep by adaLN-Zero; a final adaLN layer projects each token
back to a patch, and the patches are put back together (unpatchify).

adaLN-Zero: from the timestep embedding c, each block regresses a shift, scale and gate for its attention
and its MLP branch: ``x = x + gate * branch(LayerNorm(x) * (1 + scale) + shift)``. The regressions (and the
final projection) start at zero, so every block starts as the identity and the model's first output is
zero, which DiT found trains best.

Shapes: ``sample`` (B, in_channels, H, W) with H and W divisible by ``patch_size``; tokens (B, N, D) with
N = (H / p) * (W / p), D = ``hidden_size``; output (B, out_channels, H, W).

Class conditioning (``num_class_embeds``), as in DiT: a label embedding (with one extra row, the null class
that classifier-free guidance uses) is added to the timestep embedding c, so every adaLN block sees it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from diffusers.utils import BaseOutput
from torch import nn

from ddpm_hub.conditioning import embedding_labels

POS_EMBEDS = ("sincos", "learned")


@dataclass
class DiTOutput(BaseOutput):
    """sample: the predicted noise (or v / x_0, per the scheduler's prediction_type), (B, out_channels, H, W)."""

    sample: torch.Tensor


def sincos_1d(dim: int, positions: torch.Tensor) -> torch.Tensor:
    """(N,) positions -> (N, dim) fixed sin-cos embedding (the Transformer's, as in MAE and DiT)."""
    omega = 1.0 / 10000 ** (torch.arange(dim // 2, dtype=torch.float64) / (dim / 2))
    angles = positions.double()[:, None] * omega[None]
    return torch.cat([torch.sin(angles), torch.cos(angles)], dim=1)


def sincos_2d(dim: int, grid_h: int, grid_w: int) -> torch.Tensor:
    """(grid_h * grid_w, dim) 2-D sin-cos position embedding: half the channels for the row, half for the column."""
    rows = torch.arange(grid_h).repeat_interleave(grid_w)
    cols = torch.arange(grid_w).repeat(grid_h)
    return torch.cat([sincos_1d(dim // 2, rows), sincos_1d(dim // 2, cols)], dim=1).float()


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """(B,) timesteps -> (B, dim) sinusoidal features (DiT's TimestepEmbedder, cos first)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t.float()[:, None] * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=1)
    return F.pad(emb, (0, 1)) if dim % 2 else emb


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """adaLN: (B, N, D) normalized tokens, (B, D) shift and scale."""
    return x * (1 + scale[:, None]) + shift[:, None]


class Attention(nn.Module):
    """Multi-head self-attention over the tokens."""

    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, N, D = x.shape
        q, k, v = self.qkv(x).reshape(B, N, 3, self.num_heads, D // self.num_heads).permute(2, 0, 3, 1, 4)
        x = F.scaled_dot_product_attention(q, k, v)  # (B, heads, N, D / heads)
        return self.proj(x.transpose(1, 2).reshape(B, N, D))


class DiTBlock(nn.Module):
    """LayerNorm -> attention and LayerNorm -> MLP, each modulated and gated by adaLN-Zero."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.attn = Attention(dim, num_heads)
        self.norm2 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(approximate="tanh"), nn.Linear(hidden, dim))
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(dim, 6 * dim))
        nn.init.zeros_(self.adaLN_modulation[-1].weight)  # adaLN-Zero: gates start at 0
        nn.init.zeros_(self.adaLN_modulation[-1].bias)

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = self.adaLN_modulation(c).chunk(
            6, dim=1
        )
        x = x + gate_msa[:, None] * self.attn(modulate(self.norm1(x), shift_msa, scale_msa))
        x = x + gate_mlp[:, None] * self.mlp(modulate(self.norm2(x), shift_mlp, scale_mlp))
        return x


class FinalLayer(nn.Module):
    """adaLN-modulated LayerNorm, then a linear map from each token to its patch's p * p * out_channels values."""

    def __init__(self, dim: int, patch_size: int, out_channels: int):
        super().__init__()
        self.norm = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(dim, 2 * dim))
        self.linear = nn.Linear(dim, patch_size * patch_size * out_channels)
        for layer in (self.adaLN_modulation[-1], self.linear):
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        shift, scale = self.adaLN_modulation(c).chunk(2, dim=1)
        return self.linear(modulate(self.norm(x), shift, scale))


class DiT(ModelMixin, ConfigMixin):
    """A Diffusion Transformer backbone for ddpm-hub (registered as ``backbone: dit``).

    Args:
        sample_size: image height and width (an int, or ``(H, W)``); both divisible by ``patch_size``.
        in_channels: image channels (1 for MNIST, 3 for CIFAR).
        out_channels: channels predicted (default: ``in_channels``).
        patch_size: side of the square patches that become tokens (DiT's p; 2 on 28x28 gives 196 tokens).
        hidden_size: token width D; divisible by ``num_heads`` (and by 4 for sin-cos position embeddings).
        depth: number of transformer blocks.
        num_heads: attention heads.
        mlp_ratio: MLP hidden width over D.
        pos_embed_type: ``sincos`` (fixed 2-D sin-cos, any input size divisible by p) or ``learned`` (a parameter
            per position of the ``sample_size`` grid, initialised to sin-cos).
        frequency_embedding_size: width of the sinusoidal timestep features fed to the time MLP.
        num_class_embeds: number of classes of a class-conditional model (``None``: unconditional); the label
            table has one more row, the null class ``num_class_embeds``, for classifier-free guidance.

    The defaults (D=192, 6 blocks, 3 heads, p=2: 4.2M parameters) suit 28x28 MNIST; DiT-S/2 is
    ``hidden_size=384, depth=12, num_heads=6, patch_size=2``.
    """

    _supports_gradient_checkpointing = True
    supports_class_conditioning = True

    @register_to_config
    def __init__(
        self,
        sample_size: int | tuple[int, int] = 28,
        in_channels: int = 1,
        out_channels: int | None = None,
        patch_size: int = 2,
        hidden_size: int = 192,
        depth: int = 6,
        num_heads: int = 3,
        mlp_ratio: float = 4.0,
        pos_embed_type: str = "sincos",
        frequency_embedding_size: int = 256,
        num_class_embeds: int | None = None,
    ):
        super().__init__()
        if out_channels is None:
            out_channels = in_channels
            self.register_to_config(out_channels=out_channels)
        height, width = (sample_size, sample_size) if isinstance(sample_size, int) else tuple(sample_size)
        if patch_size < 1 or height % patch_size or width % patch_size:
            raise ValueError(self._size_message(height, width, patch_size, "sample_size"))
        if hidden_size % num_heads:
            raise ValueError(f"hidden_size {hidden_size} must be divisible by num_heads {num_heads}")
        if pos_embed_type not in POS_EMBEDS:
            raise ValueError(f"pos_embed_type {pos_embed_type!r} is not supported; use one of {POS_EMBEDS}")
        if pos_embed_type == "sincos" and hidden_size % 4:
            raise ValueError(
                f"sin-cos position embeddings need hidden_size divisible by 4, got {hidden_size}"
            )

        self.grid = (height // patch_size, width // patch_size)
        self.x_embedder = nn.Conv2d(in_channels, hidden_size, kernel_size=patch_size, stride=patch_size)
        if pos_embed_type == "learned":
            self.pos_embed = nn.Parameter(sincos_2d(hidden_size, *self.grid)[None])
        else:  # fixed: not a parameter, not saved, never averaged by an EMA
            self.register_buffer("pos_embed", sincos_2d(hidden_size, *self.grid)[None], persistent=False)
        self.t_embedder = nn.Sequential(
            nn.Linear(frequency_embedding_size, hidden_size), nn.SiLU(), nn.Linear(hidden_size, hidden_size)
        )
        self.blocks = nn.ModuleList(DiTBlock(hidden_size, num_heads, mlp_ratio) for _ in range(depth))
        self.final_layer = FinalLayer(hidden_size, patch_size, out_channels)
        self.gradient_checkpointing = False
        self._init_weights()
        # After the other layers' init, so that they start as the unconditional model's do.
        if num_class_embeds is not None:
            if not isinstance(num_class_embeds, int) or num_class_embeds < 1:
                raise ValueError(
                    f"num_class_embeds must be a positive integer or None, got {num_class_embeds!r}"
                )
            self.y_embedder = nn.Embedding(num_class_embeds + 1, hidden_size)  # + the null class
            nn.init.normal_(self.y_embedder.weight, std=0.02)  # DiT's LabelEmbedding init

    def _init_weights(self) -> None:
        """DiT's initialisation: xavier for linear layers and the patch embedding, N(0, 0.02) for the time MLP;
        the adaLN-Zero regressions and the final projection stay at zero."""
        for block in self.blocks:
            for layer in (block.attn.qkv, block.attn.proj, block.mlp[0], block.mlp[2]):
                nn.init.xavier_uniform_(layer.weight)
                nn.init.zeros_(layer.bias)
        w = self.x_embedder.weight
        nn.init.xavier_uniform_(w.view(w.shape[0], -1))
        nn.init.zeros_(self.x_embedder.bias)
        for i in (0, 2):
            nn.init.normal_(self.t_embedder[i].weight, std=0.02)

    @staticmethod
    def _size_message(h: int, w: int, p: int, what: str) -> str:
        return (
            f"{what} {h}x{w} is not supported by this DiT: height and width must be divisible by patch_size={p} "
            f"(for example {p * max(h // p, 1)} or {p * (h // p + 1)}); resize the images or choose a patch_size "
            "that divides them"
        )

    def _position_embedding(self, grid: tuple[int, int], ref: torch.Tensor) -> torch.Tensor:
        if grid == self.grid:
            return self.pos_embed.to(ref.dtype)
        if self.config.pos_embed_type == "learned":
            p = self.config.patch_size
            raise ValueError(
                f"this DiT learned position embeddings for {self.grid[0] * p}x{self.grid[1] * p} images "
                f"(sample_size={self.config.sample_size}) and cannot take {grid[0] * p}x{grid[1] * p}; resize the "
                "images, or use pos_embed_type='sincos', which works for any size divisible by patch_size"
            )
        return sincos_2d(self.config.hidden_size, *grid)[None].to(ref.device, ref.dtype)

    def patchify(self, sample: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> (B, N, D) tokens, N = (H / p) * (W / p), with position embeddings added."""
        x = self.x_embedder(sample)  # (B, D, H/p, W/p)
        grid = tuple(x.shape[-2:])
        return x.flatten(2).transpose(1, 2) + self._position_embedding(grid, x)

    def unpatchify(self, x: torch.Tensor, height: int, width: int) -> torch.Tensor:
        """(B, N, p * p * C) -> (B, C, H, W)."""
        p, c = self.config.patch_size, self.config.out_channels
        h, w = height // p, width // p
        x = x.reshape(x.shape[0], h, w, p, p, c)
        return torch.einsum("nhwpqc->nchpwq", x).reshape(x.shape[0], c, h * p, w * p)

    def forward(
        self,
        sample: torch.Tensor,
        timestep: torch.Tensor | int | float,
        class_labels: torch.Tensor | None = None,
        return_dict: bool = True,
    ) -> DiTOutput | tuple[torch.Tensor]:
        """Predict the noise in ``sample`` (B, in_channels, H, W) at ``timestep`` (a scalar or (B,)), for
        ``class_labels`` (B,) when the model is class-conditional (None: the null class)."""
        if sample.ndim != 4 or sample.shape[1] != self.config.in_channels:
            raise ValueError(
                f"DiT expects samples of shape (batch, {self.config.in_channels}, H, W) "
                f"(in_channels={self.config.in_channels}), got {tuple(sample.shape)}"
            )
        height, width = sample.shape[-2:]
        p = self.config.patch_size
        if height % p or width % p:
            raise ValueError(self._size_message(height, width, p, "input size"))
        B = sample.shape[0]
        t = torch.as_tensor(timestep, device=sample.device)
        t = t.reshape(-1).expand(B) if t.numel() == 1 else t.reshape(B)

        c = self.t_embedder(timestep_embedding(t, self.config.frequency_embedding_size).to(sample.dtype))
        labels = embedding_labels(class_labels, self.config.num_class_embeds, B, "DiT")
        if labels is not None:
            c = c + self.y_embedder(labels.to(sample.device)).to(c.dtype)
        x = self.patchify(sample)
        for block in self.blocks:
            if torch.is_grad_enabled() and self.gradient_checkpointing:
                x = self._gradient_checkpointing_func(block, x, c)
            else:
                x = block(x, c)
        out = self.unpatchify(self.final_layer(x, c), height, width)
        if not return_dict:
            return (out,)
        return DiTOutput(sample=out)
