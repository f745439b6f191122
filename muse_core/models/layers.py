"""Building blocks shared by the Muse transformers.

Submodule names reproduce diffusers' state-dict keys (``to_out.0``, ``ff.net.0.proj``, ``norm1.linear``)
so aMUSEd checkpoints load without renaming. Numerics follow diffusers exactly (e.g. RMSNorm computes
its statistic in float32), because parity is tested to the logit.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from ..attention import attention, check_backend


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float = 1e-6, elementwise_affine: bool = True):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim)) if elementwise_affine else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        input_dtype = x.dtype
        x = x * torch.rsqrt(x.float().pow(2).mean(-1, keepdim=True) + self.eps)
        if self.weight is None:
            return x.to(input_dtype)
        return x.to(self.weight.dtype) * self.weight


class GlobalResponseNorm(nn.Module):
    """ConvNeXt-v2 GRN over channels-last ``[B, H, W, C]`` input."""

    def __init__(self, dim: int):
        super().__init__()
        self.gamma = nn.Parameter(torch.zeros(1, 1, 1, dim))
        self.beta = nn.Parameter(torch.zeros(1, 1, 1, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        spatial_norm = torch.norm(x, p=2, dim=(1, 2), keepdim=True)
        relative = spatial_norm / (spatial_norm.mean(dim=-1, keepdim=True) + 1e-6)
        return self.gamma * (x * relative) + self.beta + x


class AdaptiveNorm(nn.Module):
    """norm(x) * (1 + scale) + shift, with (scale, shift) projected from the conditioning vector."""

    def __init__(self, dim: int, cond_dim: int, norm: nn.Module, bias: bool = False):
        super().__init__()
        self.linear = nn.Linear(cond_dim, 2 * dim, bias=bias)
        self.norm = norm

    def forward(self, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        scale, shift = self.linear(F.silu(cond).to(x.dtype)).chunk(2, dim=1)  # [B, dim] each, for x [B, L, dim]
        return self.norm(x) * (1 + scale)[:, None, :] + shift[:, None, :]


class Attention(nn.Module):
    """Multi-head attention; cross-attention when ``context_dim`` is given. ``to_out.0`` keeps diffusers' key."""

    def __init__(self, dim: int, heads: int, head_dim: int, context_dim: int | None = None, bias: bool = False):
        super().__init__()
        inner = heads * head_dim
        self.heads = heads
        self.backend = "auto"
        self.to_q = nn.Linear(dim, inner, bias=bias)
        self.to_k = nn.Linear(context_dim or dim, inner, bias=bias)
        self.to_v = nn.Linear(context_dim or dim, inner, bias=bias)
        self.to_out = nn.ModuleList([nn.Linear(inner, dim, bias=bias)])

    def key_value(self, context: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys and values ``[B, heads, L, head_dim]`` of ``context``; for a fixed text, compute them once."""
        return tuple(rearrange(proj(context), "b n (h d) -> b h n d", h=self.heads) for proj in (self.to_k, self.to_v))

    def forward(
        self,
        x: torch.Tensor,
        context: torch.Tensor | None = None,
        context_mask: torch.Tensor | None = None,
        key_value: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """Self-attention, or cross-attention to ``context`` (or to its precomputed ``key_value``)."""
        q = rearrange(self.to_q(x), "b n (h d) -> b h n d", h=self.heads)
        k, v = key_value if key_value is not None else self.key_value(x if context is None else context)
        out = attention(q, k, v, key_mask=context_mask, backend=self.backend)
        return self.to_out[0](rearrange(out, "b h n d -> b n (h d)"))


class GEGLU(nn.Module):
    def __init__(self, dim: int, inner_dim: int, bias: bool = False):
        super().__init__()
        self.proj = nn.Linear(dim, 2 * inner_dim, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        hidden, gate = self.proj(x).chunk(2, dim=-1)
        return hidden * F.gelu(gate)


class FeedForward(nn.Module):
    """GEGLU MLP laid out as diffusers' ``FeedForward`` (``net.0.proj``, dropout, ``net.2``)."""

    def __init__(self, dim: int, inner_dim: int, dropout: float = 0.0, bias: bool = False):
        super().__init__()
        self.net = nn.Sequential(GEGLU(dim, inner_dim, bias), nn.Dropout(dropout), nn.Linear(inner_dim, dim, bias=bias))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)



