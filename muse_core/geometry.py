"""A transformer and its VQ: whether they belong together, and how pixel sizes and token grids relate.
The one place the pipeline, the CLI, the nodes and eval ask.

A VQ with factor f turns an H x W image into an (H/f) x (W/f) token grid. A transformer was trained on a
``sample_size`` x ``sample_size`` grid, so its native pixel size is ``sample_size * f``. A super-res stage
maps each base token to ``grid_scale`` x ``grid_scale`` tokens of its own VQ, whose factor may differ.
"""

from __future__ import annotations

from .loading.errors import CheckpointError


def check_codebooks(model, vq, model_name: str = "the transformer", vq_name: str = "the VQ") -> None:
    """Refuse a transformer and a VQ that were not trained together (their ids would mean nothing)."""
    if model.codebook_size != vq.codebook_size:
        raise CheckpointError(f"{model_name} predicts {model.codebook_size} codes but {vq_name} has a codebook of "
                         f"{vq.codebook_size}: they were not trained together. Use the VQ that belongs to this "
                         "transformer.")


def native_size(transformer, vq) -> int:
    """The pixel side the transformer was trained at: its token grid times the VQ factor."""
    config = getattr(transformer.config, "transformer", transformer.config)  # a super-res model wraps a U-ViT
    return config.sample_size * vq.downsample_factor


def super_res_grid_scale(transformer, super_res, vq, super_res_vq) -> int:
    """Token-grid ratio of a cascade, from the two transformers' native grids.

    The grid may stay the same (scale 1) when the super-res VQ has a coarser factor than the base VQ:
    the pixel size still grows by the ratio of the factors.
    """
    low, high = transformer.config.sample_size, super_res.config.transformer.sample_size
    factor_ratio = super_res_vq.downsample_factor / vq.downsample_factor
    if high % low or high // low * factor_ratio <= 1:
        raise ValueError(f"cannot tell the super-resolution scale: super_res's sample_size ({high}) must be a "
                         f"multiple of the transformer's ({low}) that enlarges the image; fix super_res's config.")
    return high // low


def grid_scale_for_upscale(upscale: int, low_factor: int, high_factor: int) -> int:
    """The token-grid ratio that gives a pixel ratio ``upscale`` between a factor-``low_factor`` low-res VQ and
    a factor-``high_factor`` high-res VQ; refused when it is not a whole number of tokens per token."""
    grid_scale = upscale * low_factor / high_factor
    if grid_scale != int(grid_scale) or grid_scale < 1:
        raise ValueError(f"upscale {upscale} with a factor-{low_factor} low-res VQ and a factor-{high_factor} "
                         f"high-res VQ is {grid_scale:g} tokens per token; pick an upscale that makes it a whole number.")
    return int(grid_scale)


def super_resolved_size(width: int, height: int, low_factor: int, grid_scale: int, high_factor: int) -> tuple[int, int]:
    """The pixel size of a super-resolved image: (width, height) of the base image in, the result's out."""
    pixels_per_base_token = grid_scale * high_factor
    return width // low_factor * pixels_per_base_token, height // low_factor * pixels_per_base_token


def round_up(pixels: int, factor: int) -> int:
    """``pixels`` rounded up to a multiple of the VQ factor: how outpainting margins grow the canvas."""
    return -(-pixels // factor) * factor
