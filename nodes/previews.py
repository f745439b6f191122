"""Progress with a live preview: the current tokens of the first image decoded at every step, with
the still-masked cells drawn as a grey checkerboard so the user sees what is decided and what is not."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from .comfy_env import Progress

CHECKER = (0.35, 0.55)  # the two greys of still-masked cells


@torch.no_grad()
def preview_image(vq, ids: torch.Tensor, mask_token_id: int | None) -> Image.Image:
    """The first image of ``ids [B, h, w]`` decoded; cells holding ``mask_token_id`` are checkered."""
    first = ids[:1]
    masked = first == mask_token_id if mask_token_id is not None else torch.zeros_like(first, dtype=torch.bool)
    image = vq.decode(torch.where(masked, 0, first).to(vq.device))[0].float().cpu()  # [3, H, W]
    factor = vq.downsample_factor
    cells = F.interpolate(masked[None].float().cpu(), scale_factor=factor, mode="nearest")[0, 0] > 0
    ys, xs = torch.meshgrid(torch.arange(image.shape[1]), torch.arange(image.shape[2]), indexing="ij")
    checker = torch.where(((ys // max(factor // 2, 1)) + (xs // max(factor // 2, 1))) % 2 == 0, *CHECKER)
    image = torch.where(cells, checker, image)
    return Image.fromarray((image.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8))


def progress_callback(total: int, vq, mask_token_id: int | None):
    """A muse_core step callback that drives a ComfyUI progress bar (and honours Cancel)."""
    progress = Progress(total)

    def callback(done: int, _total: int, ids: torch.Tensor) -> None:
        preview = preview_image(vq, ids, mask_token_id) if progress.wants_previews else None
        progress.update(done, preview)

    return callback
