"""Training the VQ tokenizer (``muse_core.models.vq.VQTokenizer``): a VQ-VAE with dead-code restarts.

The objective quantises exactly as ``VQTokenizer.encode`` does (euclidean nearest code on the raw
``quant_conv`` output, no normalisation) and decodes as ``decode`` does, so the exported model's
``encode``/``decode`` are the trained ones. Images are [0,1] in and out, as ``encode``/``decode`` expect.

Loss = L1 + MSE reconstruction + ||sg(z) - e||^2 (moves the codes) + commitment * ||z - sg(e)||^2
(keeps the encoder near its codes) + patch_consistency * (spread of z within identical patches, off by default)
+ boundary_invariance * (how far boundary latents move when the image's colours change, off by default),
all in fp32 whatever autocast computes the convolutions in.

Patch consistency: the encoder sees far beyond its own patch (3x3 convolutions, GroupNorm over the
whole image), so without it one flat colour spreads over dozens of codes depending on what is nearby
(measured on the shapes data: 22-105 codes, 2.3 nats, per flat colour). The transformer then spends
its loss guessing among equivalent codes, and its confidence, which decides what parallel decoding
keeps, says little about the picture. Pulling the latents of patches with the same pixels (within
1/64) towards their batch mean gives identical patches one code (there: 3-12 codes, 0.63 nats, and a
lower reconstruction loss). The base transformer's loss then fell from 2.40 to 1.75. Off by default
(the reference recipe); the shipped preset turns it on for its 64 px VQ.

Boundary invariance: a patch an edge crosses holds two colours and a geometry, and the plain objective
gives every (colour pair, geometry) its own code, so the transformer must learn each combination apart
(3.3k distinct boundary patches in 2000 aligned training images; it got 5% of the boundary codes right
after 2000 steps). The term encodes a recoloured copy of the batch too (channels permuted and inverted:
a per-channel linear map, exact on anti-aliased edges as well) and pulls the boundary latents of the two
encodings together, so a boundary code says where the edge runs and the decoder takes the colours from
the flat codes around it.

Codes that the encoder stops choosing get no gradient and never come back. Their usage is tracked
(an EMA of how often each code is picked); every ``restart_every`` steps the codes used less than
``dead_usage`` times their fair share are moved onto encoder outputs of the current batch, picked one
after the other as k-means++ seeds: with probability proportional to the squared distance to the
nearest live code. Uniform picks would land mostly on flat background (most of every image), split
one background colour over hundreds of near-identical codes and leave the transformer to guess
between them; distance-weighted picks go where the codebook is poor (edges, rare colours).
Usage starts at zero, so the first step seeds the whole codebook from the data that way.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from ..loading import save_model
from ..models.vq import VQConfig, VQTokenizer


def small_vq_config(
    downsample_factor: int,
    codebook_size: int,
    base_channels: int = 32,
    embed_dim: int = 8,
    layers_per_block: int = 1,
    norm_num_groups: int = 8,
) -> VQConfig:
    """A small, fast VQ: log2(f)+1 blocks; full resolution at ``base_channels``, twice that below.

    f4 -> (c, 2c, 2c), f8 -> (c, 2c, 2c, 2c). Narrow codes (``embed_dim`` 8, as ViT-VQGAN's factorised
    codebooks) help keep the codebook in use. No mid-block attention: flat shapes need none, and it costs.
    """
    if downsample_factor < 2 or not math.log2(downsample_factor).is_integer():
        raise ValueError(f"downsample_factor={downsample_factor} must be a power of two (4, 8, 16...).")
    channels = (base_channels, *[2 * base_channels] * int(math.log2(downsample_factor)))
    if base_channels % norm_num_groups:
        raise ValueError(f"norm_num_groups={norm_num_groups} must divide base_channels={base_channels}.")
    return VQConfig(
        down_block_types=("DownEncoderBlock2D",) * len(channels),
        up_block_types=("UpDecoderBlock2D",) * len(channels),
        block_out_channels=channels,
        layers_per_block=layers_per_block,
        latent_channels=embed_dim,
        num_vq_embeddings=codebook_size,
        norm_num_groups=norm_num_groups,
        mid_block_add_attention=False,
        lookup_from_codebook=True,
        force_upcast=True,
    )


class VQObjective(nn.Module):
    """Reconstruction + codebook + commitment loss for a ``VQTokenizer``; see the module docstring."""

    def __init__(
        self,
        vq: VQTokenizer,
        commitment: float = 0.25,
        patch_consistency: float = 0.0,
        boundary_invariance: float = 0.0,
        usage_decay: float = 0.99,
        restart_every: int = 100,
        dead_usage: float = 0.03,
    ):
        super().__init__()
        self.vq = vq
        self.commitment = commitment
        self.patch_consistency = patch_consistency
        self.boundary_invariance = boundary_invariance
        self.usage_decay = usage_decay
        self.restart_every = restart_every
        self.dead_usage = dead_usage
        # EMA of the share of positions that pick each code (sums to <= 1); zero: all codes start dead.
        self.register_buffer("code_usage", torch.zeros(vq.codebook_size))
        self.register_buffer("step", torch.zeros((), dtype=torch.long))

    def forward(self, batch: dict) -> tuple[torch.Tensor, dict[str, float]]:
        images = batch["images"]
        self.vq._check_images(images)  # encode's shape and [0, 1] checks: a 0..255 folder fails here, not silently
        z = self.vq.quant_conv(self.vq.encoder(images))
        # Quantisation in fp32 under autocast too: bf16 distances would pick other codes than encode does.
        with torch.autocast(device_type=z.device.type, enabled=False):
            z = z.float()
            if self.training:
                self._restart_dead_codes(rearrange(z.detach(), "b d h w -> (b h w) d"))
            z_q, ids, codebook_loss, commitment_loss = self.quantize(z)
        reconstruction = self.vq.decoder(self.vq.post_quant_conv(z_q)).float()
        l1 = F.l1_loss(reconstruction, images.float())
        mse = F.mse_loss(reconstruction, images.float())
        consistency = patch_consistency_loss(images, z) if self.patch_consistency else z.new_zeros(())
        invariance = self._boundary_invariance_loss(images, z) if self.boundary_invariance else z.new_zeros(())
        loss = (l1 + mse + codebook_loss + self.commitment * commitment_loss + self.patch_consistency * consistency
                + self.boundary_invariance * invariance)

        counts = torch.bincount(ids.flatten(), minlength=self.vq.codebook_size).float()
        if self.training:
            self._update_usage(counts)
        share = counts / counts.sum()
        perplexity = torch.exp(-(share * share.clamp_min(1e-12).log()).sum())
        logs = {
            "rec": (l1 + mse).item(),
            "commit": commitment_loss.item(),
            "consistency": consistency.item(),
            "invariance": invariance.item(),
            "perplexity": perplexity.item(),
            "codes_used": (self.code_usage > self._dead_below).float().mean().item(),
        }
        return loss, logs

    def quantize(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """fp32 ``quant_conv`` outputs [B,D,h,w] -> (straight-through codes [B,D,h,w], ids [B,h,w] as
        ``VQTokenizer.encode`` picks them, codebook loss, commitment loss)."""
        batch, _, height, width = z.shape
        z = rearrange(z, "b d h w -> (b h w) d")
        codebook = self.vq.quantize.embedding.weight.float()
        with torch.no_grad():
            ids = torch.cdist(z, codebook).argmin(dim=1)  # exactly encode's nearest-code rule
        codes = F.embedding(ids, codebook)
        codebook_loss = F.mse_loss(codes, z.detach())
        commitment_loss = F.mse_loss(z, codes.detach())
        z_q = z + (codes - z).detach()  # straight-through: the decoder's gradient flows into the encoder
        # contiguous NCHW as decode feeds the decoder: a channels-last view makes CPU GroupNorm backward ~10x slower
        z_q = rearrange(z_q, "(b h w) d -> b d h w", b=batch, h=height, w=width).contiguous()
        return z_q, ids.view(batch, height, width), codebook_loss, commitment_loss

    def _boundary_invariance_loss(self, images: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """Squared distance between the boundary latents of ``images`` and of a recoloured copy, as a share of
        the latents' whole spread (so that shrinking every latent cannot lower it)."""
        permutation = torch.randperm(3, device=images.device)
        inverted = torch.rand(1, 3, 1, 1, device=images.device) < 0.5
        recoloured = images[:, permutation]
        recoloured = torch.where(inverted, 1 - recoloured, recoloured)
        z_recoloured = self.vq.quant_conv(self.vq.encoder(recoloured)).float()
        boundary = rearrange(boundary_patches(images, images.shape[-1] // z.shape[-1]), "b h w -> (b h w)")
        z, z_recoloured = (rearrange(t, "b d h w -> (b h w) d") for t in (z, z_recoloured))
        spread = (z - z.mean(dim=0)).square().sum(dim=1).mean().clamp_min(1e-12)
        if not boundary.any():
            return z.new_zeros(())
        return (z[boundary] - z_recoloured[boundary]).square().sum(dim=1).mean() / spread

    @property
    def _dead_below(self) -> float:
        return self.dead_usage / self.vq.codebook_size

    @torch.no_grad()
    def _update_usage(self, counts: torch.Tensor) -> None:
        if dist.is_initialized():  # every rank must see the same usage, hence restart the same codes
            counts = counts.clone()
            dist.all_reduce(counts)
        self.code_usage.mul_(self.usage_decay).add_(counts / counts.sum(), alpha=1 - self.usage_decay)
        self.step += 1

    @torch.no_grad()
    def _restart_dead_codes(self, z: torch.Tensor) -> None:
        """Move rarely used codes onto random encoder outputs ``z`` [N, D] (rank 0's, under DDP)."""
        if self.step.item() % self.restart_every:
            return
        dead = (self.code_usage < self._dead_below).nonzero().squeeze(1)
        if len(dead) == 0:
            return
        replacement = kmeans_plus_plus_seeds(z, self.vq.quantize.embedding.weight.float(), dead)
        if dist.is_initialized():
            dist.broadcast(replacement, src=0)
        weight = self.vq.quantize.embedding.weight
        weight[dead] = replacement.to(weight.dtype)
        # A fair share of usage, so a restarted code gets a few restart periods to be picked.
        self.code_usage[dead] = 1 / self.vq.codebook_size

    def export(self, folder: Path, name: str = "vqvae", dtype: torch.dtype = torch.float16) -> Path:
        """Write ``folder/<name>.safetensors`` (loadable with ``load_model(VQTokenizer, path)``)."""
        return save_model(self.vq, Path(folder) / f"{name}.safetensors", dtype)


def quantised_patches(images: torch.Tensor, factor: int, levels: int = 64) -> torch.Tensor:
    """[B,C,H,W] in [0, 1] -> int16 [B, H/f, W/f, C, f*f]: each patch's pixels rounded to ``levels`` steps."""
    patches = rearrange(images.detach().float(), "b c (h p) (w q) -> b h w c (p q)", p=factor, q=factor)
    return torch.round(patches * (levels - 1)).to(torch.int16)


def boundary_patches(images: torch.Tensor, factor: int, levels: int = 64) -> torch.Tensor:
    """bool [B, H/f, W/f]: the patch holds more than one colour (an edge crosses it); colours compared after
    rounding to ``levels`` steps (256: uint8-exact, for renders)."""
    patches = quantised_patches(images, factor, levels)
    return (patches != patches[..., :1]).flatten(3).any(dim=-1)


def patch_consistency_loss(images: torch.Tensor, z: torch.Tensor, levels: int = 64) -> torch.Tensor:
    """Spread of the latents (fp32 [B,D,h,w]) within groups of identical patches, as a share of their
    whole spread: patches are identical when their pixels ([B,C,H,W] in [0, 1], rounded to ``levels``
    steps) are. A share, so that shrinking every latent cannot lower it."""
    patches = quantised_patches(images, images.shape[-1] // z.shape[-1], levels).flatten(0, 2).flatten(1)
    _, group = torch.unique(patches, dim=0, return_inverse=True)
    z = rearrange(z, "b d h w -> (b h w) d")
    sums = torch.zeros(int(group.max()) + 1, z.shape[1], device=z.device).index_add_(0, group, z)
    group_means = sums / torch.bincount(group).unsqueeze(1).float()
    return (z - group_means[group]).square().sum() / (z - z.mean(dim=0)).square().sum().clamp_min(1e-12)


def kmeans_plus_plus_seeds(z: torch.Tensor, codebook: torch.Tensor, dead: torch.Tensor) -> torch.Tensor:
    """k-means++ seeding of the ``dead`` codes from encoder outputs ``z`` [N, D]: each pick is drawn with
    probability proportional to its squared distance to the nearest live or already seeded code."""
    alive = torch.ones(len(codebook), dtype=torch.bool, device=z.device)
    alive[dead] = False
    nearest = torch.cdist(z, codebook[alive]).min(dim=1).values.square() if alive.any() else None
    seeds = []
    for _ in range(len(dead)):
        # Uniform while nothing is placed yet, or when every output already sits on a code.
        uniform = nearest is None or nearest.sum() <= 0
        seed = z[torch.multinomial(torch.ones(len(z), device=z.device) if uniform else nearest, 1)].squeeze(0)
        seeds.append(seed)
        distance = (z - seed).square().sum(dim=1)
        nearest = distance if nearest is None else torch.minimum(nearest, distance)
    return torch.stack(seeds)
