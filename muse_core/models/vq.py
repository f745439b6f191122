"""The VQ tokenizer: images <-> grids of codebook ids, numerically equal to diffusers' ``VQModel``.

Layout (aMUSEd: 5 blocks, 128..768 channels, 8192 codes of 64 dims, no mid-block attention)::

    encode: image [0,1] -> encoder -> quant_conv (1x1) -> argmin ||z - e_k|| over the codebook -> ids
    decode: ids -> codebook rows -> post_quant_conv (1x1) -> decoder -> clamp(0, 1) -> image

Submodule names reproduce diffusers' state-dict keys exactly, so a diffusers ``vqvae`` folder loads
as is. Every layer computes in the dtype of its input (weights are cast one layer at a time), which is
how ``encode``/``decode`` run in fp32 on fp16-stored weights without a second copy of the model:
aMUSEd's VQ gives NaNs when decoded in fp16 (its ``force_upcast``).
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Mapping

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from ..attention import attention
from ..limits import check_image_batch
from .base import ModelConfig, MuseModel, count_children

# diffusers' ACT2CLS, as functions
_ACTIVATIONS = {"silu": F.silu, "swish": F.silu, "mish": F.mish, "gelu": F.gelu, "relu": F.relu}
_EPS = 1e-6  # diffusers hard-codes this GroupNorm eps throughout the VQ encoder/decoder


@dataclasses.dataclass
class VQConfig(ModelConfig):
    """diffusers ``VQModel`` config; field names and defaults are diffusers', so config.json loads as is.

    ``sample_size``, ``scaling_factor``, ``lookup_from_codebook`` and ``force_upcast`` are kept for
    round trips only: Muse decodes from ids (always a codebook lookup), never scales latents, and
    ``encode``/``decode`` take ``upcast`` themselves.
    """

    in_channels: int = 3
    out_channels: int = 3
    down_block_types: tuple[str, ...] = ("DownEncoderBlock2D",)
    up_block_types: tuple[str, ...] = ("UpDecoderBlock2D",)
    block_out_channels: tuple[int, ...] = (64,)
    layers_per_block: int = 1
    act_fn: str = "silu"
    latent_channels: int = 3
    sample_size: int = 32
    num_vq_embeddings: int = 256
    norm_num_groups: int = 32
    vq_embed_dim: int | None = None
    scaling_factor: float = 0.18215
    norm_type: str = "group"
    mid_block_add_attention: bool = True
    lookup_from_codebook: bool = False
    force_upcast: bool = False

    def __post_init__(self):
        blocks = len(self.block_out_channels)
        if blocks == 0:
            raise ValueError("VQConfig.block_out_channels is empty; it needs one entry per block.")
        if tuple(self.down_block_types) != ("DownEncoderBlock2D",) * blocks:
            raise ValueError(
                f"VQConfig.down_block_types={list(self.down_block_types)}: only {blocks} x 'DownEncoderBlock2D' "
                "(one per block_out_channels entry) is supported."
            )
        if tuple(self.up_block_types) != ("UpDecoderBlock2D",) * blocks:
            raise ValueError(
                f"VQConfig.up_block_types={list(self.up_block_types)}: only {blocks} x 'UpDecoderBlock2D' "
                "(one per block_out_channels entry) is supported."
            )
        if self.norm_type != "group":
            raise ValueError(f"VQConfig.norm_type={self.norm_type!r} is not supported; only 'group' is.")
        if self.act_fn not in _ACTIVATIONS:
            raise ValueError(f"VQConfig.act_fn={self.act_fn!r} is not supported; choose one of {list(_ACTIVATIONS)}.")
        if self.layers_per_block < 1:
            raise ValueError(f"VQConfig.layers_per_block={self.layers_per_block} must be at least 1.")
        bad = [c for c in self.block_out_channels if c % self.norm_num_groups]
        if bad:
            raise ValueError(
                f"VQConfig.norm_num_groups={self.norm_num_groups} does not divide block_out_channels {bad}."
            )

    @property
    def embed_dim(self) -> int:
        """Width of a codebook vector (diffusers: ``vq_embed_dim``, or ``latent_channels`` when None)."""
        return self.latent_channels if self.vq_embed_dim is None else self.vq_embed_dim


# --- layers that compute in their input's dtype --------------------------------------------------------
# Casting a layer's weights on the fly costs one layer's worth of memory; casting the module would cost a
# full fp32 copy of it (and mutate a model other nodes may share).


class Conv2d(nn.Conv2d):
    def forward(self, x):
        return self._conv_forward(x, self.weight.to(x.dtype), self.bias.to(x.dtype))


class GroupNorm(nn.GroupNorm):
    def forward(self, x):
        return F.group_norm(x, self.num_groups, self.weight.to(x.dtype), self.bias.to(x.dtype), self.eps)


class Linear(nn.Linear):
    def forward(self, x):
        return F.linear(x, self.weight.to(x.dtype), self.bias.to(x.dtype))


# --- blocks ---------------------------------------------------------------------------------------------


class ResnetBlock(nn.Module):
    """diffusers ``ResnetBlock2D`` without a time embedding: x + conv(act(norm(conv(act(norm(x))))))."""

    def __init__(self, cin: int, cout: int, groups: int, act: str):
        super().__init__()
        self.act = _ACTIVATIONS[act]
        self.norm1 = GroupNorm(groups, cin, eps=_EPS)
        self.conv1 = Conv2d(cin, cout, 3, padding=1)
        self.norm2 = GroupNorm(groups, cout, eps=_EPS)
        self.conv2 = Conv2d(cout, cout, 3, padding=1)
        # a 1x1 projection on the skip path only where the width changes, as in diffusers
        self.conv_shortcut = Conv2d(cin, cout, 1) if cin != cout else None

    def forward(self, x):
        h = self.conv1(self.act(self.norm1(x)))
        h = self.conv2(self.act(self.norm2(h)))
        return (x if self.conv_shortcut is None else self.conv_shortcut(x)) + h


class Downsample(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv = Conv2d(channels, channels, 3, stride=2)

    def forward(self, x):
        # diffusers' encoder uses padding=0 and pads right/bottom only (the original LDM/taming layout)
        return self.conv(F.pad(x, (0, 1, 0, 1)))


class Upsample(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv = Conv2d(channels, channels, 3, padding=1)

    def forward(self, x):
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class SelfAttention(nn.Module):
    """diffusers' mid-block ``Attention``: one head as wide as the channels, over all pixels, residual."""

    def __init__(self, channels: int, groups: int):
        super().__init__()
        self.backend = "auto"  # set by muse_core's set_attention_backend
        self.group_norm = GroupNorm(groups, channels, eps=_EPS)
        self.to_q = Linear(channels, channels)
        self.to_k = Linear(channels, channels)
        self.to_v = Linear(channels, channels)
        self.to_out = nn.ModuleList([Linear(channels, channels)])  # a list: diffusers' key is to_out.0

    def forward(self, x):
        _, _, height, width = x.shape
        h = rearrange(self.group_norm(x), "b c y x -> b 1 (y x) c")
        h = attention(self.to_q(h), self.to_k(h), self.to_v(h), backend=self.backend)
        # Back to [B, C, H, W] as a view of [B, HW, C], as diffusers does, and h first in the sum, which takes
        # h's strides: the later layers then see diffusers' layouts and run its kernels. Those strides are
        # channels-last, except at batch 1, where the view's batch stride is C and torch's layout heuristic
        # takes the tensor for NCHW. `x + h`, or einops' reshape-then-permute (channels-last at every batch
        # size), would be equal only up to rounding.
        h = self.to_out[0](h)[:, 0].transpose(1, 2).unflatten(2, (height, width))
        return h + x


