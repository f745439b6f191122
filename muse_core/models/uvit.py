"""The masked-token U-ViT of aMUSEd (diffusers ``UVit2DModel``), usable at any size.

Token ids -> embedding -> [ConvNeXt + text cross-attention] x N at (optionally 2x-downsampled) token
resolution -> adaptive-norm transformer layers -> [ConvNeXt + cross-attention] x N -> logits over the
codebook. Conditioning: text hidden states (cross-attention context) and a vector ``c`` made from the
pooled text embedding and sinusoidal micro-conditions (width, height, crop top, crop left, aesthetic
score: ``micro_conds.py``), which modulates every ConvNeXt block and adaptive norm. There are no positional embeddings:
the depthwise convolutions give the transformer its sense of position.

Two options of ours, off by default (aMUSEd's layout and state dict): ``position_embedding_type="sincos"``
(fixed 2-D positions) and ``grid_res_blocks`` (ConvNeXt blocks at the full token grid around the resampling).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from .base import ModelConfig, TokenPredictor, count_children
from .layers import (
    AdaptiveNorm,
    Attention,
    CondEmbedding,
    FeedForward,
    GlobalResponseNorm,
    MlmHead,
    Resample,
    RMSNorm,
    TokenEmbedding,
    grid_positions,
    sinusoidal_embedding,
)
from .micro_conds import MICRO_CONDS

HEAD_DIM = 64  # aMUSEd's head width; used when a config must be inferred from tensor shapes


@dataclasses.dataclass
class UViTConfig(ModelConfig):
    """Field names and defaults of diffusers' ``UVit2DModel`` config (defaults = aMUSEd)."""

    hidden_size: int = 1024
    use_bias: bool = False
    hidden_dropout: float = 0.0
    cond_embed_dim: int = 768
    micro_cond_encode_dim: int = 256
    micro_cond_embed_dim: int = 1280
    encoder_hidden_size: int = 768
    vocab_size: int = 8256
    codebook_size: int = 8192
    in_channels: int = 768
    block_out_channels: int = 768
    num_res_blocks: int = 3
    downsample: bool = False
    upsample: bool = False
    block_num_heads: int = 12
    num_hidden_layers: int = 22
    num_attention_heads: int = 16
    attention_dropout: float = 0.0
    intermediate_size: int = 2816
    layer_norm_eps: float = 1e-6
    ln_elementwise_affine: bool = True
    sample_size: int = 64
    # Not in aMUSEd (None): "sincos" adds fixed 2-D positions to the token grid and to the transformer's input,
    # which a super-res model needs to find the low-res token under each high-res one.
    position_embedding_type: str | None = None
    # Not in aMUSEd (0): ConvNeXt blocks at the full token grid, before the downsampling and after the
    # upsampling. Without them only the embedding and the 2x2 transposed convolution see the full grid, so
    # 2x2 neighbouring tokens are predicted from one downsampled vector (docs/evaluation.md, "--diagnose").
    grid_res_blocks: int = 0

    def __post_init__(self):
        if self.position_embedding_type not in (None, "sincos"):
            raise ValueError(f"position_embedding_type must be None or 'sincos', got {self.position_embedding_type!r}.")
        if self.position_embedding_type and (self.block_out_channels % 4 or self.hidden_size % 4):
            raise ValueError("sincos positions need block_out_channels and hidden_size divisible by 4.")
        if self.micro_cond_encode_dim % 2:
            raise ValueError(f"micro_cond_encode_dim must be even, got {self.micro_cond_encode_dim}.")
        if self.micro_cond_embed_dim % self.micro_cond_encode_dim:
            raise ValueError("micro_cond_embed_dim must be a multiple of micro_cond_encode_dim.")
        if self.codebook_size >= self.vocab_size:
            raise ValueError(f"vocab_size ({self.vocab_size}) must exceed codebook_size ({self.codebook_size}).")
        for width, heads, name in (
            (self.hidden_size, self.num_attention_heads, "hidden_size / num_attention_heads"),
            (self.block_out_channels, self.block_num_heads, "block_out_channels / block_num_heads"),
        ):
            if width % heads:
                raise ValueError(f"{name} must divide evenly, got {width} / {heads}.")

    @property
    def mask_token_id(self) -> int:
        return self.vocab_size - 1

    @property
    def num_micro_conds(self) -> int:
        return self.micro_cond_embed_dim // self.micro_cond_encode_dim


