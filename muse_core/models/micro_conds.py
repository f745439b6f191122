"""aMUSEd's micro-conditioning: the one place that owns its defaults and the order of its vector.

Each image is conditioned on ``[width, height, crop top, crop left, aesthetic score]`` (``MICRO_CONDS``, in
that order: diffusers' ``AmusedPipeline`` order), each sinusoidally embedded by the U-ViT
(``MaskedTokenUViT.embed_conditions``). The sampler's options, the models' ``default_micro_conds`` and the
training objective all build the vector here.
"""

from __future__ import annotations

import torch

MICRO_CONDS = ("width", "height", "crop_top", "crop_left", "aesthetic_score")  # the vector's order
AESTHETIC_SCORE = 6.0  # aMUSEd's default aesthetic score
CROP_COORDS = (0, 0)  # (top, left): an uncropped image


def micro_conditions(height: int, width: int, batch: int, aesthetic_score: float = AESTHETIC_SCORE,
                     crop: tuple[int, int] = CROP_COORDS) -> torch.Tensor:
    """The float32 micro-conditions ``[batch, len(MICRO_CONDS)]`` of ``batch`` images of ``height`` x ``width`` pixels."""
    top, left = crop
    return torch.tensor([[width, height, top, left, aesthetic_score]], dtype=torch.float32).repeat(batch, 1)
