"""Loaded models as they travel between nodes: on the offload device at rest, on the compute device
while a node works with them, with out-of-memory errors that say what to do.
"""

from __future__ import annotations

import contextlib
import dataclasses

import torch

from muse_core.attention import BACKENDS
from muse_core.loading.dtypes import DTYPE_NAMES

from . import comfy_env

DTYPES = ("auto", *DTYPE_NAMES)
DEVICES = ("auto", "cpu")
ATTENTION_BACKENDS = BACKENDS


def compute_device(choice: str) -> torch.device:
    """``auto``: ComfyUI's device (the GPU when there is one); ``cpu``: always the CPU."""
    if choice not in DEVICES:
        raise ValueError(f"device must be one of {DEVICES}, got {choice!r}.")
    return comfy_env.compute_device() if choice == "auto" else torch.device("cpu")


def torch_dtype(choice: str, device: torch.device, auto: torch.dtype | None = None) -> torch.dtype:
    """The dtype of a dtype widget. ``auto``: ``auto`` if given, else bf16 (or fp16) on GPUs, fp32 on CPUs."""
    if choice in DTYPE_NAMES:
        return DTYPE_NAMES[choice]
    if choice != "auto":
        raise ValueError(f"dtype must be one of {DTYPES}, got {choice!r}.")
    if auto is not None:
        return auto
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.float32


@dataclasses.dataclass
class LoadedModel:
    """A muse_core model (or text encoder, or CLIP scorer) plus where it should run."""

    model: object
    name: str  # says which model in messages, e.g. "transformer embedded/transformer.safetensors"
    device: torch.device  # compute device; weights rest on the offload device between nodes
    sampling: dict = dataclasses.field(default_factory=dict)  # recommended SamplingOptions fields (sampling.json)

    @property
    def module(self) -> torch.nn.Module:
        return self.model if isinstance(self.model, torch.nn.Module) else self.model.model

    @property
    def num_bytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.module.state_dict().values())


def at_rest_device(device: torch.device) -> torch.device:
    """Where weights wait between nodes: ComfyUI's offload device for GPU models, the CPU otherwise."""
    return comfy_env.offload_device() if device.type != "cpu" else torch.device("cpu")


@contextlib.contextmanager
def running(*loaded: LoadedModel):
    """Move models to their compute devices for a node's work, and back afterwards (also on errors)."""
    try:
        for item in loaded:
            comfy_env.free_memory(int(item.num_bytes * 1.2), item.device)
            item.module.to(item.device)
        yield tuple(item.model for item in loaded)
    except torch.cuda.OutOfMemoryError as exc:
        names = ", ".join(item.name for item in loaded)
        raise RuntimeError(
            f"Out of GPU memory while running {names}. Try: fewer images per batch, a smaller dtype "
            "(fp16 / bf16) in the loader, or device 'cpu' in the loader of the largest model."
        ) from exc
    finally:
        for item in loaded:
            item.module.to(at_rest_device(item.device))
        comfy_env.empty_cache()