class MidBlock(nn.Module):
    """resnet, [attention], resnet at the lowest resolution (diffusers ``UNetMidBlock2D``)."""

    def __init__(self, channels: int, groups: int, act: str, add_attention: bool):
        super().__init__()
        self.resnets = nn.ModuleList([ResnetBlock(channels, channels, groups, act) for _ in range(2)])
        self.attentions = nn.ModuleList([SelfAttention(channels, groups)] if add_attention else [])

    def forward(self, x):
        x = self.resnets[0](x)
        for attn in self.attentions:
            x = attn(x)
        return self.resnets[1](x)


class EncoderBlock(nn.Module):
    """diffusers ``DownEncoderBlock2D``: resnets, then a stride-2 conv unless it is the last block."""

    def __init__(self, cin: int, cout: int, num_layers: int, groups: int, act: str, downsample: bool):
        super().__init__()
        self.resnets = nn.ModuleList(ResnetBlock(cin if i == 0 else cout, cout, groups, act) for i in range(num_layers))
        self.downsamplers = nn.ModuleList([Downsample(cout)] if downsample else [])

    def forward(self, x):
        for layer in [*self.resnets, *self.downsamplers]:
            x = layer(x)
        return x


class DecoderBlock(nn.Module):
    """diffusers ``UpDecoderBlock2D``: resnets, then nearest x2 + conv unless it is the last block."""

    def __init__(self, cin: int, cout: int, num_layers: int, groups: int, act: str, upsample: bool):
        super().__init__()
        self.resnets = nn.ModuleList(ResnetBlock(cin if i == 0 else cout, cout, groups, act) for i in range(num_layers))
        self.upsamplers = nn.ModuleList([Upsample(cout)] if upsample else [])

    def forward(self, x):
        for layer in [*self.resnets, *self.upsamplers]:
            x = layer(x)
        return x