@dataclasses.dataclass
class TextContext:
    """What the text and micro-conditions give every decoding step, computed once per generation
    (:meth:`MaskedTokenUViT.text_context`): the conditioning vector, the text's mask, and the keys and
    values of every cross-attention (the text does not change between steps)."""

    cond: torch.Tensor  # [B, hidden_size]
    mask: torch.Tensor | None  # [B, L] bool, True = attend
    keys_values: dict[nn.Module, tuple[torch.Tensor, torch.Tensor]]  # cross-attention module -> (k, v)
    # [B, h*w, block_out_channels] on a grid `scale` times coarser than the tokens, added under each token
    # (the super-res model's add_lowres_to_tokens); None: nothing added
    token_bias: torch.Tensor | None = None


class ConvNextBlock(nn.Module):
    def __init__(self, channels: int, cond_dim: int, eps: float, affine: bool, bias: bool, dropout: float):
        super().__init__()
        self.depthwise = nn.Conv2d(channels, channels, kernel_size=3, padding=1, groups=channels, bias=bias)
        self.norm = RMSNorm(channels, eps, affine)
        self.channelwise_linear_1 = nn.Linear(channels, 4 * channels, bias=bias)
        self.channelwise_norm = GlobalResponseNorm(4 * channels)
        self.channelwise_linear_2 = nn.Linear(4 * channels, channels, bias=bias)
        self.channelwise_dropout = nn.Dropout(dropout)
        self.cond_embeds_mapper = nn.Linear(cond_dim, 2 * channels, bias=bias)

    def forward(self, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        h = rearrange(self.depthwise(x), "b c h w -> b h w c")
        h = self.channelwise_linear_1(self.norm(h))
        h = self.channelwise_linear_2(self.channelwise_norm(F.gelu(h)))
        x = x + rearrange(self.channelwise_dropout(h), "b h w c -> b c h w")
        scale, shift = self.cond_embeds_mapper(F.silu(cond)).chunk(2, dim=1)  # [B, C] each
        return x * (1 + scale[:, :, None, None]) + shift[:, :, None, None]


class CrossAttentionBlock(nn.Module):
    """Two pre-norm cross-attentions to the text (diffusers' ``SkipFFTransformerBlock``; no self-attention)."""

    def __init__(self, channels: int, heads: int, context_dim: int, bias: bool):
        super().__init__()
        # The text context is mapped to the block width only when the widths differ (as in diffusers).
        self.kv_mapper = nn.Linear(context_dim, channels, bias=bias) if context_dim != channels else None
        self.norm1 = RMSNorm(channels, 1e-6)
        self.attn1 = Attention(channels, heads, channels // heads, context_dim=channels, bias=bias)
        self.norm2 = RMSNorm(channels, 1e-6)
        self.attn2 = Attention(channels, heads, channels // heads, context_dim=channels, bias=bias)

    def keys_values(self, context: torch.Tensor) -> dict[nn.Module, tuple[torch.Tensor, torch.Tensor]]:
        if self.kv_mapper is not None:
            context = self.kv_mapper(F.silu(context))
        return {self.attn1: self.attn1.key_value(context), self.attn2: self.attn2.key_value(context)}

    def forward(self, x: torch.Tensor, text: TextContext) -> torch.Tensor:  # x: [B, h*w, C]
        x = x + self.attn1(self.norm1(x), context_mask=text.mask, key_value=text.keys_values[self.attn1])
        return x + self.attn2(self.norm2(x), context_mask=text.mask, key_value=text.keys_values[self.attn2])


class UViTBlock(nn.Module):
    """num_res_blocks x (ConvNeXt, cross-attention) at token resolution, with optional down/upsampling."""

    def __init__(self, cfg: UViTConfig, downsample: bool, upsample: bool):
        super().__init__()
        ch, eps, affine, bias = cfg.block_out_channels, cfg.layer_norm_eps, cfg.ln_elementwise_affine, cfg.use_bias
        self.downsample = Resample(ch, eps, affine, bias, up=False) if downsample else None
        self.res_blocks = nn.ModuleList(
            ConvNextBlock(ch, cfg.hidden_size, eps, affine, bias, cfg.hidden_dropout) for _ in range(cfg.num_res_blocks)
        )
        self.attention_blocks = nn.ModuleList(
            CrossAttentionBlock(ch, cfg.block_num_heads, cfg.hidden_size, bias) for _ in range(cfg.num_res_blocks)
        )
        self.upsample = Resample(ch, eps, affine, bias, up=True) if upsample else None

    def forward(self, x: torch.Tensor, text: TextContext) -> torch.Tensor:
        if self.downsample is not None:
            x = self.downsample(x)
        for res_block, attention_block in zip(self.res_blocks, self.attention_blocks):
            x = res_block(x, text.cond)
            h, w = x.shape[-2:]
            x = attention_block(rearrange(x, "b c h w -> b (h w) c"), text)
            # Back to [B, C, H, W] as a view of [B, HW, C], as diffusers does (not einops' reshape-then-permute).
            # Same values; the strides differ only at batch 1, where this view's batch stride is C and torch's
            # layout heuristic then takes the tensor for NCHW, not channels-last: the next convolution runs
            # diffusers' kernel, so batch-1 logits are bitwise diffusers'. No measurable cost.
            x = x.transpose(1, 2).unflatten(2, (h, w))
        if self.upsample is not None:
            x = self.upsample(x)
        return x


class TransformerLayer(nn.Module):
    """Self-attention, cross-attention to the text, GEGLU MLP; each behind an adaptive norm."""

    def __init__(self, cfg: UViTConfig):
        super().__init__()
        dim, eps, affine, bias = cfg.hidden_size, cfg.layer_norm_eps, cfg.ln_elementwise_affine, cfg.use_bias
        heads = cfg.num_attention_heads
        self.norm1 = AdaptiveNorm(dim, dim, RMSNorm(dim, eps, affine), bias)
        self.attn1 = Attention(dim, heads, dim // heads, bias=bias)
        self.norm2 = AdaptiveNorm(dim, dim, RMSNorm(dim, eps, affine), bias)
        self.attn2 = Attention(dim, heads, dim // heads, context_dim=dim, bias=bias)
        self.norm3 = AdaptiveNorm(dim, dim, nn.LayerNorm(dim, eps, affine, bias=bias), bias)
        self.ff = FeedForward(dim, cfg.intermediate_size, cfg.hidden_dropout, bias)

    def forward(self, x: torch.Tensor, text: TextContext) -> torch.Tensor:
        x = x + self.attn1(self.norm1(x, text.cond))
        x = x + self.attn2(self.norm2(x, text.cond), context_mask=text.mask, key_value=text.keys_values[self.attn2])
        return x + self.ff(self.norm3(x, text.cond))


def upsample_tokens(features: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """``[B, h*w, C]`` features of a grid an integer factor coarser than ``height x width`` -> ``[B, C, height,
    width]``, each coarse feature repeated over the tokens it covers (nearest neighbour)."""
    scale = math.isqrt(height * width // features.shape[1])
    if features.shape[1] * scale * scale != height * width or height % scale or width % scale:
        raise ValueError(f"{features.shape[1]} low-res tokens do not tile a {height}x{width} grid by an integer factor.")
    grid = rearrange(features, "b (h w) c -> b c h w", h=height // scale)
    return grid.repeat_interleave(scale, dim=2).repeat_interleave(scale, dim=3)


class MaskedTokenUViT(TokenPredictor):
    """aMUSEd's base transformer (state-dict compatible with diffusers ``UVit2DModel``)."""

    kind = "uvit"
    config_class = UViTConfig

    def __init__(self, config: UViTConfig):
        super().__init__(config)
        cfg = config
        self.encoder_proj = nn.Linear(cfg.encoder_hidden_size, cfg.hidden_size, bias=cfg.use_bias)
        self.encoder_proj_layer_norm = RMSNorm(cfg.hidden_size, cfg.layer_norm_eps, cfg.ln_elementwise_affine)
        self.embed = TokenEmbedding(cfg.vocab_size, cfg.in_channels, cfg.block_out_channels, cfg.layer_norm_eps,
                                    cfg.ln_elementwise_affine, cfg.use_bias)
        self.cond_embed = CondEmbedding(cfg.micro_cond_embed_dim + cfg.cond_embed_dim, cfg.hidden_size, cfg.use_bias)
        self.grid_in_blocks = self._grid_blocks(cfg)
        self.down_block = UViTBlock(cfg, downsample=cfg.downsample, upsample=False)
        self.project_to_hidden_norm = RMSNorm(cfg.block_out_channels, cfg.layer_norm_eps, cfg.ln_elementwise_affine)
        self.project_to_hidden = nn.Linear(cfg.block_out_channels, cfg.hidden_size, bias=cfg.use_bias)
        self.transformer_layers = nn.ModuleList(TransformerLayer(cfg) for _ in range(cfg.num_hidden_layers))
        self.project_from_hidden_norm = RMSNorm(cfg.hidden_size, cfg.layer_norm_eps, cfg.ln_elementwise_affine)
        self.project_from_hidden = nn.Linear(cfg.hidden_size, cfg.block_out_channels, bias=cfg.use_bias)
        self.up_block = UViTBlock(cfg, downsample=False, upsample=cfg.upsample)
        self.grid_out_blocks = self._grid_blocks(cfg)
        self.mlm_layer = MlmHead(cfg.block_out_channels, cfg.in_channels, cfg.codebook_size, cfg.layer_norm_eps,
                                 cfg.ln_elementwise_affine, cfg.use_bias)

    @staticmethod
    def _grid_blocks(cfg: UViTConfig) -> nn.ModuleList:
        return nn.ModuleList(
            ConvNextBlock(cfg.block_out_channels, cfg.hidden_size, cfg.layer_norm_eps, cfg.ln_elementwise_affine,
                          cfg.use_bias, cfg.hidden_dropout)
            for _ in range(cfg.grid_res_blocks)
        )

    def embed_conditions(self, pooled_text_emb: torch.Tensor, micro_conds: torch.Tensor) -> torch.Tensor:
        """The conditioning vector ``c``: cond_embed([pooled text, sinusoidal(micro_conds)])."""
        batch = pooled_text_emb.shape[0]
        # micro_conds [B, 5] -> [B, 5 * micro_cond_encode_dim], each value's features side by side
        micro = sinusoidal_embedding(micro_conds.flatten(), self.config.micro_cond_encode_dim).reshape(batch, -1)
        return self.cond_embed(torch.cat([pooled_text_emb, micro], dim=1).to(self.dtype))

    def text_context(
        self,
        encoder_hidden_states: torch.Tensor,
        pooled_text_emb: torch.Tensor,
        micro_conds: torch.Tensor,
        encoder_attention_mask: torch.Tensor | None = None,
    ) -> TextContext:
        """Everything the steps of one generation share; give it to :meth:`forward_with_text` at every step."""
        context = self.encoder_proj_layer_norm(self.encoder_proj(encoder_hidden_states.to(self.dtype)))  # [B, L, hidden]
        cond = self.embed_conditions(pooled_text_emb, micro_conds).to(context.dtype)
        keys_values = {layer.attn2: layer.attn2.key_value(context) for layer in self.transformer_layers}
        for block in (self.down_block, self.up_block):
            for attention_block in block.attention_blocks:
                keys_values.update(attention_block.keys_values(context))
        return TextContext(cond, encoder_attention_mask, keys_values)

    def forward(
        self,
        input_ids: torch.Tensor,
        encoder_hidden_states: torch.Tensor,
        pooled_text_emb: torch.Tensor,
        micro_conds: torch.Tensor,
        encoder_attention_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """``[B, h, w]`` ids (mask token = vocab_size - 1) -> ``[B, codebook_size, h, w]`` logits."""
        text = self.text_context(encoder_hidden_states, pooled_text_emb, micro_conds, encoder_attention_mask)
        return self.forward_with_text(input_ids, text)

    def forward_with_text(self, input_ids: torch.Tensor, text: TextContext) -> torch.Tensor:
        x = self.embed(input_ids)
        if self.config.position_embedding_type:
            c, h, w = x.shape[1:]
            x = x + rearrange(grid_positions(h, w, c, x.device).to(x.dtype), "(h w) c -> c h w", h=h)
        if text.token_bias is not None:
            x = x + upsample_tokens(text.token_bias, *x.shape[-2:]).to(x.dtype)
        for block in self.grid_in_blocks:
            x = block(x, text.cond)
        x = self.down_block(x, text)
        h, w = x.shape[-2:]
        x = self.project_to_hidden(self.project_to_hidden_norm(rearrange(x, "b c h w -> b (h w) c")))  # [B, h*w, hidden]
        if self.config.position_embedding_type:
            x = x + grid_positions(h, w, x.shape[-1], x.device).to(x.dtype)
        for layer in self.transformer_layers:
            x = layer(x, text)
        x = self.project_from_hidden(self.project_from_hidden_norm(x))
        x = self.up_block(rearrange(x, "b (h w) c -> b c h w", h=h, w=w), text)
        for block in self.grid_out_blocks:
            x = block(x, text.cond)
        return self.mlm_layer(x)

    @classmethod
    def infer_config(cls, shapes: Mapping[str, torch.Size]) -> UViTConfig:
        """Sizes come from the tensors; head counts assume 64-wide heads, micro-conds aMUSEd's 5 x 256."""
        hidden, encoder_hidden = shapes["encoder_proj.weight"]
        vocab, in_channels = shapes["embed.embeddings.weight"]
        channels = shapes["embed.conv.weight"][0]
        micro_encode = UViTConfig.micro_cond_encode_dim
        micro_embed = len(MICRO_CONDS) * micro_encode
        cond_embed_dim = shapes["cond_embed.linear_1.weight"][1] - micro_embed
        if cond_embed_dim <= 0:
            raise ValueError(
                f"the micro-conditioning sizes differ from aMUSEd's ({len(MICRO_CONDS)} x {micro_encode}) "
                "and cannot be read off the tensors"
            )
        return UViTConfig(
            hidden_size=hidden,
            use_bias="encoder_proj.bias" in shapes,
            cond_embed_dim=cond_embed_dim,
            micro_cond_encode_dim=micro_encode,
            micro_cond_embed_dim=micro_embed,
            encoder_hidden_size=encoder_hidden,
            vocab_size=vocab,
            codebook_size=shapes["mlm_layer.conv2.weight"][0],
            in_channels=in_channels,
            block_out_channels=channels,
            num_res_blocks=count_children(shapes, "down_block.res_blocks"),
            downsample="down_block.downsample.conv.weight" in shapes,
            upsample="up_block.upsample.conv.weight" in shapes,
            block_num_heads=max(1, channels // HEAD_DIM),
            num_hidden_layers=count_children(shapes, "transformer_layers"),
            num_attention_heads=max(1, hidden // HEAD_DIM),
            intermediate_size=shapes["transformer_layers.0.ff.net.2.weight"][1],
            ln_elementwise_affine="encoder_proj_layer_norm.weight" in shapes,
            grid_res_blocks=count_children(shapes, "grid_in_blocks"),
        )
