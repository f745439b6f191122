"""Meissonic's masked-token transformer (and Monetico's: same class), state-dict compatible with the hub's
``transformer/`` files (github viiika/Meissonic ``src/transformer.py``, ``Transformer2DModel``).

A Flux-style transformer inside aMUSEd's shell::

    ids [B, h, w] -> token embedding -> optional 2x2 downsampling -> [B, h'*w', D]
      -> N dual-stream blocks: image and text streams, each with its own adaptive norms, MLPs and
         q/k/v projections, meeting in one joint attention (RoPE, RMS q/k norm)
      -> text and image concatenated -> M single-stream blocks (attention and MLP in parallel)
      -> image part -> optional 2x2 upsampling -> logits [B, codebook_size, h, w]

Conditioning: the text stream starts from the text encoder's token states (CLIP ViT-H/14 penultimate
layer); every block is modulated by ``temb`` = embed(timestep) + embed(cond_embed([pooled text,
sinusoidal micro-conditions])). Positions: RoPE over ids (0, row, col) of the grid inside the blocks,
all text tokens at (0, 0, 0).

Where we deliberately differ from the reference (see docs/parity.md):
- RoPE ids come from the grid the blocks see. The reference builds them from the token grid halved
  at 1024 px and unhalved at every other size, which is the same grid for Meissonic at 1024 px and
  Monetico (no downsampling) at 512 px, and a shape error otherwise; here any size runs.
- The timestep is the reference's inference convention (the scheduler's descending step index,
  ``N - 1 .. 0``, times 1000, rounded to the model's dtype as the reference does), although it was trained
  on ``mask ratio * 1000 * 1000``: we keep what produced the published images. In float16 that number
  overflows past 65 steps, where the reference silently returns NaN logits; we raise.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from ..attention import attention
from .base import ModelConfig, TokenPredictor, count_children
from .layers import CondEmbedding, MlmHead, Resample, RMSNorm, TokenEmbedding, sinusoidal_embedding
from .micro_conds import MICRO_CONDS

EPS = 1e-6  # every norm of the reference
MICRO_COND_ENCODE_DIM = 256  # aMUSEd's sinusoidal width per micro-condition, hard-coded in the reference
TIMESTEP_ENCODE_DIM = 256  # diffusers' Timesteps(256) in CombinedTimestepTextProjEmbeddings
TIMESTEP_SCALE = 1000  # forward multiplies the timestep it is given by 1000
ROPE_THETA = 10000.0
MLP_RATIO = 4

# What Meissonic's pipeline uses by default (src/pipeline.py): MusePipeline.sampling starts from these.
SAMPLING_DEFAULTS = {"steps": 48, "guidance_scale": 9.0}

# The hub configs carry no sample size: Meissonic (downsampling) is trained at 64 x 64 tokens (1024 px),
# Monetico (no downsampling) at 32 x 32 (512 px); the reference's RoPE rule pairs them the same way.
NATIVE_TOKENS = {True: 64, False: 32}


@dataclasses.dataclass
class MeissonicConfig(ModelConfig):
    """The hub's ``transformer/config.json`` fields (defaults = Meissonic). ``patch_size`` and ``in_channels``
    of that file are unused by the reference's model and ignored here."""

    num_layers: int = 14  # dual-stream blocks
    num_single_layers: int = 28
    attention_head_dim: int = 128
    num_attention_heads: int = 8
    joint_attention_dim: int = 1024  # width of the text encoder's token states
    pooled_projection_dim: int = 1024  # width of its pooled vector, and of the conditioning vector
    guidance_embeds: bool = False
    axes_dims_rope: tuple[int, ...] = (16, 56, 56)
    vocab_size: int = 8256
    codebook_size: int = 8192
    downsample: bool = True
    upsample: bool = True
    sample_size: int | None = None  # tokens per side it was trained at; None = NATIVE_TOKENS[downsample]

    def __post_init__(self):
        if self.sample_size is None:
            self.sample_size = NATIVE_TOKENS[self.downsample]
        if self.guidance_embeds:
            raise ValueError("guidance_embeds=True (a distilled-guidance input) is not part of any released Meissonic.")
        if sum(self.axes_dims_rope) != self.attention_head_dim or any(d % 2 for d in self.axes_dims_rope):
            raise ValueError(f"axes_dims_rope {list(self.axes_dims_rope)} must be even and sum to attention_head_dim "
                             f"({self.attention_head_dim}).")
        if self.pooled_projection_dim != self.hidden_size:
            # the reference feeds cond_embed's output (hidden_size wide) to a pooled_projection_dim-wide input
            raise ValueError(f"pooled_projection_dim ({self.pooled_projection_dim}) must equal num_attention_heads x "
                             f"attention_head_dim ({self.hidden_size}).")
        if self.downsample != self.upsample:
            raise ValueError("downsample and upsample must be both on or both off.")
        if self.codebook_size >= self.vocab_size:
            raise ValueError(f"vocab_size ({self.vocab_size}) must exceed codebook_size ({self.codebook_size}).")

    @property
    def hidden_size(self) -> int:
        return self.num_attention_heads * self.attention_head_dim

    @property
    def mask_token_id(self) -> int:
        return self.vocab_size - 1

    # The names the sampler's text-width check reads (the U-ViT config's names for the same two widths).
    @property
    def encoder_hidden_size(self) -> int:
        return self.joint_attention_dim

    @property
    def cond_embed_dim(self) -> int:
        return self.pooled_projection_dim


