"""Loaded models as they travel between nodes, and how a node gets them onto its compute device.

Inside ComfyUI every model is under ComfyUI's model management (a ModelPatcher, see ``comfy_env.manage_model``):
a node loads its models and leaves them loaded; ComfyUI keeps them while memory allows, offloads them when it
needs the room and unloads them on "unload models". Outside ComfyUI a model moves to its compute device for a
node's work and back to its offload device afterwards. Out-of-memory errors say what to do.
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
    """A muse_core model (or text encoder, or CLIP scorer), where it runs and rests, and what moves it."""

    model: object
    name: str  # says which model in messages, e.g. "transformer embedded/transformer.safetensors"
    device: torch.device  # compute device
    sampling: dict = dataclasses.field(default_factory=dict)  # recommended SamplingOptions fields (sampling.json)
    mask_free: dict = dataclasses.field(default_factory=dict)  # recommended mask-free editing settings (its section)
    offload_device: torch.device = torch.device("cpu")  # where the weights wait while the model is not loaded
    # ComfyUI's ModelPatcher of the module, or its stand-in outside ComfyUI. Made anew for every LoadedModel,
    # so a LoRA copy (dataclasses.replace of its base) is managed on its own.
    patcher: object = dataclasses.field(init=False, repr=False, compare=False)
    # A super-res model loaded with its cascade: the fingerprint of the base VQ whose tokens it reads
    lowres_vq: str | None = None

    def __post_init__(self):
        self.patcher = comfy_env.manage_model(self.module, self.name, self.device, self.offload_device)

    @property
    def module(self) -> torch.nn.Module:
        return self.model if isinstance(self.model, torch.nn.Module) else self.model.model


def at_rest_device(device: torch.device, kind: str = "unet") -> torch.device:
    """Where weights wait between nodes: for GPU models ComfyUI's offload device for this kind of model
    (``unet``: transformers; ``text_encoder``: text encoders and the CLIP reranker; ``vae``: VQ tokenizers),
    the CPU otherwise."""
    return comfy_env.offload_device(kind) if device.type != "cpu" else torch.device("cpu")


@contextlib.contextmanager
def running(*loaded: LoadedModel):
    """The models on their compute devices for a node's work, loaded together (``comfy_env.models_loaded``)."""
    try:
        with comfy_env.models_loaded([item.patcher for item in loaded]):
            yield tuple(item.model for item in loaded)
    except torch.cuda.OutOfMemoryError as exc:
        names = ", ".join(item.name for item in loaded)
        raise RuntimeError(
            f"Out of GPU memory while running {names}. Try: fewer images per batch, a smaller dtype "
            "(fp16 / bf16) in the loader, or device 'cpu' in the loader of the largest model."
        ) from exc
