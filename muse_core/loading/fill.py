"""Filling a model built on the meta device from a state dict, refusing any partial load."""

from __future__ import annotations

import torch
from torch import nn

from .errors import CheckpointError

_SHOWN = 5  # how many offending keys an error lists


def listing(keys, separator: str = ", ") -> str:
    """The first few offending keys, sorted, and how many more there are: what an error message shows."""
    keys = sorted(keys)
    more = f" (+{len(keys) - _SHOWN} more)" if len(keys) > _SHOWN else ""
    return separator.join(keys[:_SHOWN]) + more


def check_state_dict(model: nn.Module, state_dict: dict[str, torch.Tensor], source: str) -> None:
    """Raise a CheckpointError naming the file and the first offending keys on any mismatch."""
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    missing = expected.keys() - state_dict.keys()
    unexpected = state_dict.keys() - expected.keys()
    wrong = [k for k in expected.keys() & state_dict.keys() if tuple(state_dict[k].shape) != expected[k]]
    problems = []
    if missing:
        problems.append(f"missing tensors: {listing(missing)}")
    if unexpected:
        problems.append(f"unexpected tensors: {listing(unexpected)}")
    if wrong:
        problems.append(
            "wrong shapes: "
            + listing([f"{k} expected {list(expected[k])} found {list(state_dict[k].shape)}" for k in sorted(wrong)], "; ")
        )
    if problems:
        raise CheckpointError(
            f"{source}: the weights do not match a {type(model).__name__} with this config ("
            + "; ".join(problems)
            + "). Check that the file is this kind of model and that its config.json belongs to it."
        )


def fill_model(
    model: nn.Module,
    state_dict: dict[str, torch.Tensor],
    source: str,
    dtype: torch.dtype | None = None,
    device: torch.device | str = "cpu",
) -> nn.Module:
    """Assign ``state_dict`` to ``model`` (built under ``torch.device("meta")``) without extra copies.

    Floating-point tensors are cast to ``dtype`` (None keeps the file's dtype); tensors are converted
    one at a time and the dict entries replaced, so the file's copy is freed as we go.
    """
    check_state_dict(model, state_dict, source)
    for key in list(state_dict):
        tensor = state_dict[key]
        target_dtype = dtype if dtype is not None and tensor.is_floating_point() else tensor.dtype
        state_dict[key] = tensor.to(device=device, dtype=target_dtype)
    model.load_state_dict(state_dict, strict=True, assign=True)
    still_meta = [name for name, t in [*model.named_parameters(), *model.named_buffers()] if t.is_meta]
    if still_meta:
        raise CheckpointError(
            f"{source}: {type(model).__name__} has tensors that no file provides: {listing(still_meta)}."
        )
    return model.eval()