@dataclasses.dataclass
class MeissonicContext:
    """What every step of one generation shares (:meth:`MeissonicTransformer.text_context`)."""

    text: torch.Tensor  # [B, L, D]: the text stream's input
    cond: torch.Tensor  # [B, D]: cond_embed([pooled text, micro-conditions])


def rope_tables(ids: torch.Tensor, axes_dims: tuple[int, ...]) -> tuple[torch.Tensor, torch.Tensor]:
    """cos, sin ``[S, head_dim]`` for positions ``ids [S, axes]``: per axis, frequencies
    theta^(-2i/d) in float64, each angle's value repeated for the two channels of its pair (Flux's RoPE)."""
    cos, sin = [], []
    positions = ids.double().cpu()
    for axis, dim in enumerate(axes_dims):
        freqs = 1.0 / ROPE_THETA ** (torch.arange(0, dim, 2, dtype=torch.float64) / dim)
        angles = torch.outer(positions[:, axis], freqs)  # [S, dim / 2]
        cos.append(angles.cos().repeat_interleave(2, dim=1).float())
        sin.append(angles.sin().repeat_interleave(2, dim=1).float())
    return torch.cat(cos, dim=-1).to(ids.device), torch.cat(sin, dim=-1).to(ids.device)


def apply_rope(x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    """Rotate channel pairs (2i, 2i+1) of ``x [B, H, S, d]`` by the table's angles."""
    cos, sin = rope
    real, imag = x.reshape(*x.shape[:-1], -1, 2).unbind(-1)
    rotated = torch.stack([-imag, real], dim=-1).flatten(3)
    return (x.float() * cos + rotated.float() * sin).to(x.dtype)


def grid_ids(text_length: int, height: int, width: int, device) -> torch.Tensor:
    """Position ids ``[text_length + height * width, 3]``: text at (0, 0, 0), then image tokens (0, row, col)."""
    rows, cols = torch.meshgrid(torch.arange(height), torch.arange(width), indexing="ij")
    image = torch.stack([torch.zeros_like(rows), rows, cols], dim=-1).reshape(-1, 3)
    return torch.cat([torch.zeros(text_length, 3, dtype=image.dtype), image]).float().to(device)


class AdaNormZero(nn.Module):
    """LayerNorm without affine, shifted and scaled by vectors from ``temb``; also returns the gates
    (diffusers' ``AdaLayerNormZero`` with ``chunks=6``, ``AdaLayerNormZeroSingle`` with 3)."""

    def __init__(self, dim: int, chunks: int):
        super().__init__()
        self.chunks = chunks
        self.linear = nn.Linear(dim, chunks * dim)
        self.norm = nn.LayerNorm(dim, elementwise_affine=False, eps=EPS)

    def forward(self, x: torch.Tensor, temb: torch.Tensor) -> tuple[torch.Tensor, ...]:
        shift, scale, *rest = self.linear(F.silu(temb)).chunk(self.chunks, dim=1)  # [B, D] each
        return self.norm(x) * (1 + scale[:, None]) + shift[:, None], *rest


class JointAttention(nn.Module):
    """Self-attention over [text, image] with RMS-normed queries and keys and RoPE. Dual-stream blocks
    project each stream with its own weights (``add_*`` for the text) and split the result back;
    single-stream blocks project the concatenated sequence once and have no output projection."""

    def __init__(self, dim: int, heads: int, head_dim: int, dual_stream: bool):
        super().__init__()
        self.heads = heads
        self.backend = "auto"
        inner = heads * head_dim
        self.to_q, self.to_k, self.to_v = (nn.Linear(dim, inner) for _ in range(3))
        self.norm_q, self.norm_k = RMSNorm(head_dim, EPS), RMSNorm(head_dim, EPS)
        if dual_stream:
            self.add_q_proj, self.add_k_proj, self.add_v_proj = (nn.Linear(dim, inner) for _ in range(3))
            self.norm_added_q, self.norm_added_k = RMSNorm(head_dim, EPS), RMSNorm(head_dim, EPS)
            self.to_out = nn.ModuleList([nn.Linear(inner, dim)])
            self.to_add_out = nn.Linear(inner, dim)

    def _heads(self, x: torch.Tensor, proj: nn.Linear, norm: nn.Module | None = None) -> torch.Tensor:
        x = rearrange(proj(x), "b s (h d) -> b h s d", h=self.heads)
        return x if norm is None else norm(x)

    def forward(self, x: torch.Tensor, rope, text: torch.Tensor | None = None):
        q, k, v = self._heads(x, self.to_q, self.norm_q), self._heads(x, self.to_k, self.norm_k), self._heads(x, self.to_v)
        if text is not None:  # dual stream: text first, as the RoPE ids are laid out
            q = torch.cat([self._heads(text, self.add_q_proj, self.norm_added_q), q], dim=2)
            k = torch.cat([self._heads(text, self.add_k_proj, self.norm_added_k), k], dim=2)
            v = torch.cat([self._heads(text, self.add_v_proj), v], dim=2)
        out = attention(apply_rope(q, rope), apply_rope(k, rope), v, backend=self.backend)
        out = rearrange(out, "b h s d -> b s (h d)")
        if text is None:
            return out
        length = text.shape[1]
        return self.to_out[0](out[:, length:]), self.to_add_out(out[:, :length])


class TanhGeluProjection(nn.Module):
    def __init__(self, dim: int, inner: int):
        super().__init__()
        self.proj = nn.Linear(dim, inner)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.gelu(self.proj(x), approximate="tanh")


class FeedForward(nn.Module):
    """diffusers' ``FeedForward(activation_fn="gelu-approximate")``: ``net.0.proj``, GELU-tanh, dropout, ``net.2``."""

    def __init__(self, dim: int):
        super().__init__()
        self.net = nn.Sequential(TanhGeluProjection(dim, MLP_RATIO * dim), nn.Dropout(0.0), nn.Linear(MLP_RATIO * dim, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def clip_float16(x: torch.Tensor) -> torch.Tensor:
    """Keep float16 activations finite, as the reference does after each block."""
    return x.clip(-65504, 65504) if x.dtype == torch.float16 else x


class DualStreamBlock(nn.Module):
    def __init__(self, dim: int, heads: int, head_dim: int):
        super().__init__()
        self.norm1, self.norm1_context = AdaNormZero(dim, 6), AdaNormZero(dim, 6)
        self.attn = JointAttention(dim, heads, head_dim, dual_stream=True)
        self.norm2 = nn.LayerNorm(dim, elementwise_affine=False, eps=EPS)
        self.ff = FeedForward(dim)
        self.norm2_context = nn.LayerNorm(dim, elementwise_affine=False, eps=EPS)
        self.ff_context = FeedForward(dim)

    def forward(self, x, text, temb, rope):  # x [B, S, D], text [B, L, D]
        x_normed, gate, shift_mlp, scale_mlp, gate_mlp = self.norm1(x, temb)
        text_normed, text_gate, text_shift_mlp, text_scale_mlp, text_gate_mlp = self.norm1_context(text, temb)
        attn, text_attn = self.attn(x_normed, rope, text_normed)
        x = x + gate[:, None] * attn
        x = x + gate_mlp[:, None] * self.ff(self.norm2(x) * (1 + scale_mlp[:, None]) + shift_mlp[:, None])
        text = text + text_gate[:, None] * text_attn
        text_mlp = self.ff_context(self.norm2_context(text) * (1 + text_scale_mlp[:, None]) + text_shift_mlp[:, None])
        return x, clip_float16(text + text_gate_mlp[:, None] * text_mlp)


class SingleStreamBlock(nn.Module):
    def __init__(self, dim: int, heads: int, head_dim: int):
        super().__init__()
        self.norm = AdaNormZero(dim, 3)
        self.proj_mlp = nn.Linear(dim, MLP_RATIO * dim)
        self.attn = JointAttention(dim, heads, head_dim, dual_stream=False)
        self.proj_out = nn.Linear(dim + MLP_RATIO * dim, dim)

    def forward(self, x, temb, rope):  # x [B, L + S, D]
        normed, gate = self.norm(x, temb)
        mlp = F.gelu(self.proj_mlp(normed), approximate="tanh")
        out = self.proj_out(torch.cat([self.attn(normed, rope), mlp], dim=2))
        return clip_float16(x + gate[:, None] * out)


class TimestepTextEmbedding(nn.Module):
    """temb = MLP(sinusoidal(timestep)) + MLP(cond) (diffusers' ``CombinedTimestepTextProjEmbeddings``)."""

    def __init__(self, dim: int, cond_dim: int):
        super().__init__()
        self.timestep_embedder = CondEmbedding(TIMESTEP_ENCODE_DIM, dim, bias=True)
        self.text_embedder = CondEmbedding(cond_dim, dim, bias=True)

    def forward(self, timestep: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        features = sinusoidal_embedding(timestep, TIMESTEP_ENCODE_DIM).to(cond.dtype)  # [1, 256]
        return self.timestep_embedder(features) + self.text_embedder(cond)  # [B, D]


class MeissonicTransformer(TokenPredictor):
    """Meissonic / Monetico base transformer (text-to-image on a VQ token grid)."""

    kind = "meissonic"
    config_class = MeissonicConfig
    timestep_conditioned = True  # the sampler passes each step's timestep (sampling.schedules.scheduler_timestep)
    sampling_defaults = SAMPLING_DEFAULTS

    def __init__(self, config: MeissonicConfig):
        super().__init__(config)
        cfg = config
        dim, heads, head_dim = cfg.hidden_size, cfg.num_attention_heads, cfg.attention_head_dim
        self.time_text_embed = TimestepTextEmbedding(dim, cfg.pooled_projection_dim)
        self.context_embedder = nn.Linear(cfg.joint_attention_dim, dim)
        self.transformer_blocks = nn.ModuleList(DualStreamBlock(dim, heads, head_dim) for _ in range(cfg.num_layers))
        self.single_transformer_blocks = nn.ModuleList(
            SingleStreamBlock(dim, heads, head_dim) for _ in range(cfg.num_single_layers)
        )
        self.embed = TokenEmbedding(cfg.vocab_size, dim, dim, EPS, affine=True, bias=False)
        self.mlm_layer = MlmHead(dim, dim, cfg.codebook_size, EPS, affine=True, bias=False)
        self.cond_embed = CondEmbedding(len(MICRO_CONDS) * MICRO_COND_ENCODE_DIM + cfg.pooled_projection_dim, dim,
                                        bias=False)
        self.encoder_proj_layer_norm = RMSNorm(dim, EPS)
        self.project_to_hidden_norm = RMSNorm(dim, EPS)
        self.project_to_hidden = nn.Linear(dim, dim, bias=False)
        self.project_from_hidden_norm = RMSNorm(dim, EPS)
        self.project_from_hidden = nn.Linear(dim, dim, bias=False)
        # The reference's Simple_UVitBlock holds only the resampling: keys down_block.downsample.*, up_block.upsample.*
        self.down_block = nn.ModuleDict({"downsample": Resample(dim, EPS, True, False, up=False)} if cfg.downsample else {})
        self.up_block = nn.ModuleDict({"upsample": Resample(dim, EPS, True, False, up=True)} if cfg.upsample else {})

    def text_context(self, encoder_hidden_states: torch.Tensor, pooled_text_emb: torch.Tensor, micro_conds: torch.Tensor,
                     encoder_attention_mask: torch.Tensor | None = None) -> MeissonicContext:
        """The text stream's input and the conditioning vector, once per generation. The mask is not used: the
        reference attends to all 77 CLIP positions, padding included (the model was trained so)."""
        batch = pooled_text_emb.shape[0]
        # micro_conds [B, 5] -> [B, 5 * 256], each value's features side by side
        micro = sinusoidal_embedding(micro_conds.flatten(), MICRO_COND_ENCODE_DIM).reshape(batch, -1)
        cond = self.cond_embed(torch.cat([pooled_text_emb, micro], dim=1).to(self.dtype))
        text = self.encoder_proj_layer_norm(self.context_embedder(encoder_hidden_states.to(self.dtype)))
        return MeissonicContext(text, cond.to(text.dtype))

    def forward(self, input_ids: torch.Tensor, encoder_hidden_states: torch.Tensor, pooled_text_emb: torch.Tensor,
                micro_conds: torch.Tensor, timestep: int, encoder_attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """``[B, h, w]`` ids (mask token = vocab_size - 1) at scheduler ``timestep`` -> ``[B, codebook_size, h, w]``."""
        text = self.text_context(encoder_hidden_states, pooled_text_emb, micro_conds, encoder_attention_mask)
        return self.forward_with_text(input_ids, text, timestep)

    def forward_with_text(self, input_ids: torch.Tensor, text: MeissonicContext, timestep: int) -> torch.Tensor:
        x = self.embed(input_ids)  # [B, D, h, w]
        for resample in self.down_block.values():
            x = resample(x)
        height, width = x.shape[-2:]
        x = self.project_to_hidden(self.project_to_hidden_norm(rearrange(x, "b c h w -> b (h w) c")))  # [B, S, D]
        # the reference rounds timestep x 1000 to the activations' dtype; float16 overflows past 65 steps
        time = torch.tensor([timestep], device=x.device).to(x.dtype) * TIMESTEP_SCALE
        if not torch.isfinite(time).all():
            raise ValueError(f"in float16 the timestep {timestep} x {TIMESTEP_SCALE} overflows (at most 65 steps): "
                             "use fewer steps, or bfloat16 or float32.")
        temb = self.time_text_embed(time, text.cond)
        context = text.text
        rope = rope_tables(grid_ids(context.shape[1], height, width, x.device), self.config.axes_dims_rope)
        for block in self.transformer_blocks:
            x, context = block(x, context, temb, rope)
        x = torch.cat([context, x], dim=1)
        for block in self.single_transformer_blocks:
            x = block(x, temb, rope)
        x = self.project_from_hidden(self.project_from_hidden_norm(x[:, context.shape[1]:]))
        x = rearrange(x, "b (h w) c -> b c h w", h=height, w=width)
        for resample in self.up_block.values():
            x = resample(x)
        return self.mlm_layer(x)

    @classmethod
    def infer_config(cls, shapes: Mapping[str, torch.Size]) -> MeissonicConfig:
        """Sizes from the tensors; the RoPE axes (not in any tensor) are Meissonic's split of the head width."""
        dim, text_dim = shapes["context_embedder.weight"]
        head_dim = shapes["transformer_blocks.0.attn.norm_q.weight"][0]
        axes = MeissonicConfig.axes_dims_rope
        if sum(axes) != head_dim:
            raise ValueError(f"heads are {head_dim} wide, not Meissonic's {sum(axes)}: the RoPE axes are unknown")
        return MeissonicConfig(
            num_layers=count_children(shapes, "transformer_blocks"),
            num_single_layers=count_children(shapes, "single_transformer_blocks"),
            attention_head_dim=head_dim,
            num_attention_heads=dim // head_dim,
            joint_attention_dim=text_dim,
            pooled_projection_dim=shapes["time_text_embed.text_embedder.linear_1.weight"][1],
            vocab_size=shapes["embed.embeddings.weight"][0],
            codebook_size=shapes["mlm_layer.conv2.weight"][0],
            downsample="down_block.downsample.conv.weight" in shapes,
            upsample="up_block.upsample.conv.weight" in shapes,
        )
