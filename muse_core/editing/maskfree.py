"""Mask-free editing (Muse section 3.3.2): resample a small random share of tokens, many times.

Starting from the input image's tokens, each iteration re-masks a random fraction ``r`` of them
(only inside ``mask`` when one is given) and samples new tokens there from the top-k logits under
the edit prompt, with classifier-free guidance. The paper uses r ~ 8%, ~100 iterations, guidance 4,
top-k 3. Image ``k`` of a batch draws from a generator seeded ``seed + k``.

Cost: ``iterations`` transformer passes per image (x2 batch with guidance). r = 0 returns the input ids.

``edit_image`` is the whole edit on pixels, for every front end: encode, edit the tokens, decode, and with
a mask keep the input's own pixels outside it (as inpainting does), not their VQ reconstruction.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from ..geometry import check_codebooks
from ..limits import MAX_EDIT_ITERATIONS, check_image_batch, check_int, check_number
from ..sampling.generate import encode_prompts, micro_conditions, prompts_per_image
from ..sampling.sampler import GuidedModel, SamplingOptions, generators_for
from ..sampling.schedules import timestep_for_fraction
from .inpaint import EditResult, mask_to_token_grid, prepare_mask

# The paper's settings (section 3.3.2): the defaults of the API, the CLI and the node. A model folder's
# sampling.json may recommend its own in a "mask_free" section (muse_core.pipeline).
EDIT_ITERATIONS, EDIT_FRACTION, EDIT_GUIDANCE, EDIT_TOP_K = 100, 0.08, 4.0, 3
PAPER_SETTINGS = {"iterations": EDIT_ITERATIONS, "fraction": EDIT_FRACTION, "guidance_scale": EDIT_GUIDANCE,
                  "top_k": EDIT_TOP_K}


def check_edit_settings(iterations: int = EDIT_ITERATIONS, fraction: float = EDIT_FRACTION,
                        guidance_scale: float = EDIT_GUIDANCE, top_k: int = EDIT_TOP_K,
                        codebook_size: int | None = None) -> None:
    """Raise ValueError naming the first mask-free setting out of range."""
    check_int("iterations", iterations, 0, MAX_EDIT_ITERATIONS)
    check_number("fraction", fraction, 0.0, 1.0)
    SamplingOptions(guidance_scale=guidance_scale)  # validates it as every sampler does
    if not isinstance(top_k, int) or isinstance(top_k, bool) or top_k < 1 or top_k > (codebook_size or top_k):
        most = f" to {codebook_size}" if codebook_size else " or more"
        raise ValueError(f"top_k must be an integer from 1{most}, got {top_k!r}.")


def edit_tokens(model, text_encoder, ids: torch.Tensor, prompts, *, height: int, width: int,
                iterations: int = EDIT_ITERATIONS, fraction: float = EDIT_FRACTION,
                guidance_scale: float = EDIT_GUIDANCE, top_k: int = EDIT_TOP_K,
                seed: int = 0, mask: torch.Tensor | None = None, negative_prompt=None,
                callback: Callable[[int, int, torch.Tensor], None] | None = None) -> torch.Tensor:
    """Edit token ids ``[B, h, w]`` towards ``prompts``; ``mask`` ``[B, h, w]`` (bool) confines the edit."""
    check_edit_settings(iterations, fraction, guidance_scale, top_k, model.codebook_size)
    options = SamplingOptions(guidance_scale=guidance_scale, seed=seed)  # validates the seed
    batch = ids.shape[0]
    prompts = prompts_per_image(prompts, batch)
    eligible = torch.ones_like(ids, dtype=torch.bool) if mask is None else mask.to(ids.device).bool().expand_as(ids)
    ids = ids.clone().to(model.device)
    counts = [round(fraction * int(e.sum())) for e in eligible]
    if iterations == 0 or not any(counts):
        return ids

    cond, uncond = encode_prompts(text_encoder, prompts, negative_prompt, 1, options.guided)
    guided = GuidedModel(model, cond, uncond, micro_conditions(height, width, batch, options))
    timestep = timestep_for_fraction(fraction, options.steps)  # read only by Meissonic
    generators = generators_for(seed, batch, ids.device)
    candidates = [e.flatten().nonzero()[:, 0].to(ids.device) for e in eligible]
    for iteration in range(iterations):
        flat = ids.view(batch, -1)
        chosen = []
        for k, generator in enumerate(generators):
            picks = candidates[k][torch.randperm(len(candidates[k]), generator=generator, device=ids.device)[: counts[k]]]
            chosen.append(picks)
            flat[k, picks] = model.mask_token_id
        logits = guided(ids, guidance_scale, timestep).flatten(2).transpose(1, 2)  # [B, L, K]
        for k, (generator, picks) in enumerate(zip(generators, chosen)):
            if not len(picks):
                continue
            top = logits[k, picks].topk(top_k, dim=-1)
            pick = torch.multinomial(top.values.softmax(dim=-1), 1, generator=generator)[:, 0]
            flat[k, picks] = top.indices.gather(1, pick[:, None])[:, 0]
        if callback is not None:
            callback(iteration + 1, iterations, ids)
    return ids


def edit_image(model, vq, text_encoder, images: torch.Tensor, prompts, *, mask: torch.Tensor | None = None,
               callback: Callable[[int, int, torch.Tensor], None] | None = None, **edit_options) -> EditResult:
    """Edit ``images`` ``[B, 3, H, W]`` in [0, 1] towards ``prompts``; ``mask`` (``[H, W]`` or ``[B, H, W]``,
    1 = may change) confines the edit to the tokens it touches, and pixels with mask < 0.5 stay the input's.

    ``edit_options``: those of :func:`edit_tokens` (iterations, fraction, guidance_scale, top_k, seed,
    negative_prompt)."""
    factor = vq.downsample_factor
    check_codebooks(model, vq)
    check_image_batch("the input images", images, factor)
    pixel_mask = torch.ones_like(images[:, 0]) if mask is None else prepare_mask(mask, images)
    token_mask = mask_to_token_grid(pixel_mask, factor)
    with torch.no_grad():
        ids = vq.encode(images.to(vq.device))
    height, width = images.shape[-2:]
    ids = edit_tokens(model, text_encoder, ids, prompts, height=height, width=width,
                      mask=None if mask is None else token_mask, callback=callback, **edit_options)
    with torch.no_grad():
        out = vq.decode(ids.to(vq.device)).to(images.device, images.dtype)
    if mask is not None:
        out = torch.where((pixel_mask < 0.5)[:, None], images, out)
    return EditResult(out, ids, token_mask, pixel_mask)
