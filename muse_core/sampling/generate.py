"""Text-to-image, super-resolution and img2img in token space.

Every function returns token ids ``[B, h, w]``; decode them with the VQ tokenizer. Prompts are
batched prompt-major: ``prompts=[a, b]`` with ``num_images_per_prompt=2`` gives ``[a, a, b, b]``, and
image ``k`` of that batch is drawn with seed ``options.seed + k`` (see ``sampler``).

Cost in transformer forward passes per image: ``steps`` (x2 batch with guidance), or for img2img
``round(steps * strength)``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..geometry import check_codebooks
from ..limits import check_image_count, check_number, check_side
from ..models import micro_conds
from ..text.conditioning import EncodedPrompts, TextConditioning
from .sampler import GuidedModel, SamplingOptions, StepCallback, decode
from .schedules import masked_fraction

SUPER_RES_STEPS = 8  # Muse's super-resolution default: the API's, the CLI's, the node's and eval's


def encode_prompts(text_encoder, prompts: list[str] | str | EncodedPrompts, negative_prompt: list[str] | str | None,
                   num_images_per_prompt: int, guided: bool) -> tuple[TextConditioning, TextConditioning | None]:
    """Conditional and (with guidance) unconditional conditioning, one row per output image.

    The unconditional branch is the encoded negative prompt, or the encoded empty prompt "" (as in aMUSEd).
    ``prompts`` may be :class:`EncodedPrompts` (encoded once, e.g. by a graph's text-encode node); then
    ``text_encoder`` is not used and the negative prompt is the one encoded with them.
    """
    check_image_count(num_images_per_prompt)
    if isinstance(prompts, EncodedPrompts):
        if negative_prompt is not None:
            raise ValueError("the prompts are already encoded with their negative prompt; pass negative_prompt=None.")
        check_image_count(len(prompts) * num_images_per_prompt, "the number of images (prompts x num_images_per_prompt)")
        encoded = prompts.repeat_interleave(num_images_per_prompt)
        return encoded.positive, encoded.negative if guided else None
    prompts = [prompts] if isinstance(prompts, str) else list(prompts)
    if not prompts:
        raise ValueError("prompts is empty: give at least one prompt (\"\" is allowed).")
    check_image_count(len(prompts) * num_images_per_prompt, "the number of images (prompts x num_images_per_prompt)")
    if not guided:
        return text_encoder.encode(prompts).repeat_interleave(num_images_per_prompt), None
    encoded = text_encoder.encode_with_negative(prompts, negative_prompt).repeat_interleave(num_images_per_prompt)
    return encoded.positive, encoded.negative


def prompts_per_image(prompts, batch: int):
    """One prompt per image: a single prompt (or a list of one, or one encoded prompt) applies to every image."""
    if isinstance(prompts, EncodedPrompts):
        if len(prompts) == 1:
            return prompts.repeat_interleave(batch)
        if len(prompts) != batch:
            raise ValueError(f"{len(prompts)} encoded prompts for {batch} images: give one, or one per image.")
        return prompts
    prompts = [prompts] if isinstance(prompts, str) else list(prompts)
    if len(prompts) == 1:
        prompts *= batch
    if len(prompts) != batch:
        raise ValueError(f"{len(prompts)} prompts for {batch} images: give one, or one per image.")
    return prompts


def token_grid(height: int, width: int, factor: int) -> tuple[int, int]:
    """The token grid of an image size; sizes must be positive multiples of the VQ factor."""
    return check_side("height", height, factor) // factor, check_side("width", width, factor) // factor


def micro_conditions(height: int, width: int, batch: int, options: SamplingOptions) -> torch.Tensor:
    """The micro-conditions ``[B, 5]`` that ``options`` give images of ``height`` x ``width`` pixels."""
    return micro_conds.micro_conditions(height, width, batch, options.aesthetic_score, options.crop_coords)


def generate(model, text_encoder, prompts, *, height: int, width: int, downsample_factor: int,
             negative_prompt=None, num_images_per_prompt: int = 1, options: SamplingOptions | None = None,
             callback: StepCallback | None = None) -> torch.Tensor:
    """Text -> token ids ``[B, height / f, width / f]``, starting from an all-masked grid."""
    options = options or SamplingOptions()
    grid = token_grid(height, width, downsample_factor)
    cond, uncond = encode_prompts(text_encoder, prompts, negative_prompt, num_images_per_prompt, options.guided)
    batch = len(cond)
    guided = GuidedModel(model, cond, uncond, micro_conditions(height, width, batch, options))
    ids = torch.full((batch, *grid), model.mask_token_id, dtype=torch.long, device=model.device)
    return decode(guided, ids, options, model.mask_token_id, callback=callback)


def super_resolve(sr_model, text_encoder, lowres_ids: torch.Tensor, prompts, *, grid_scale: int = 2,
                  downsample_factor: int, negative_prompt=None, options: SamplingOptions | None = None,
                  callback: StepCallback | None = None) -> torch.Tensor:
    """Low-res ids ``[B, h, w]`` -> high-res ids ``[B, grid_scale*h, grid_scale*w]`` with a Muse super-res transformer.

    ``prompts`` has one prompt per low-res image, or one for all. ``SUPER_RES_STEPS`` by default (Muse).
    """
    options = options or SamplingOptions(steps=SUPER_RES_STEPS)
    if lowres_ids.ndim != 3:
        raise ValueError(f"lowres_ids must be [B, h, w] token ids, got shape {tuple(lowres_ids.shape)}.")
    batch, h, w = lowres_ids.shape
    prompts = prompts_per_image(prompts, batch)
    height, width = grid_scale * h * downsample_factor, grid_scale * w * downsample_factor
    grid = token_grid(height, width, downsample_factor)
    cond, uncond = encode_prompts(text_encoder, prompts, negative_prompt, 1, options.guided)
    with torch.no_grad():
        context = sr_model.encode_lowres(lowres_ids.to(sr_model.device))
    micro = micro_conditions(height, width, batch, options)
    guided = GuidedModel(sr_model, cond, uncond, micro, lowres_context=context)
    ids = torch.full((batch, *grid), sr_model.mask_token_id, dtype=torch.long, device=sr_model.device)
    return decode(guided, ids, options, sr_model.mask_token_id, callback=callback)


def remask_for_strength(ids: torch.Tensor, strength: float, options: SamplingOptions, mask_token_id: int,
                        generators: list[torch.Generator] | None = None) -> tuple[torch.Tensor, int]:
    """Re-mask ids for img2img: returns (masked ids, first step to run).

    ``strength`` s in [0, 1] runs the last ``round(s * steps)`` steps of the schedule. Each image gets
    exactly the schedule's masked fraction at that step, chosen uniformly at random: s = 1 masks every
    token (unlike diffusers, whose strength 1 masks none), s = 0 returns the ids unchanged.
    """
    check_number("strength", strength, 0.0, 1.0)
    start = options.steps - round(strength * options.steps)
    if start == options.steps:
        return ids.clone(), start
    batch, height, width = ids.shape
    count = int((height * width * masked_fraction(options.mask_schedule, start, options.steps)).floor().item())
    generators = generators or [torch.Generator(device=ids.device).manual_seed(options.seed + k) for k in range(batch)]
    masked = ids.clone().reshape(batch, -1)
    for row, generator in zip(masked, generators):
        chosen = torch.randperm(row.numel(), generator=generator, device=ids.device)[:count]
        row[chosen] = mask_token_id
    return masked.reshape(batch, height, width), start


def img2img(model, text_encoder, ids: torch.Tensor, prompts, *, strength: float = 0.5, height: int, width: int,
            negative_prompt=None, options: SamplingOptions | None = None,
            callback: StepCallback | None = None) -> torch.Tensor:
    """Re-generate part of the input ids ``[B, h, w]`` under ``prompts`` (one per image, or one for all)."""
    options = options or SamplingOptions()
    batch = ids.shape[0]
    prompts = prompts_per_image(prompts, batch)
    ids = ids.to(model.device)
    masked, start = remask_for_strength(ids, strength, options, model.mask_token_id)
    if start == options.steps:
        return masked
    cond, uncond = encode_prompts(text_encoder, prompts, negative_prompt, 1, options.guided)
    guided = GuidedModel(model, cond, uncond, micro_conditions(height, width, batch, options))
    return decode(guided, masked, options, model.mask_token_id, start_step=start, callback=callback)


def upscale_via_img2img(model, low_vq, high_vq, text_encoder, lowres_ids: torch.Tensor, prompts, *,
                        strength: float = 0.5, upscale: int = 2, negative_prompt=None,
                        options: SamplingOptions | None = None, callback: StepCallback | None = None) -> torch.Tensor:
    """Token-space super-resolution for models without a super-res transformer (e.g. aMUSEd 256 -> 512).

    Decode the low-res ids, upscale the image ``upscale`` x in pixels (bicubic), re-encode it with the higher-res
    model's VQ, then re-mask and resample a ``strength`` share of the schedule with that model (img2img).
    Cost: one decode, one encode, ``round(steps * strength)`` transformer passes.
    """
    check_codebooks(model, high_vq)
    with torch.no_grad():
        images = low_vq.decode(lowres_ids.to(low_vq.device))
        images = F.interpolate(images, scale_factor=upscale, mode="bicubic").clamp(0, 1)
        ids = high_vq.encode(images.to(high_vq.device))
    height, width = images.shape[-2:]
    return img2img(model, text_encoder, ids, prompts, strength=strength, height=height, width=width,
                   negative_prompt=negative_prompt, options=options, callback=callback)
