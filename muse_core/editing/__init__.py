"""Editing: text-guided inpainting / outpainting and mask-free editing."""

from .inpaint import EditResult, inpaint, mask_to_token_grid, outpaint, outpaint_canvas
from .maskfree import edit_tokens

__all__ = ["EditResult", "edit_tokens", "inpaint", "mask_to_token_grid", "outpaint", "outpaint_canvas"]