class Encoder(nn.Module):
    def __init__(self, c: VQConfig):
        super().__init__()
        chans, groups = c.block_out_channels, c.norm_num_groups
        self.conv_in = Conv2d(c.in_channels, chans[0], 3, padding=1)
        self.down_blocks = nn.ModuleList(
            EncoderBlock(chans[max(i - 1, 0)], cout, c.layers_per_block, groups, c.act_fn, i < len(chans) - 1)
            for i, cout in enumerate(chans)
        )
        self.mid_block = MidBlock(chans[-1], groups, c.act_fn, c.mid_block_add_attention)
        self.conv_norm_out = GroupNorm(groups, chans[-1], eps=_EPS)
        self.conv_out = Conv2d(chans[-1], c.latent_channels, 3, padding=1)

    def forward(self, x):
        x = self.conv_in(x)
        for block in self.down_blocks:
            x = block(x)
        x = self.mid_block(x)
        return self.conv_out(F.silu(self.conv_norm_out(x)))  # diffusers: SiLU here whatever act_fn says


class Decoder(nn.Module):
    def __init__(self, c: VQConfig):
        super().__init__()
        chans, groups = c.block_out_channels[::-1], c.norm_num_groups
        self.conv_in = Conv2d(c.latent_channels, chans[0], 3, padding=1)
        self.mid_block = MidBlock(chans[0], groups, c.act_fn, c.mid_block_add_attention)
        # one more resnet per block than the encoder, as in diffusers (layers_per_block + 1)
        self.up_blocks = nn.ModuleList(
            DecoderBlock(chans[max(i - 1, 0)], cout, c.layers_per_block + 1, groups, c.act_fn, i < len(chans) - 1)
            for i, cout in enumerate(chans)
        )
        self.conv_norm_out = GroupNorm(groups, chans[-1], eps=_EPS)
        self.conv_out = Conv2d(chans[-1], c.out_channels, 3, padding=1)

    def forward(self, x):
        x = self.mid_block(self.conv_in(x))
        for block in self.up_blocks:
            x = block(x)
        return self.conv_out(F.silu(self.conv_norm_out(x)))


class Quantizer(nn.Module):
    """Holds the codebook under diffusers' name ``quantize.embedding.weight``."""

    def __init__(self, num_codes: int, dim: int):
        super().__init__()
        self.embedding = nn.Embedding(num_codes, dim)


# --- the tokenizer --------------------------------------------------------------------------------------


