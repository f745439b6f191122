"""Iterative parallel decoding (MaskGIT / Muse / aMUSEd) with classifier-free guidance.

Each step predicts every masked token at once, samples a candidate for each, keeps the most confident
ones and re-masks the rest so that the masked fraction follows the mask schedule. Already-known tokens
are never changed, which is what makes inpainting and conditioning on given tokens exact.

With default options, one image and the same seed, the ids equal diffusers' AmusedPipeline token for
token: the same random draws are made in the same order (multinomial over every position, then Gumbel
noise over every position) from one generator.

Batch rule: image ``k`` of a batch draws from its own generator seeded ``seed + k``, so image ``k``
is reproduced alone with ``seed + k`` and a batch of one.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import torch

from ..limits import MAX_STEPS, MAX_TOKENS_PER_SIDE, MAX_VQ_FACTOR, check_int, check_number, check_seed
from ..models.micro_conds import AESTHETIC_SCORE, CROP_COORDS
from ..text.conditioning import TextConditioning
from .schedules import (
    GUIDANCE_SCHEDULES,
    MASK_SCHEDULES,
    guidance_at,
    masked_fraction,
    scheduler_timestep,
    temperatures,
)

StepCallback = Callable[[int, int, torch.Tensor], None]
"""Called after every step with (steps done, total steps, current ids [B, h, w]); raise to cancel."""


@dataclasses.dataclass
class SamplingOptions:
    """Decoding settings; the defaults are aMUSEd's."""

    steps: int = 12
    guidance_scale: float = 10.0
    guidance_schedule: str = "constant"
    temperature: float | tuple[float, float] = (2.0, 0.0)
    mask_schedule: str = "cosine"
    # Softmax temperature of the sampled tokens (aMUSEd: 1, plain sampling); below 1 the likelier codes win more
    # often, which removes stray one-token specks on small models (docs/evaluation.md).
    token_temperature: float = 1.0
    seed: int = 0
    aesthetic_score: float = AESTHETIC_SCORE  # micro-conditioning (muse_core.models.micro_conds)
    crop_coords: tuple[int, int] = CROP_COORDS  # (top, left)

    def __post_init__(self):
        check_int("steps", self.steps, 1, MAX_STEPS)
        check_number("guidance_scale", self.guidance_scale, low=0.0)  # <= 1 turns guidance off
        if self.guidance_schedule not in GUIDANCE_SCHEDULES:
            raise ValueError(f"guidance_schedule must be one of {GUIDANCE_SCHEDULES}, got {self.guidance_schedule!r}.")
        if self.mask_schedule not in MASK_SCHEDULES:
            raise ValueError(f"mask_schedule must be one of {tuple(MASK_SCHEDULES)}, got {self.mask_schedule!r}.")
        pair = self.temperature if isinstance(self.temperature, (tuple, list)) else (self.temperature,)
        if len(pair) not in (1, 2):
            raise ValueError(f"temperature must be one number or a (start, end) pair, got {self.temperature!r}.")
        for value in pair:
            check_number("temperature", value, low=0.0)
        check_number("token_temperature", self.token_temperature, low=0.0)  # inf is refused: it samples uniformly
        if self.token_temperature == 0:
            raise ValueError("token_temperature must be > 0 (1 = plain sampling; small values approach argmax), got 0.")
        check_seed(self.seed)
        check_number("aesthetic_score", self.aesthetic_score)
        if len(self.crop_coords) != 2:
            raise ValueError(f"crop_coords must be a (top, left) pair, got {self.crop_coords!r}.")
        for value in self.crop_coords:
            check_int("crop_coords", value, 0, MAX_TOKENS_PER_SIDE * MAX_VQ_FACTOR)

    @property
    def guided(self) -> bool:
        return self.guidance_scale > 1


def generators_for(seed: int, batch: int, device) -> list[torch.Generator]:
    """One generator per image, seeded ``seed + k`` (the batch rule above)."""
    return [torch.Generator(device=device).manual_seed(seed + k) for k in range(batch)]


def check_text_width(model, text: TextConditioning) -> None:
    """Refuse conditioning from a text encoder the transformer was not trained with (widths differ)."""
    config = getattr(model.config, "transformer", model.config)  # a super-res model wraps a U-ViT config
    widths = (text.hidden_states.shape[-1], text.pooled.shape[-1])
    if widths != (config.encoder_hidden_size, config.cond_embed_dim):
        raise ValueError(
            f"the text encoder gives {widths[0]}-wide token states and a {widths[1]}-wide pooled vector, but the "
            f"transformer expects {config.encoder_hidden_size} and {config.cond_embed_dim}: use the text encoder "
            "this transformer was trained with (T5 for Muse models, CLIP-L/14 for aMUSEd, CLIP-H/14 for Meissonic)."
        )


