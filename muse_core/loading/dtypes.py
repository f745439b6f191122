"""The weight dtypes the loaders accept, checked before any file is read (torch's own error for a bad
dtype is a dump of ``Tensor.to``'s signatures, raised only once the weights are in memory)."""

from __future__ import annotations

import torch

DTYPE_NAMES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}  # as the CLI and nodes name them


def check_dtype(dtype, argument: str = "dtype") -> torch.dtype | None:
    """``dtype`` as a torch dtype: one of DTYPE_NAMES' values or names, or None (keep the file's dtype)."""
    if dtype is None or dtype in DTYPE_NAMES.values():
        return dtype
    if isinstance(dtype, str) and dtype in DTYPE_NAMES:
        return DTYPE_NAMES[dtype]
    raise ValueError(
        f"{argument} must be torch.float32, torch.float16 or torch.bfloat16 (or 'fp32', 'fp16', 'bf16'), "
        f"or None to keep the file's dtype; got {dtype!r}."
    )
