"""Text-guided inpainting and outpainting in token space (Muse section 3.3; aMUSEd's inpaint pipeline).

Images are ``[B, 3, H, W]`` floats in [0, 1]; masks ``[B, H, W]`` or ``[H, W]`` in [0, 1], 1 = repaint
(ComfyUI's LoadImage mask convention: transparent = 1). H and W must be multiples of the VQ factor f.

Token rule: a token is repainted when any pixel of its f x f cell has mask >= 0.5 (``rule="any"``:
everything the user marked is regenerated), or when at least half of the cell does (``"majority"``,
closer to aMUSEd's resize-then-binarise). Tokens outside are kept exactly. After decoding, pixels with
mask < 0.5 are copied back from the input (``blend=True``), so they are identical to it.

Cost: ``steps`` transformer passes per image (x2 batch with guidance), one VQ encode and one decode.
"""

from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F

from ..geometry import check_codebooks, round_up
from ..limits import check_image_batch, check_pixels, check_side
from ..sampling.generate import encode_prompts, micro_conditions, prompts_per_image
from ..sampling.sampler import GuidedModel, SamplingOptions, StepCallback, decode

TOKEN_RULES = ("any", "majority")
INPAINT_MASK_SCHEDULE = "linear"  # aMUSEd's inpainting pipeline; inpainting and outpainting default to it


@dataclasses.dataclass
class EditResult:
    images: torch.Tensor  # [B, 3, H, W] in [0, 1]
    ids: torch.Tensor  # [B, h, w]
    token_mask: torch.Tensor  # [B, h, w] bool, True = regenerated
    pixel_mask: torch.Tensor  # [B, H, W] float, 1 = repainted area (after outpainting: the new canvas)


def prepare_mask(mask: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
    """A ``[B, H, W]`` float mask matching ``images``; a single mask is shared by the whole batch."""
    if not isinstance(mask, torch.Tensor):
        raise ValueError(f"mask must be a tensor [H, W] or [B, H, W] with values in [0, 1], got {type(mask).__name__}.")
    mask = check_pixels("the mask", mask.float())  # bool and 0/1 integer masks are fine; 0..255 ones are not
    if mask.ndim == 2:
        mask = mask[None]
    if mask.ndim != 3:
        raise ValueError(f"mask must be [H, W] or [B, H, W], got shape {tuple(mask.shape)}.")
    if mask.shape[-2:] != images.shape[-2:]:
        raise ValueError(
            f"mask is {mask.shape[-1]}x{mask.shape[-2]} but the image is {images.shape[-1]}x{images.shape[-2]}: "
            "resize the mask to the image size (or crop both the same way)."
        )
    if mask.shape[0] not in (1, images.shape[0]):
        raise ValueError(f"{mask.shape[0]} masks for {images.shape[0]} images: give one mask, or one per image.")
    return mask.expand(images.shape[0], -1, -1).to(images.device)


def mask_to_token_grid(mask: torch.Tensor, factor: int, rule: str = "any") -> torch.Tensor:
    """Pixel mask ``[B, H, W]`` -> token mask ``[B, H/f, W/f]`` (bool) by the rule in the module docstring."""
    if rule not in TOKEN_RULES:
        raise ValueError(f"rule must be one of {TOKEN_RULES}, got {rule!r}.")
    marked = (mask >= 0.5).float()[:, None]
    pooled = F.max_pool2d(marked, factor) if rule == "any" else F.avg_pool2d(marked, factor)
    return pooled[:, 0] >= 0.5


def inpaint(model, vq, text_encoder, images: torch.Tensor, mask: torch.Tensor, prompts, *, negative_prompt=None,
            options: SamplingOptions | None = None, rule: str = "any", blend: bool = True,
            callback: StepCallback | None = None) -> EditResult:
    """Regenerate the masked area of ``images`` under ``prompts`` (one for all images, or one per image).

    The default schedule is linear, as in aMUSEd's inpainting pipeline; the masked share of tokens
    scales the schedule (a quarter of the image masked -> a quarter of the tokens follow it).
    """
    options = options or SamplingOptions(mask_schedule=INPAINT_MASK_SCHEDULE)
    factor = vq.downsample_factor
    check_image_batch("the input images", images, factor)
    pixel_mask = prepare_mask(mask, images)
    token_mask = mask_to_token_grid(pixel_mask, factor, rule)
    empty = [k for k, m in enumerate(token_mask) if not m.any()]
    if empty:
        raise ValueError(
            f"the mask of image {empty[0]} marks no pixel (nothing to repaint; masks use 1 = repaint). "
            "Paint the area to change, or use img2img / mask-free editing to change the whole image."
        )
    batch = images.shape[0]
    prompts = prompts_per_image(prompts, batch)
    check_codebooks(model, vq)

    cond, uncond = encode_prompts(text_encoder, prompts, negative_prompt, 1, options.guided)
    with torch.no_grad():
        ids = vq.encode(images.to(vq.device)).to(model.device)
    token_mask = token_mask.to(model.device)
    ids = torch.where(token_mask, model.mask_token_id, ids)
    height, width = images.shape[-2:]
    guided = GuidedModel(model, cond, uncond, micro_conditions(height, width, batch, options))
    ratio = token_mask.flatten(1).float().mean(dim=1, keepdim=True)
    ids = decode(guided, ids, options, model.mask_token_id, starting_mask_ratio=ratio, callback=callback)
    with torch.no_grad():
        out = vq.decode(ids.to(vq.device)).to(images.device, images.dtype)
    if blend:
        keep = (pixel_mask < 0.5)[:, None]
        out = torch.where(keep, images, out)
    return EditResult(out, ids, token_mask, pixel_mask)


def outpaint_canvas(images: torch.Tensor, factor: int, left: int = 0, top: int = 0, right: int = 0,
                    bottom: int = 0, fill: float = 0.5) -> tuple[torch.Tensor, torch.Tensor]:
    """Grow the canvas by the given pixels per side, each rounded UP to a multiple of ``factor``.

    Returns the grown images (new area filled with grey) and the mask (1 on the new area).
    """
    check_image_batch("the input images", images, factor)
    sides = [left, top, right, bottom]
    if any(isinstance(s, bool) or not isinstance(s, int) or s < 0 for s in sides) or not any(sides):
        raise ValueError(f"outpainting needs non-negative integer margins, at least one > 0; got {sides}.")
    left, top, right, bottom = (round_up(s, factor) for s in sides)
    # checked before the canvas is allocated: a typo in a margin must not try to allocate gigabytes
    check_side("the outpainted height", top + images.shape[2] + bottom, factor)
    check_side("the outpainted width", left + images.shape[3] + right, factor)
    batch, _, height, width = images.shape
    canvas = images.new_full((batch, 3, top + height + bottom, left + width + right), fill)
    canvas[:, :, top:top + height, left:left + width] = images
    mask = images.new_ones(batch, canvas.shape[2], canvas.shape[3])
    mask[:, top:top + height, left:left + width] = 0
    return canvas, mask


def outpaint(model, vq, text_encoder, images: torch.Tensor, prompts, *, left: int = 0, top: int = 0,
             right: int = 0, bottom: int = 0, **inpaint_kwargs) -> EditResult:
    """Extend ``images`` by the given margins (rounded up to the VQ factor) and fill the new area."""
    canvas, mask = outpaint_canvas(images, vq.downsample_factor, left, top, right, bottom)
    return inpaint(model, vq, text_encoder, canvas, mask, prompts, **inpaint_kwargs)
