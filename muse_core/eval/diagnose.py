"""Cheap gates for a base model (``muse eval --diagnose``): does it know the tokens on shape boundaries?

A *boundary token* is a VQ patch of a ground-truth render whose pixels are not all one colour (an edge
passes through it); the rest are *flat*. On the shapes data about 8% of the tokens are boundaries, and
they decide whether a shape comes out clean or with specks of stray colour. Two measurements, both on
the held-out scenes' renders and their VQ codes:

    boundary accuracy   half of the tokens masked (seeded); the share of masked boundary tokens whose
                        code the model's argmax (guided, the model's guidance) gets right; the same share
                        over all masked tokens for comparison
    boundary infill     every boundary token masked, every flat token given; the model's sampler (its
                        default settings) draws the boundaries; the share of decoded images that pass the
                        checker, next to the share of plain VQ reconstructions that pass (the ceiling)

Both are quick (no full generation), which is why a training run is judged by them before it is made long.
"""

from __future__ import annotations

import dataclasses

import torch

from ..data.shapes import Scene
from ..sampling.generate import encode_prompts, micro_conditions
from ..sampling.sampler import GuidedModel, decode
from ..sampling.schedules import timestep_for_fraction
from ..training.vq import boundary_patches
from .checker import check
from .run import rendered

DIAGNOSIS_MASK_RATE = 0.5  # share of tokens masked for boundary accuracy


@dataclasses.dataclass
class Diagnosis:
    scenes: int
    boundary_share: float  # share of all tokens that are boundary tokens
    boundary_accuracy: float  # argmax right on masked boundary tokens
    token_accuracy: float  # argmax right on all masked tokens
    infill_passed: float  # boundary infill: share of images that pass the checker
    reconstruction_passed: float  # plain VQ reconstructions that pass (the ceiling of infill)

    def format(self) -> str:
        return "\n".join([
            f"Boundary diagnosis: {self.scenes} held-out scenes; {100 * self.boundary_share:.1f}% of tokens are boundaries",
            "",
            "| measure | value |",
            "|---|---|",
            f"| boundary accuracy (half masked, argmax) | {100 * self.boundary_accuracy:.1f}% |",
            f"| token accuracy (half masked, argmax) | {100 * self.token_accuracy:.1f}% |",
            f"| boundary infill: images passing the checker | {100 * self.infill_passed:.1f}% |",
            f"| VQ reconstructions passing the checker | {100 * self.reconstruction_passed:.1f}% |",
        ])


def diagnose(pipe, scenes: list[Scene], seed: int = 0, batch_size: int = 16,
             guidance_scale: float | None = None) -> Diagnosis:
    """Boundary accuracy and boundary infill of ``pipe``'s base model on ``scenes`` (see the module docstring),
    with the model's sampling settings (``guidance_scale``: another guidance)."""
    if not scenes:
        raise ValueError("diagnose needs at least one scene.")
    options = pipe.sampling_options(seed=seed, guidance_scale=guidance_scale)
    model, vq = pipe.transformer, pipe.vq
    size = pipe.native_size
    keys = ("tokens", "boundaries", "boundary", "boundary_right", "masked", "masked_right", "infill", "reconstruction")
    totals = dict.fromkeys(keys, 0)
    generator = torch.Generator().manual_seed(seed)
    timestep = timestep_for_fraction(DIAGNOSIS_MASK_RATE, options.steps, options.mask_schedule)
    for first in range(0, len(scenes), batch_size):
        batch = scenes[first:first + batch_size]
        images = rendered(batch, size)
        with torch.no_grad():
            ids = vq.encode(images.to(vq.device)).to(model.device)
        boundary = boundary_patches(images, vq.downsample_factor, levels=256).to(model.device)  # renders: exact
        totals["tokens"] += boundary.numel()
        totals["boundaries"] += int(boundary.sum())
        cond, uncond = encode_prompts(pipe.text_encoder, [scene.caption for scene in batch], None, 1, options.guided)
        guided = GuidedModel(model, cond, uncond, micro_conditions(size, size, len(batch), options))

        masked = torch.rand(ids.shape, generator=generator).to(model.device) < DIAGNOSIS_MASK_RATE
        logits = guided(torch.where(masked, model.mask_token_id, ids), options.guidance_scale, timestep)
        right = logits.argmax(dim=1) == ids
        totals["masked"] += int(masked.sum())
        totals["masked_right"] += int((right & masked).sum())
        totals["boundary"] += int((boundary & masked).sum())
        totals["boundary_right"] += int((right & masked & boundary).sum())

        ratio = boundary.flatten(1).float().mean(dim=1, keepdim=True)
        infilled = decode(guided, torch.where(boundary, model.mask_token_id, ids), options, model.mask_token_id,
                          starting_mask_ratio=ratio)
        # the sampler re-masks at least one token per step, a given one too when an image has no boundary
        # (aligned squares): the flat tokens stay the given ones
        infilled = torch.where(boundary, infilled, ids)
        with torch.no_grad():
            decoded = vq.decode(infilled.to(vq.device)).cpu()
            reconstructed = vq.decode(ids.to(vq.device)).cpu()
        for scene, infill, reconstruction in zip(batch, decoded, reconstructed):
            totals["infill"] += check(infill.permute(1, 2, 0), scene).passed
            totals["reconstruction"] += check(reconstruction.permute(1, 2, 0), scene).passed
    return Diagnosis(
        scenes=len(scenes),
        boundary_share=totals["boundaries"] / totals["tokens"],
        boundary_accuracy=totals["boundary_right"] / max(1, totals["boundary"]),
        token_accuracy=totals["masked_right"] / max(1, totals["masked"]),
        infill_passed=totals["infill"] / len(scenes),
        reconstruction_passed=totals["reconstruction"] / len(scenes),
    )