class VQTokenizer(MuseModel):
    """Images [B,3,H,W] in [0,1] <-> codebook ids [B,H/f,W/f], f = ``downsample_factor``."""

    kind = "vq"
    config_class = VQConfig
    config: VQConfig

    def __init__(self, config: VQConfig):
        super().__init__(config)
        self.encoder = Encoder(config)
        self.quant_conv = Conv2d(config.latent_channels, config.embed_dim, 1)
        self.quantize = Quantizer(config.num_vq_embeddings, config.embed_dim)
        self.post_quant_conv = Conv2d(config.embed_dim, config.latent_channels, 1)
        self.decoder = Decoder(config)

    @property
    def codebook_size(self) -> int:
        return self.config.num_vq_embeddings

    @property
    def fingerprint(self) -> str:
        """A short hash of the codebook: tells apart two VQs of the same sizes (token grids remember theirs)."""
        weights = self.quantize.embedding.weight.detach().float().cpu().contiguous()
        return hashlib.sha1(weights.numpy().tobytes()).hexdigest()[:16]

    @property
    def downsample_factor(self) -> int:
        return 2 ** (len(self.config.block_out_channels) - 1)

    def _compute_dtype(self, upcast: bool) -> torch.dtype:
        return torch.float32 if upcast else self.dtype

    @torch.no_grad()
    def encode(self, images: torch.Tensor, upcast: bool = True) -> torch.Tensor:
        """[B,C,H,W] float images in [0,1] (not [-1,1]) -> [B,H/f,W/f] long ids; fp32 unless ``upcast=False``."""
        self._check_images(images)
        x = images.to(device=self.device, dtype=self._compute_dtype(upcast))
        z = self.quant_conv(self.encoder(x))  # [B, embed_dim, H/f, W/f]
        batch, _, height, width = z.shape
        codebook = self.quantize.embedding.weight.to(z.dtype)  # [codes, embed_dim]
        # Exactly diffusers' VectorQuantizer call, so ties and rounding pick the same ids: cdist on the whole
        # flattened batch (its matmul form, ||z||^2 - 2 z.e + ||e||^2, then sqrt). The [N, codes] distance
        # matrix is far smaller than the encoder's full-resolution activations, so it never sets the peak.
        ids = torch.cdist(rearrange(z, "b d h w -> (b h w) d"), codebook).argmin(dim=1)
        return ids.view(batch, height, width)

    @torch.no_grad()
    def decode(self, ids: torch.Tensor, upcast: bool = True) -> torch.Tensor:
        """[B,h,w] integer ids -> [B,C,h*f,w*f] images clamped to [0,1]; fp32 unless ``upcast=False``."""
        self._check_ids(ids)
        codebook = self.quantize.embedding.weight.to(self._compute_dtype(upcast))
        # contiguous NCHW as diffusers' get_codebook_entry, so the convolutions pick the same kernels
        z = rearrange(F.embedding(ids.to(codebook.device), codebook), "b h w d -> b d h w").contiguous()
        return self.decoder(self.post_quant_conv(z)).clamp_(0, 1)

    def _check_images(self, images: torch.Tensor) -> None:
        check_image_batch("the images to VQ-encode", images, self.downsample_factor, self.config.in_channels)

    def _check_ids(self, ids: torch.Tensor) -> None:
        if ids.ndim != 3:
            raise ValueError(f"VQ decode expects ids shaped [B, h, w]; got {list(ids.shape)}.")
        if ids.is_floating_point() or ids.is_complex() or ids.dtype == torch.bool:
            raise ValueError(f"VQ decode expects integer ids; got dtype {ids.dtype}.")
        low, high = ids.aminmax()
        if low < 0 or high >= self.codebook_size:
            raise ValueError(
                f"VQ decode: ids must lie in [0, {self.codebook_size - 1}]; got [{low.item()}, {high.item()}] "
                "(mask ids must be replaced before decoding)."
            )

    @classmethod
    def infer_config(cls, shapes: Mapping[str, torch.Size]) -> VQConfig:
        """Config from diffusers-named tensor shapes.

        ``norm_num_groups`` (and ``act_fn``) leave no trace in the weights: the defaults 32 and "silu" are
        used, as in every known VQ checkpoint. ``vq_embed_dim`` is None when it equals ``latent_channels``
        (the same model). ``lookup_from_codebook``/``force_upcast`` are set as aMUSEd sets them.
        """
        try:
            blocks = count_children(shapes, "encoder.down_blocks")
            layers = count_children(shapes, "encoder.down_blocks.0.resnets")
            channels = tuple(shapes[f"encoder.down_blocks.{i}.resnets.0.conv1.weight"][0] for i in range(blocks))
            in_channels, out_channels = shapes["encoder.conv_in.weight"][1], shapes["decoder.conv_out.weight"][0]
            latent, embed_dim = shapes["encoder.conv_out.weight"][0], shapes["quant_conv.weight"][0]
            codes = shapes["quantize.embedding.weight"][0]
        except KeyError as exc:
            raise ValueError(
                f"These tensors do not look like a diffusers VQModel (no tensor {exc}); provide its config.json."
            ) from exc
        return VQConfig(
            in_channels=in_channels,
            out_channels=out_channels,
            down_block_types=("DownEncoderBlock2D",) * blocks,
            up_block_types=("UpDecoderBlock2D",) * blocks,
            block_out_channels=channels,
            layers_per_block=layers,
            latent_channels=latent,
            num_vq_embeddings=codes,
            vq_embed_dim=None if embed_dim == latent else embed_dim,
            mid_block_add_attention="encoder.mid_block.attentions.0.to_q.weight" in shapes,
            lookup_from_codebook=True,
            force_upcast=True,
        )

