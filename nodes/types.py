"""The data types that flow between Muse nodes, and conversions to and from ComfyUI's IMAGE / MASK.

ComfyUI's IMAGE is ``[B, H, W, 3]`` float in [0, 1] on the CPU and MASK is ``[B, H, W]``; muse_core
takes ``[B, 3, H, W]`` images.
"""

from __future__ import annotations

import dataclasses

import torch

# Custom socket types: a socket only accepts a link of the same type, so a VQ cannot be plugged into
# a transformer input.
TRANSFORMER = "MUSE_TRANSFORMER"
SUPER_RES = "MUSE_SUPER_RES"
VQ = "MUSE_VQ"
TEXT_ENCODER = "MUSE_TEXT_ENCODER"
CONDITIONING = "MUSE_CONDITIONING"
TOKENS = "MUSE_TOKENS"
RERANKER = "MUSE_RERANKER"


@dataclasses.dataclass
class MuseTokens:
    """A batch of VQ token grids and the tokenizer they belong to (to refuse mixing codebooks)."""

    ids: torch.Tensor  # [B, h, w] long, on the CPU
    downsample_factor: int
    codebook_size: int
    vq_fingerprint: str | None = None  # the VQ's codebook hash (VQTokenizer.fingerprint): which VQ made them

    def __post_init__(self):
        self.ids = self.ids.detach().to("cpu", torch.long)

    @classmethod
    def of(cls, ids: torch.Tensor, vq) -> "MuseTokens":
        """Token grids made by (or for) the VQ tokenizer ``vq``."""
        return cls(ids, vq.downsample_factor, vq.codebook_size, vq.fingerprint)

    @property
    def image_size(self) -> tuple[int, int]:
        """(height, width) in pixels of the decoded images."""
        return self.ids.shape[1] * self.downsample_factor, self.ids.shape[2] * self.downsample_factor


def image_from_comfy(image: torch.Tensor) -> torch.Tensor:
    """IMAGE ``[B, H, W, C]`` -> ``[B, 3, H, W]`` float32 (an alpha channel is dropped).

    Every node that takes an IMAGE converts it here, so input checks live here once."""
    if image.ndim != 4 or image.shape[-1] not in (3, 4):
        raise ValueError(f"expected a ComfyUI IMAGE [B, H, W, 3], got shape {tuple(image.shape)}.")
    _refuse_empty(image, "IMAGE", "image")
    return image[..., :3].movedim(-1, 1).float()


def image_to_comfy(images: torch.Tensor) -> torch.Tensor:
    """``[B, 3, H, W]`` -> IMAGE ``[B, H, W, 3]`` float32 in [0, 1] on the CPU."""
    return images.detach().float().clamp(0, 1).movedim(1, -1).cpu().contiguous()


def mask_from_comfy(mask: torch.Tensor) -> torch.Tensor:
    """MASK ``[H, W]`` or ``[B, H, W]`` -> ``[B, H, W]`` float32 (1 = the area to repaint); every node
    that takes a MASK converts it here."""
    _refuse_empty(mask, "MASK", "mask")
    return (mask[None] if mask.ndim == 2 else mask).float()


def _refuse_empty(tensor: torch.Tensor, socket: str, item: str) -> None:
    # An empty batch (e.g. from a filter or batch node that kept nothing) would otherwise fail deep in
    # torch with "cannot compute aminmax over an empty dimension".
    if tensor.numel() == 0:
        raise ValueError(
            f"the {socket} input holds no {item}s (shape {list(tensor.shape)}): the node that makes it gave "
            f"an empty batch. Connect one that gives at least one non-empty {item}."
        )
