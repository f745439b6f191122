"""Editing: text-guided inpainting / outpainting and mask-free editing."""

from .inpaint import INPAINT_MASK_SCHEDULE, EditResult, inpaint, mask_to_token_grid, outpaint, outpaint_canvas
from .maskfree import EDIT_FRACTION, EDIT_GUIDANCE, EDIT_ITERATIONS, EDIT_TOP_K, edit_image, edit_tokens

__all__ = ["EDIT_FRACTION", "EDIT_GUIDANCE", "EDIT_ITERATIONS", "EDIT_TOP_K", "INPAINT_MASK_SCHEDULE", "EditResult",
           "edit_image", "edit_tokens", "inpaint", "mask_to_token_grid", "outpaint", "outpaint_canvas"]
