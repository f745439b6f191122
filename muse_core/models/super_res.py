"""Muse's super-resolution transformer (Chang et al. 2023, section 2.4).

The low-resolution token ids go through a stack of self-attention layers; their output, projected to
the text width, is appended to the text hidden states, and that joint sequence is the cross-attention
context of a masked-token transformer over the high-resolution grid. The high-resolution transformer is
our U-ViT (:class:`MaskedTokenUViT`), so it shares the base model's conditioning (pooled text vector and
micro-conditions) and its MLM head. The low-resolution grid gets fixed 2-D sine-cosine positions, so one
model serves any grid size. The high-resolution U-ViT needs positions too (``position_embedding_type="sincos"``
in its config): aMUSEd's U-ViT has none, so on a fully masked grid every query is the same and cannot pick
the low-res token under it; the shared positions (fractions of the image side) let it.

``add_lowres_to_tokens`` (ours, off by default): each low-res token's context is also projected to the token
embedding width and added to the embeddings of the high-res tokens above it, so the model reads its layout
directly instead of finding it by cross-attention. On the shapes data a small super-res model trained with
cross-attention alone redrew ground-truth layouts wrongly (docs/evaluation.md).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

import torch
from torch import nn

from .base import ModelConfig, TokenPredictor, count_children
from .layers import Attention, FeedForward, RMSNorm, grid_positions
from .uvit import HEAD_DIM, MaskedTokenUViT, TextContext, UViTConfig


@dataclasses.dataclass
class SuperResConfig(ModelConfig):
    lowres_codebook_size: int = 8192
    lowres_hidden_size: int = 1024
    lowres_num_layers: int = 16
    lowres_num_heads: int = 16
    lowres_intermediate_size: int = 2816
    layer_norm_eps: float = 1e-6
    add_lowres_to_tokens: bool = False  # not in Muse: the low-res context also added under each high-res token
    transformer: UViTConfig = dataclasses.field(default_factory=UViTConfig)

    @classmethod
    def from_dict(cls, values: Mapping):
        values = dict(values)
        if isinstance(values.get("transformer"), Mapping):
            values["transformer"] = UViTConfig.from_dict(values["transformer"])
        return super().from_dict(values)

    def __post_init__(self):
        if self.lowres_hidden_size % 4:
            raise ValueError(f"lowres_hidden_size must be a multiple of 4 (2-D positions), got {self.lowres_hidden_size}.")
        if self.lowres_hidden_size % self.lowres_num_heads:
            raise ValueError("lowres_hidden_size must be divisible by lowres_num_heads.")

    def to_dict(self):
        values = super().to_dict()
        values["transformer"] = self.transformer.to_dict()
        return values

    @property
    def mask_token_id(self) -> int:  # the ids are the high-res transformer's
        return self.transformer.mask_token_id

    @property
    def codebook_size(self) -> int:
        return self.transformer.codebook_size


class EncoderLayer(nn.Module):
    """Pre-norm self-attention + GEGLU MLP."""

    def __init__(self, dim: int, heads: int, inner_dim: int, eps: float):
        super().__init__()
        self.norm1 = RMSNorm(dim, eps)
        self.attn = Attention(dim, heads, dim // heads)
        self.norm2 = RMSNorm(dim, eps)
        self.ff = FeedForward(dim, inner_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.ff(self.norm2(x))


class SuperResTransformer(TokenPredictor):
    kind = "super_res"
    config_class = SuperResConfig

    def __init__(self, config: SuperResConfig):
        super().__init__(config)
        cfg = config
        self.lowres_embed = nn.Embedding(cfg.lowres_codebook_size, cfg.lowres_hidden_size)
        self.lowres_layers = nn.ModuleList(
            EncoderLayer(cfg.lowres_hidden_size, cfg.lowres_num_heads, cfg.lowres_intermediate_size, cfg.layer_norm_eps)
            for _ in range(cfg.lowres_num_layers)
        )
        self.lowres_norm = RMSNorm(cfg.lowres_hidden_size, cfg.layer_norm_eps)
        self.lowres_proj = nn.Linear(cfg.lowres_hidden_size, cfg.transformer.encoder_hidden_size, bias=False)
        if cfg.add_lowres_to_tokens:
            self.lowres_to_tokens = nn.Linear(cfg.transformer.encoder_hidden_size, cfg.transformer.block_out_channels,
                                              bias=False)
        self.transformer = MaskedTokenUViT(cfg.transformer)

    def encode_lowres(self, lowres_ids: torch.Tensor) -> torch.Tensor:
        """``[B, h, w]`` low-res ids -> ``[B, h*w, encoder_hidden_size]`` context; compute once per generation."""
        if lowres_ids.min() < 0 or lowres_ids.max() >= self.config.lowres_codebook_size:
            raise ValueError(
                f"low-res ids must lie in [0, {self.config.lowres_codebook_size}); masked or foreign ids were given."
            )
        _, height, width = lowres_ids.shape
        x = self.lowres_embed(lowres_ids.flatten(1))  # [B, h*w, lowres_hidden_size]
        x = x + grid_positions(height, width, x.shape[-1], x.device).to(x.dtype)
        for layer in self.lowres_layers:
            x = layer(x)
        return self.lowres_proj(self.lowres_norm(x))

    def text_context(
        self,
        lowres_context: torch.Tensor,
        encoder_hidden_states: torch.Tensor,
        pooled_text_emb: torch.Tensor,
        micro_conds: torch.Tensor,
        encoder_attention_mask: torch.Tensor | None = None,
    ) -> TextContext:
        """The high-res transformer's :class:`TextContext`, over the text followed by the low-res context."""
        context = torch.cat([encoder_hidden_states, lowres_context.to(encoder_hidden_states.dtype)], dim=1)  # [B, L + h*w, D]
        mask = None
        if encoder_attention_mask is not None:
            lowres_visible = encoder_attention_mask.new_ones(lowres_context.shape[:2])
            mask = torch.cat([encoder_attention_mask, lowres_visible], dim=1)
        text = self.transformer.text_context(context, pooled_text_emb, micro_conds, mask)
        if not self.config.add_lowres_to_tokens:
            return text
        bias = self.lowres_to_tokens(lowres_context.to(self.dtype))  # [B, h*w, block_out_channels]
        return dataclasses.replace(text, token_bias=bias)

    def forward(
        self,
        input_ids: torch.Tensor,
        lowres_context: torch.Tensor,
        encoder_hidden_states: torch.Tensor,
        pooled_text_emb: torch.Tensor,
        micro_conds: torch.Tensor,
        encoder_attention_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """High-res ids ``[B, H, W]`` + :meth:`encode_lowres` output + text -> logits ``[B, codebook, H, W]``."""
        text = self.text_context(lowres_context, encoder_hidden_states, pooled_text_emb, micro_conds,
                                 encoder_attention_mask)
        return self.forward_with_text(input_ids, text)

    def forward_with_text(self, input_ids: torch.Tensor, text: TextContext) -> torch.Tensor:
        return self.transformer.forward_with_text(input_ids, text)

    @classmethod
    def infer_config(cls, shapes: Mapping[str, torch.Size]) -> SuperResConfig:
        """Sizes from the tensors; head counts assume 64-wide heads (see ``MaskedTokenUViT.infer_config``)."""
        codebook, hidden = shapes["lowres_embed.weight"]
        inner = shapes["lowres_layers.0.ff.net.2.weight"][1] if "lowres_layers.0.ff.net.2.weight" in shapes else 4 * hidden
        transformer_shapes = {k.removeprefix("transformer."): v for k, v in shapes.items() if k.startswith("transformer.")}
        return SuperResConfig(
            lowres_codebook_size=codebook,
            lowres_hidden_size=hidden,
            lowres_num_layers=count_children(shapes, "lowres_layers"),
            lowres_num_heads=max(1, hidden // HEAD_DIM),
            lowres_intermediate_size=inner,
            add_lowres_to_tokens="lowres_to_tokens.weight" in shapes,
            transformer=MaskedTokenUViT.infer_config(transformer_shapes),
        )
