"""Progress with a live preview of the first image, as ComfyUI's preview setting asks (read at every run), with the
still-masked cells drawn as a grey checkerboard so the user sees what is decided and what is not.

- ``none``: no preview; the progress bar still advances.
- ``auto`` / ``latent2rgb``: one colour per token (``muse_core.preview``), a table lookup per step.
- ``taesd``: no TAESD exists for a Muse VQ, so the full VQ decode stands in for it: the full decode only when asked.
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from muse_core.preview import colour_preview

from .comfy_env import Progress, preview_method

CHECKER = (0.35, 0.55)  # the two greys of still-masked cells
PREVIEW_SIDE = 512  # ComfyUI's default --preview-size: colour previews are enlarged up to it, never past the image size


def full_decode(vq, ids: torch.Tensor) -> torch.Tensor:
    """``ids [1, h, w]`` -> ``[3, h*f, w*f]``: what the final image of these tokens looks like."""
    return vq.decode(ids.to(vq.device))[0].float().cpu()


def colour_image(vq, ids: torch.Tensor) -> torch.Tensor:
    """``ids [1, h, w]`` -> ``[3, h*s, w*s]``: a colour per token, enlarged in whole cells so that the masked cells
    have room for their checkerboard (s: the VQ factor, less where the image would pass ``PREVIEW_SIDE``)."""
    scale = min(vq.downsample_factor, max(1, PREVIEW_SIDE // max(ids.shape[1:])))
    return colour_preview(vq, ids)[0].repeat_interleave(scale, dim=1).repeat_interleave(scale, dim=2)


def with_checkered_masks(image: torch.Tensor, masked: torch.Tensor) -> Image.Image:
    """``image [3, H, W]`` with the cells of ``masked [h, w]`` (H = h * s) drawn as a grey checkerboard."""
    scale = image.shape[1] // masked.shape[0]
    cells = masked.repeat_interleave(scale, dim=0).repeat_interleave(scale, dim=1)
    ys, xs = torch.meshgrid(torch.arange(image.shape[1]), torch.arange(image.shape[2]), indexing="ij")
    square = max(scale // 2, 1)
    checker = torch.where((ys // square + xs // square) % 2 == 0, *CHECKER)
    image = torch.where(cells, checker, image)
    return Image.fromarray((image.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8))


def preview_drawer(vq, mask_token_id: int | None, method: str):
    """``ids [B, h, w]`` -> the preview of the first image for ComfyUI's ``method``, or None for no previews."""
    if method == "none":
        return None
    draw = full_decode if method == "taesd" else colour_image  # auto, latent2rgb and any later name: the cheap one

    @torch.no_grad()
    def preview(ids: torch.Tensor) -> Image.Image:
        first = ids[:1]
        masked = first == mask_token_id if mask_token_id is not None else torch.zeros_like(first, dtype=torch.bool)
        return with_checkered_masks(draw(vq, torch.where(masked, 0, first)), masked[0].cpu())

    return preview


def progress_callback(total: int, vq, mask_token_id: int | None):
    """A muse_core step callback that drives a ComfyUI progress bar (and honours Cancel)."""
    progress = Progress(total)
    preview = preview_drawer(vq, mask_token_id, preview_method()) if progress.wants_previews else None

    def callback(done: int, _total: int, ids: torch.Tensor) -> None:
        progress.update(done, None if preview is None else preview(ids))

    return callback
