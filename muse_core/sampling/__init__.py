"""Iterative parallel decoding: text-to-image, super-resolution, img2img (editing is in muse_core.editing)."""

from .generate import SUPER_RES_STEPS, encode_prompts, generate, img2img, super_resolve, token_grid, upscale_via_img2img
from .sampler import GuidedModel, SamplingOptions, decode, unmask_step

__all__ = ["SUPER_RES_STEPS", "GuidedModel", "SamplingOptions", "decode", "encode_prompts", "generate", "img2img",
           "super_resolve", "token_grid", "unmask_step", "upscale_via_img2img"]
