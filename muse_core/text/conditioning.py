"""What a text encoder returns (``TextConditioning``) and what every encoder shares (``TextEncoder``)."""

from __future__ import annotations

import dataclasses
import logging

import torch
from torch import nn

from ..limits import check_text

logger = logging.getLogger("muse_core")


@dataclasses.dataclass
class TextConditioning:
    """Text conditioning for a batch of prompts.

    hidden_states: [B, L, D] per-token embeddings (zeros where the mask is False).
    attention_mask: [B, L] bool, True = a token the image model may attend to.
    pooled: [B, P] one vector per prompt.
    """

    hidden_states: torch.Tensor
    attention_mask: torch.Tensor
    pooled: torch.Tensor

    def __post_init__(self):
        if (
            self.hidden_states.ndim != 3
            or self.pooled.ndim != 2
            or self.pooled.shape[0] != self.hidden_states.shape[0]
        ):
            raise ValueError(
                f"TextConditioning: expected hidden_states [B,L,D] and pooled [B,P], got "
                f"{list(self.hidden_states.shape)} and {list(self.pooled.shape)}."
            )
        batch, length = self.hidden_states.shape[:2]
        if self.attention_mask.shape != (batch, length) or self.attention_mask.dtype != torch.bool:
            raise ValueError(
                f"TextConditioning: attention_mask must be bool [{batch},{length}], got "
                f"{self.attention_mask.dtype} {list(self.attention_mask.shape)}."
            )

    def __len__(self) -> int:
        return self.hidden_states.shape[0]

    def __getitem__(self, index) -> TextConditioning:
        """Select prompts along the batch; an int keeps the batch dimension (gives a batch of one)."""
        if isinstance(index, int):
            index = slice(index, index + 1 if index != -1 else None)
        return TextConditioning(self.hidden_states[index], self.attention_mask[index], self.pooled[index])

    def to(self, device=None, dtype=None) -> TextConditioning:
        """Move to ``device``; ``dtype`` applies to the float tensors (the mask stays bool)."""
        return TextConditioning(
            self.hidden_states.to(device=device, dtype=dtype),
            self.attention_mask.to(device=device),
            self.pooled.to(device=device, dtype=dtype),
        )

    def repeat_interleave(self, repeats: int) -> TextConditioning:
        """[a, b] -> [a, a, b, b] for repeats=2 (several images per prompt)."""
        return TextConditioning(
            self.hidden_states.repeat_interleave(repeats, dim=0),
            self.attention_mask.repeat_interleave(repeats, dim=0),
            self.pooled.repeat_interleave(repeats, dim=0),
        )

    @staticmethod
    def cat(items: list[TextConditioning]) -> TextConditioning:
        """Concatenate along the batch, padding shorter sequences with masked zeros."""
        if not items:
            raise ValueError("TextConditioning.cat needs at least one conditioning.")
        length = max(c.hidden_states.shape[1] for c in items)
        hidden, mask = [], []
        for c in items:
            pad = length - c.hidden_states.shape[1]
            hidden.append(nn.functional.pad(c.hidden_states, (0, 0, 0, pad)))
            mask.append(nn.functional.pad(c.attention_mask, (0, pad), value=False))
        return TextConditioning(torch.cat(hidden), torch.cat(mask), torch.cat([c.pooled for c in items]))


@dataclasses.dataclass
class EncodedPrompts:
    """Prompts and negative prompts encoded once, then given to any number of sampling calls.

    ``negative`` is the unconditional branch of classifier-free guidance (the encoded empty prompt
    when no negative prompt was given). Either holds one row (shared by every image) or one per image.
    """

    positive: TextConditioning
    negative: TextConditioning
    prompts: list[str]

    def __post_init__(self):
        if len(self.positive) != len(self.negative) or len(self.positive) != len(self.prompts):
            raise ValueError(
                f"EncodedPrompts: {len(self.positive)} prompts, {len(self.negative)} negative prompts and "
                f"{len(self.prompts)} prompt texts; they must pair up one to one."
            )

    def __len__(self) -> int:
        return len(self.positive)

    def to(self, device=None, dtype=None) -> EncodedPrompts:
        return EncodedPrompts(self.positive.to(device, dtype), self.negative.to(device, dtype), self.prompts)

    def repeat_interleave(self, repeats: int) -> EncodedPrompts:
        return EncodedPrompts(
            self.positive.repeat_interleave(repeats),
            self.negative.repeat_interleave(repeats),
            [p for p in self.prompts for _ in range(repeats)],
        )


class TextEncoder(nn.Module):
    """Prompts -> TextConditioning. Subclasses wrap a transformers model and its tokenizer."""

    def __init__(self, model: nn.Module, tokenizer, max_length: int):
        super().__init__()
        self.model = model
        self.tokenizer = tokenizer
        self.max_length = max_length

    @property
    def hidden_size(self) -> int:
        raise NotImplementedError

    @property
    def pooled_size(self) -> int:
        raise NotImplementedError

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @torch.no_grad()
    def encode(self, prompts: list[str] | str) -> TextConditioning:
        """Encode a batch of prompts; "" is a valid prompt (the unconditional branch of CFG)."""
        if isinstance(prompts, str):
            prompts = [prompts]
        if not isinstance(prompts, (list, tuple)) or not prompts:
            raise ValueError(f"{type(self).__name__}.encode needs a non-empty list of prompts, got {prompts!r}.")
        for prompt in prompts:
            check_text("a prompt", prompt)
        return self._encode(list(prompts))

    def encode_with_negative(self, prompts: list[str] | str, negative: list[str] | str | None = None) -> EncodedPrompts:
        """Prompts plus their negative prompts (one for all, or one per prompt; None = the empty prompt)."""
        prompts = [prompts] if isinstance(prompts, str) else list(prompts)
        negative = "" if negative is None else negative
        negative = [negative] * len(prompts) if isinstance(negative, str) else list(negative)
        if len(negative) != len(prompts):
            raise ValueError(f"{len(negative)} negative prompts for {len(prompts)} prompts: give one, or one per prompt.")
        return EncodedPrompts(self.encode(prompts), self.encode(negative), prompts)

    def forward(self, prompts: list[str]) -> TextConditioning:
        """Differentiable encoding, for training the text encoder with the transformer."""
        return self._encode(prompts)

    def _encode(self, prompts: list[str]) -> TextConditioning:
        raise NotImplementedError

    def _warn_if_truncated(self, prompts: list[str]) -> None:
        lengths = [len(ids) for ids in self.tokenizer(prompts, verbose=False).input_ids]
        for prompt, length in zip(prompts, lengths):
            if length > self.max_length:
                logger.warning(
                    "%s: prompt is %d tokens, only the first %d are used: %.60r...",
                    type(self).__name__, length, self.max_length, prompt,
                )
