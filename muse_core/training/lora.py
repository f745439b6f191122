"""LoRA fine-tuning of a model folder's base U-ViT on a caption folder, written in diffusers' aMUSEd LoRA format.

The adapter is PEFT's (``LoraConfig`` + ``inject_adapter_in_model``) on our ``MaskedTokenUViT``, whose module
names are diffusers' ``UVit2DModel`` names. Only the adapter trains (text encoder and VQ frozen), with the
masked-token objective of ``training.muse`` in the one loop of ``training.loop``. The file is what
``AmusedLoraLoaderMixin.save_lora_weights`` writes: ``transformer.<module>.lora_A.weight`` / ``.lora_B.weight``,
header ``{"format": "pt"}``, so ``muse_core.loading.lora``, the LoRA Loader node and diffusers read it.

Alpha: PEFT trains ``W + (alpha / r) * B @ A``. That save writes no alpha, and its readers then take
``alpha == r`` (scale 1): diffusers' loader (``get_peft_kwargs``), ours, and any tool that follows them. So the
scale is folded into ``lora_B`` before saving, and every one of them computes what training computed. Adapter
metadata in the header would say the same only to readers that look for it: diffusers' ``lora_state_dict``
returns it only when asked (``return_lora_metadata=True``), and the two-call load its aMUSEd LoRAs need
(``AmusedPipeline`` has no ``load_lora_weights``) does not ask.

peft is not one of the pack's requirements: it is imported when a LoRA is trained (``import_peft``).
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn

from ..models.uvit import MaskedTokenUViT
from ..output import atomic_output
from ..pipeline import load_pipeline
from .data import CaptionFolder, TokenDataset, collate, encode_images
from .loop import TrainConfig, setup_distributed, train
from .muse import MaskedTokenObjective

DEFAULT_TARGETS = ("to_q", "to_k", "to_v")  # diffusers' train_amused.py --lora_target_modules
ADAPTER_MARK = "lora_"  # in the name of every parameter PEFT adds, and of no base parameter


@dataclasses.dataclass(frozen=True)
class LoraSettings:
    rank: int = 16
    alpha: float = 32.0  # diffusers' train_amused.py default: scale alpha / rank = 2
    targets: tuple[str, ...] = DEFAULT_TARGETS  # PEFT target_modules: a layer's name or its dotted tail

    def __post_init__(self):
        if isinstance(self.rank, bool) or not isinstance(self.rank, int) or self.rank < 1:
            raise ValueError(f"the LoRA rank must be a whole number >= 1, got {self.rank!r}.")
        if not (isinstance(self.alpha, (int, float)) and math.isfinite(self.alpha) and self.alpha > 0):
            raise ValueError(f"the LoRA alpha must be a number > 0 (the scale is alpha / rank), got {self.alpha!r}.")
        if not self.targets or not all(isinstance(t, str) and t.strip() for t in self.targets):
            raise ValueError(f"the LoRA targets must be layer names such as {' '.join(DEFAULT_TARGETS)}, got "
                             f"{list(self.targets)!r}.")

    @property
    def scale(self) -> float:
        return self.alpha / self.rank


def lora_config(steps: int = 500, batch_size: int = 8, lr: float = 1e-3, seed: int = 0) -> TrainConfig:
    """The loop's settings for a LoRA run: warmup over the first 5% of the steps, then cosine to 0.1x."""
    return TrainConfig(steps=steps, batch_size=batch_size, lr=lr, warmup_steps=max(1, steps // 20),
                       checkpoint_every=100, seed=seed)


def import_peft():
    """peft, or an ImportError that says how to install it."""
    try:
        import peft  # noqa: PLC0415  (optional: only LoRA training needs it)
    except ImportError as error:
        raise ImportError("LoRA training needs the peft package, which the pack does not install: "
                          "pip install peft") from error
    return peft


def check_lora_output(path: str | Path) -> Path:
    """Refuse an output the loaders would not read, or one that exists, before any work."""
    path = Path(path)
    if path.suffix != ".safetensors":
        raise ValueError(f"{path}: a LoRA is written as a .safetensors file (what the loaders read); "
                         f"use e.g. {path.with_suffix('.safetensors').name}.")
    if path.exists():
        raise ValueError(f"{path} already exists: choose another name, or delete it (a LoRA is never replaced).")
    return path


def patchable(module: nn.Module) -> bool:
    """What a LoRA file can patch (muse_core.loading.lora): linear layers and ungrouped convolutions."""
    return isinstance(module, nn.Linear) or (isinstance(module, nn.Conv2d) and module.groups == 1)


def check_targets(model: nn.Module, targets) -> None:
    """Each target must name (PEFT's rule: the whole name or its dotted tail) patchable layers only."""
    modules = dict(model.named_modules())
    bad = []
    for target in targets:
        matches = [m for name, m in modules.items() if name == target or name.endswith("." + target)]
        if not matches or not all(patchable(m) for m in matches):
            bad.append(target)
    if bad:
        # the tails a user would write: to_q, to_out.0, linear_1 ... (a trailing index is kept with its parent)
        names = sorted({".".join(name.split(".")[-2:]) if name.split(".")[-1].isdigit() else name.split(".")[-1]
                        for name, m in modules.items() if patchable(m)})
        raise ValueError(f"LoRA targets {bad}: no linear or convolution layer of the base transformer has that "
                         f"name (or the name also covers layers a LoRA cannot patch). Its layer names: {' '.join(names)}.")


class LoraObjective(MaskedTokenObjective):
    """The masked-token objective on a transformer carrying a PEFT adapter.

    Checkpoints hold the adapter alone: the base weights are the base folder's and load again on resume (an
    aMUSEd-512 checkpoint of everything would be gigabytes for a LoRA of megabytes).
    """

    def state_dict(self, *args, **kwargs):
        return {k: v for k, v in super().state_dict(*args, **kwargs).items() if ADAPTER_MARK in k}

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        result = super().load_state_dict(state_dict, strict=False, assign=assign)
        result = result._replace(missing_keys=[k for k in result.missing_keys if ADAPTER_MARK in k])
        if strict and (result.missing_keys or result.unexpected_keys):
            raise RuntimeError(f"not this adapter's state: missing {result.missing_keys[:3]}, "
                               f"unexpected {result.unexpected_keys[:3]}.")
        return result


def lora_file_tensors(model: nn.Module, settings: LoraSettings) -> dict[str, torch.Tensor]:
    """The adapter in diffusers' aMUSEd keys, its scale folded into ``lora_B`` (module docstring)."""
    peft = import_peft()
    tensors = {}
    for key, value in peft.utils.get_peft_model_state_dict(model).items():
        if ".lora_B." in key:
            value = value * settings.scale
        tensors[f"transformer.{key}"] = value.detach().float().cpu().contiguous()
    return tensors


def save_lora(model: nn.Module, path: str | Path, settings: LoraSettings) -> Path:
    """Write the adapter of ``model`` as one .safetensors file, whole or not at all."""
    from safetensors.torch import save_file  # noqa: PLC0415

    path = Path(path)
    with atomic_output(path) as temporary:
        save_file(lora_file_tensors(model, settings), str(temporary), metadata={"format": "pt"})
    return path


def train_lora(base: str | Path, data: str | Path, out: str | Path, settings: LoraSettings = LoraSettings(),
               config: TrainConfig | None = None, work_dir: str | Path | None = None, progress: bool = True) -> nn.Module:
    """Fine-tune a LoRA of the model folder ``base``'s transformer on the caption folder ``data``; write it to
    ``out``. Checkpoints go to ``work_dir`` (default ``OUT.work``), from which an interrupted run resumes.

    Returns the base transformer with the trained PEFT adapter in it, in eval mode.
    """
    out = check_lora_output(out)
    peft = import_peft()
    config = config or lora_config()
    world = setup_distributed()
    pipe = load_pipeline(base, device=world.device)
    transformer = pipe.transformer
    if not isinstance(transformer, MaskedTokenUViT):
        raise ValueError(f"{base}: LoRA training supports aMUSEd / Muse U-ViT models, not a {type(transformer).__name__}.")
    check_targets(transformer, settings.targets)
    images = CaptionFolder(data, pipe.native_size)
    ids = encode_images(pipe.vq, images, progress=progress and world.is_main)

    torch.manual_seed(config.seed)  # lora_A's initialisation; lora_B starts at zero, so training starts at the base
    adapter = peft.LoraConfig(r=settings.rank, lora_alpha=settings.alpha, target_modules=list(settings.targets),
                              init_lora_weights=True)
    peft.inject_adapter_in_model(adapter, transformer)  # also freezes every base weight
    objective = LoraObjective(transformer, pipe.text_encoder, pipe.native_size, train_text_encoder=False)
    work_dir = Path(work_dir) if work_dir is not None else out.with_name(out.name + ".work")
    train(objective, TokenDataset(images.captions(), ids), config, work_dir, collate, progress, description="lora")
    transformer.eval()
    if world.is_main:
        save_lora(transformer, out, settings)
    if dist.is_initialized():
        dist.barrier()
    return transformer
