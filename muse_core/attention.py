"""The one attention function every Muse model calls.

Backends:
- ``xformers``: ``xformers.ops.memory_efficient_attention``; CUDA tensors only.
- ``sdpa``: ``torch.nn.functional.scaled_dot_product_attention`` (flash / memory-efficient / math
  kernels chosen by torch).
- ``math``: the textbook formula, softmax in float32; the reference the others are tested against.
- ``auto``: xformers when it is importable and the tensors are on CUDA, else sdpa.

Tensors use the ``[batch, heads, tokens, head_dim]`` layout. ``key_mask`` is a boolean
``[batch, key_tokens]`` tensor, True where a key may be attended to (text padding is False).
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F

BACKENDS = ("auto", "xformers", "sdpa", "math")


@functools.lru_cache(maxsize=None)
def _xformers_ops():
    try:
        import xformers.ops  # noqa: PLC0415  (heavy, optional)
    except Exception:  # an ImportError, or a broken build raising anything at import
        return None
    return xformers.ops


def xformers_available() -> bool:
    return _xformers_ops() is not None and torch.cuda.is_available()


def check_backend(backend: str) -> str:
    """Validate a backend name; raise a clear error when xformers is asked for and cannot run."""
    if backend not in BACKENDS:
        raise ValueError(f"Unknown attention backend {backend!r}; choose one of {', '.join(BACKENDS)}.")
    if backend == "xformers" and not xformers_available():
        reason = "xformers is not installed" if _xformers_ops() is None else "no CUDA device is available"
        raise RuntimeError(
            f"Attention backend 'xformers' cannot run here: {reason}. "
            "Install xformers matching your CUDA torch build and run on a GPU, or choose 'auto' or 'sdpa'."
        )
    return backend


def resolve_backend(backend: str, device: torch.device) -> str:
    if backend == "auto":
        return "xformers" if device.type == "cuda" and xformers_available() else "sdpa"
    return backend


def attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    key_mask: torch.Tensor | None = None,
    backend: str = "auto",
) -> torch.Tensor:
    """softmax(q k^T / sqrt(d) + mask) v over ``[B, H, L, D]`` tensors; returns ``[B, H, Lq, D]``."""
    backend = resolve_backend(backend, q.device)
    if backend == "sdpa":
        mask = None if key_mask is None else key_mask[:, None, None, :]
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    if backend == "math":
        return _math_attention(q, k, v, key_mask)
    if backend == "xformers":
        return _xformers_attention(q, k, v, key_mask)
    raise ValueError(f"Unknown attention backend {backend!r}; choose one of {', '.join(BACKENDS)}.")


def _math_attention(q, k, v, key_mask):
    scores = torch.einsum("bhqd,bhkd->bhqk", q.float(), k.float()) * q.shape[-1] ** -0.5
    if key_mask is not None:
        scores = scores.masked_fill(~key_mask[:, None, None, :], float("-inf"))
    return torch.einsum("bhqk,bhkd->bhqd", scores.softmax(dim=-1), v.float()).to(q.dtype)


def _xformers_attention(q, k, v, key_mask):
    check_backend("xformers")
    ops = _xformers_ops()
    if not q.is_cuda:
        raise RuntimeError("Attention backend 'xformers' needs CUDA tensors; move the model to a GPU or use 'sdpa'.")
    bias = None
    if key_mask is not None:
        batch, heads, q_len, _ = q.shape
        k_len = k.shape[2]
        # xformers wants the bias memory aligned to 8 elements along the key axis: allocate padded, slice.
        padded = (k_len + 7) // 8 * 8
        bias = q.new_zeros(batch, heads, q_len, padded)[..., :k_len]
        bias.masked_fill_(~key_mask[:, None, None, :], float("-inf"))
    out = ops.memory_efficient_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), attn_bias=bias)
    return out.transpose(1, 2)
