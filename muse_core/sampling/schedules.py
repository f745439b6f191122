"""Schedules of iterative parallel decoding: how many tokens stay masked, guidance, temperature.

A mask schedule maps decoding progress ``r`` in [0, 1] to the fraction of tokens still masked:
1 at the start, 0 at the end. After step ``i`` of ``N`` the fraction is ``schedule(r=(i + 1) / N)``.
"""

from __future__ import annotations

import math

import torch

MASK_SCHEDULES = {
    "cosine": lambda r: torch.cos(r * math.pi / 2),  # MaskGIT / Muse / aMUSEd default
    "linear": lambda r: 1 - r,
    "square": lambda r: 1 - r**2,  # keeps more tokens masked early: more steps spent on layout
    "sqrt": lambda r: 1 - torch.sqrt(r),  # commits to many tokens early: faster, less diverse
}
GUIDANCE_SCHEDULES = ("constant", "linear")


def masked_fraction(schedule: str, steps_done: int, num_steps: int) -> torch.Tensor:
    """Fraction of tokens still masked after ``steps_done`` of ``num_steps`` (a float32 tensor ``[1, 1]``)."""
    # Same float32 arithmetic as diffusers' AmusedScheduler, so mask counts match it exactly.
    ratio = torch.tensor([[steps_done]]) / num_steps
    return MASK_SCHEDULES[schedule](ratio)


SINGLE_TEMPERATURE_END = 0.01  # a single temperature t anneals from t to this, as aMUSEd


def temperatures(temperature: float | tuple[float, float], num_steps: int) -> torch.Tensor:
    """Per-step Gumbel temperature for choosing which tokens to keep: linear from t0 to t1.

    A single number t means (t, 0.01), as in aMUSEd.
    """
    start, end = temperature if isinstance(temperature, (tuple, list)) else (temperature, SINGLE_TEMPERATURE_END)
    return torch.linspace(start, end, num_steps)


def scheduler_timestep(step: int, num_steps: int) -> int:
    """The timestep aMUSEd's scheduler gives step ``step`` of ``num_steps``: its timesteps are the step indices
    in descending order (N - 1 .. 0). Only timestep-conditioned transformers (Meissonic) see it."""
    return num_steps - 1 - step


def timestep_for_fraction(fraction: float, num_steps: int, schedule: str = "cosine") -> int:
    """The scheduler timestep of the step whose input has ``fraction`` of its tokens masked (the first step
    at or below it): what a timestep-conditioned model is told when a fraction is masked outside the decoding
    loop (mask-free editing)."""
    steps = range(num_steps)
    step = next((i for i in steps if masked_fraction(schedule, i, num_steps).item() <= fraction), num_steps - 1)
    return scheduler_timestep(step, num_steps)


def guidance_at(scale: float, schedule: str, step: int, num_steps: int) -> float:
    """Classifier-free guidance scale at ``step``: constant, or rising linearly from 1 to ``scale`` (Muse)."""
    if schedule == "constant":
        return scale
    return 1 + (scale - 1) * (step + 1) / num_steps