class GuidedModel:
    """Runs a Muse transformer on [unconditional, conditional] in one batch and mixes the logits.

    ``model`` is a :class:`MaskedTokenUViT` or a :class:`SuperResTransformer` (then ``lowres_context``
    from ``encode_lowres`` is appended to the text context of both branches).
    """

    def __init__(self, model, cond: TextConditioning, uncond: TextConditioning | None, micro_conds: torch.Tensor,
                 lowres_context: torch.Tensor | None = None):
        self.model = model
        check_text_width(model, cond)
        text = cond if uncond is None else TextConditioning.cat([uncond, cond])
        text = text.to(device=model.device, dtype=model.dtype)
        repeats = 1 if uncond is None else 2
        micro_conds = micro_conds.to(model.device, text.hidden_states.dtype).repeat(repeats, 1)  # [repeats * B, 5]
        extra = () if lowres_context is None else (lowres_context.repeat(repeats, 1, 1),)
        with torch.no_grad():  # the text is the same at every step: project it and its keys/values once
            self.text_context = model.text_context(*extra, text.hidden_states, text.pooled, micro_conds,
                                                   text.attention_mask)
        self.guided = uncond is not None

    @torch.no_grad()
    def __call__(self, ids: torch.Tensor, guidance_scale: float, timestep: int) -> torch.Tensor:
        """``ids [B, h, w]`` at the scheduler's ``timestep`` -> guided float32 logits ``[B, K, h, w]``."""
        model_ids = torch.cat([ids, ids]) if self.guided else ids
        time = (timestep,) if self.model.timestep_conditioned else ()
        logits = self.model.forward_with_text(model_ids, self.text_context, *time)
        if not self.guided:
            return logits.float()
        uncond, cond = logits.float().chunk(2)
        return uncond + guidance_scale * (cond - uncond)


def unmask_step(
    logits: torch.Tensor,
    ids: torch.Tensor,
    step: int,
    num_steps: int,
    mask_token_id: int,
    generators: list[torch.Generator],
    temperature: torch.Tensor,
    mask_schedule: str = "cosine",
    starting_mask_ratio: torch.Tensor | float = 1.0,
    token_temperature: float = 1.0,
) -> torch.Tensor:
    """One decoding step: ``logits [B, K, h, w]`` and ``ids [B, h, w]`` -> the next ids.

    Tokens are sampled from softmax(logits / token_temperature) and ranked by their probability under it."""
    batch, _, height, width = logits.shape
    tokens = ids.reshape(batch, -1)  # [B, L], L = h*w
    probs = (logits / token_temperature).reshape(batch, logits.shape[1], -1).permute(0, 2, 1).softmax(dim=-1)  # [B, L, K]
    unknown = tokens == mask_token_id
    sampled = torch.stack([torch.multinomial(p, 1, generator=g)[:, 0] for p, g in zip(probs, generators)])
    predicted = torch.where(unknown, sampled, tokens)
    if step == num_steps - 1:
        return predicted.reshape(batch, height, width)

    fraction = masked_fraction(mask_schedule, step + 1, num_steps).to(probs.device) * starting_mask_ratio  # [1, 1] or [B, 1]
    remask = (tokens.shape[1] * fraction).floor()
    remask = torch.min(unknown.sum(dim=-1, keepdim=True) - 1, remask)  # [B, 1]: how many tokens to re-mask
    remask = torch.max(torch.tensor([1], device=probs.device), remask)

    chosen = torch.gather(probs, -1, predicted[:, :, None])[:, :, 0]  # [B, L]: probability of each predicted token
    chosen = torch.where(unknown, chosen, torch.finfo(chosen.dtype).max)  # known tokens are kept
    uniform = torch.cat([torch.zeros_like(row[None]).uniform_(0, 1, generator=g) for row, g in zip(chosen, generators)])
    gumbel = -torch.log((-torch.log(uniform.clamp(1e-20))).clamp(1e-20))
    confidence = torch.log(chosen.clamp(1e-20)) + temperature * gumbel
    cut_off = torch.gather(torch.sort(confidence, dim=-1).values, 1, remask.long())  # [B, 1]
    next_ids = torch.where(confidence < cut_off, mask_token_id, predicted)
    return next_ids.reshape(batch, height, width)


def decode(
    guided_model: GuidedModel,
    ids: torch.Tensor,
    options: SamplingOptions,
    mask_token_id: int,
    start_step: int = 0,
    starting_mask_ratio: torch.Tensor | float = 1.0,
    callback: StepCallback | None = None,
) -> torch.Tensor:
    """Run steps ``start_step .. options.steps - 1`` from ``ids`` (mask tokens where unknown)."""
    generators = generators_for(options.seed, ids.shape[0], ids.device)
    temps = temperatures(options.temperature, options.steps).to(ids.device)  # [steps]
    for step in range(start_step, options.steps):
        scale = guidance_at(options.guidance_scale, options.guidance_schedule, step, options.steps)
        logits = guided_model(ids, scale, scheduler_timestep(step, options.steps))
        ids = unmask_step(logits, ids, step, options.steps, mask_token_id, generators, temps[step],
                          options.mask_schedule, starting_mask_ratio, options.token_temperature)
        if callback is not None:
            callback(step + 1, options.steps, ids)
    return ids