class TokenEmbedding(nn.Module):
    """Token ids ``[B, h, w]`` -> embedding, RMSNorm, 1x1 conv -> ``[B, channels, h, w]`` (aMUSEd's ``UVit2DConvEmbed``)."""

    def __init__(self, vocab_size: int, dim: int, channels: int, eps: float, affine: bool, bias: bool):
        super().__init__()
        self.embeddings = nn.Embedding(vocab_size, dim)
        self.layer_norm = RMSNorm(dim, eps, affine)
        self.conv = nn.Conv2d(dim, channels, kernel_size=1, bias=bias)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.conv(rearrange(self.layer_norm(self.embeddings(ids)), "b h w c -> b c h w"))


class MlmHead(nn.Module):
    """``[B, channels, h, w]`` -> 1x1 conv, RMSNorm, 1x1 conv -> logits ``[B, codebook_size, h, w]`` (``ConvMlmLayer``)."""

    def __init__(self, channels: int, dim: int, codebook_size: int, eps: float, affine: bool, bias: bool):
        super().__init__()
        self.conv1 = nn.Conv2d(channels, dim, kernel_size=1, bias=bias)
        self.layer_norm = RMSNorm(dim, eps, affine)
        self.conv2 = nn.Conv2d(dim, codebook_size, kernel_size=1, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layer_norm(self.conv1(x).permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        return self.conv2(x)


class CondEmbedding(nn.Module):
    """linear, SiLU, linear (diffusers' ``TimestepEmbedding`` and ``PixArtAlphaTextProjection`` keys)."""

    def __init__(self, in_dim: int, dim: int, bias: bool):
        super().__init__()
        self.linear_1 = nn.Linear(in_dim, dim, bias=bias)
        self.linear_2 = nn.Linear(dim, dim, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear_2(F.silu(self.linear_1(x)))


class Resample(nn.Module):
    """RMSNorm over channels, then a 2x2 stride-2 conv (down) or transposed conv (up)."""

    def __init__(self, channels: int, eps: float, affine: bool, bias: bool, up: bool):
        super().__init__()
        self.up = up
        self.norm = RMSNorm(channels, eps, affine)
        conv = nn.ConvTranspose2d if up else nn.Conv2d
        self.conv = conv(channels, channels, kernel_size=2, stride=2, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.norm(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        if not self.up:
            x = F.pad(x, (0, 1, 0, 1))  # diffusers pads right/bottom before the k2 s2 conv
        return self.conv(x)

def sinusoidal_embedding(values: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """[cos, sin] features of scalars ``[N]`` -> ``[N, dim]`` (diffusers' timestep embedding, flip_sin_to_cos, no shift)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=values.device) / half)
    angles = values.float()[:, None] * freqs[None, :]
    return torch.cat([torch.cos(angles), torch.sin(angles)], dim=-1)


def set_attention_backend(model: nn.Module, backend: str) -> nn.Module:
    """Route every attention layer of ``model`` through ``backend`` (see ``muse_core.attention``)."""
    check_backend(backend)
    for module in model.modules():
        if hasattr(module, "backend"):
            module.backend = backend
    return model


MAX_POSITION_FREQUENCY = 64.0  # radians per image side: neighbours stay apart on grids up to ~64 cells


def grid_positions(height: int, width: int, dim: int, device=None) -> torch.Tensor:
    """Fixed 2-D sine-cosine positions ``[height * width, dim]``, half the channels per axis.

    A cell is placed by its centre as a fraction of the image side, not by its index, so two grids over
    one image agree where they overlap: a super-res token and the low-res token under it get the same code.
    """
    if dim % 4:
        raise ValueError(f"2-D sine-cosine positions need a width divisible by 4, got {dim}.")
    quarter = dim // 4
    freqs = MAX_POSITION_FREQUENCY ** torch.linspace(1.0, 0.0, quarter, device=device)
    ys = (torch.arange(height, dtype=torch.float32, device=device) + 0.5) / height
    xs = (torch.arange(width, dtype=torch.float32, device=device) + 0.5) / width
    ys, xs = torch.meshgrid(ys, xs, indexing="ij")
    angles_y, angles_x = ys.reshape(-1, 1) * freqs, xs.reshape(-1, 1) * freqs
    return torch.cat([angles_y.sin(), angles_y.cos(), angles_x.sin(), angles_x.cos()], dim=1)
