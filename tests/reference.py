"""Helpers for parity tests against the diffusers / transformers reference classes (test-only deps)."""

from __future__ import annotations

import torch
from torch import nn


def randomize_(module: nn.Module, seed: int = 0, std: float = 0.2) -> nn.Module:
    """Give every parameter random values (norm gains near 1) so a parity test exercises all of them."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in module.named_parameters():
            noise = torch.randn(param.shape, generator=generator, dtype=torch.float32)
            is_gain = "norm" in name and name.endswith("weight") and param.ndim == 1
            param.copy_(1 + 0.1 * noise if is_gain else std * noise)
    return module


def relative_max_diff(ours: torch.Tensor, reference: torch.Tensor) -> float:
    """max |ours - reference| relative to the reference's largest magnitude."""
    return ((ours.float() - reference.float()).abs().max() / reference.float().abs().max()).item()


def clip_reference(model, tokenizer, prompts):
    """diffusers' AmusedPipeline text conditioning: ``hidden_states[-2]`` and ``text_embeds`` of a
    CLIPTextModelWithProjection, on ids padded to the tokenizer's max length."""
    ids = tokenizer(prompts, padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                    return_tensors="pt").input_ids
    with torch.no_grad():
        outputs = model(ids, return_dict=True, output_hidden_states=True)
    return outputs.hidden_states[-2], outputs.text_embeds
