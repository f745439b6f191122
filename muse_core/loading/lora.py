"""LoRA files as diffusers' aMUSEd training writes them, applied as weight patches (``apply_lora``).

The format (``AmusedLoraLoaderMixin.save_lora_weights`` -> ``pytorch_lora_weights.safetensors``): PEFT keys
``transformer.<module>.lora_A.weight`` / ``.lora_B.weight`` and the same under ``text_encoder.``. Module
names are diffusers' ``UVit2DModel`` names, which are ours, and transformers' CLIP names.

Meissonic's training (its ``train/train_meissonic.py``) saves with diffusers' older ``LoraLoaderMixin``, so its
transformer keys sit under ``unet.`` (module names = ours) with the same ``text_encoder.`` part.

Alphas: that save writes no alphas and no adapter metadata, and diffusers then takes ``lora_alpha == r``
per module (``get_peft_kwargs``), i.e. scale 1: ``W + B @ A``. Meissonic trains at lora_alpha 32 / r 16
(scale 2) but its files do not say so: loaded as diffusers loads them, at scale 1, strength 2 gives what its
training saw. A file whose safetensors header carries diffusers' ``lora_adapter_metadata`` (other trainers
write it) has its ``lora_alpha`` / ``r`` (and
``alpha_pattern`` / ``rank_pattern``, ``use_rslora``) honoured; DoRA and LoRA biases are refused.

``apply_lora`` patches weights in place; ``lora_patches`` computes the patched values without touching the
model (the ComfyUI node builds a patched copy from them); ``lora_parts`` checks a file from its header alone,
before any model loads (the CLI's ``--lora``, the node).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterator
from pathlib import Path

import torch
from torch import nn

from ..limits import MAX_LORA_STRENGTH, check_number
from .errors import CheckpointError
from .files import tensor_names
from .fill import listing

PREFIXES = ("transformer", "text_encoder")
PREFIX_ALIASES = {"unet": "transformer"}  # Meissonic's LoRA files name the transformer "unet"
METADATA_KEY = "lora_adapter_metadata"  # diffusers' LORA_ADAPTER_METADATA_KEY
_PAIR = re.compile(r"^(?P<module>.+)\.lora_(?P<half>[AB])\.weight$")


class LoraHandle:
    """Applied LoRA patches; ``remove()`` puts the original weights back bitwise.

    Chained LoRAs must be removed in reverse order (each handle restores what it found when applied).
    """

    def __init__(self, originals: list[tuple[nn.Parameter, torch.Tensor]]):
        self._originals = originals

    def remove(self) -> None:
        with torch.no_grad():
            for param, original in self._originals:
                param.copy_(original)
        self._originals = []


def _targets(model_or_pipe) -> dict[str, nn.Module]:
    """The modules a LoRA prefix names: a pipeline gives both, a lone model only its own prefix."""
    targets = {}
    transformer = getattr(model_or_pipe, "transformer", None)
    encoder = getattr(model_or_pipe, "text_encoder", None)
    if transformer is not None or encoder is not None:  # a MusePipeline
        if transformer is not None:
            targets["transformer"] = transformer
        if encoder is not None:
            targets["text_encoder"] = encoder.model
    elif hasattr(model_or_pipe, "tokenizer") and isinstance(getattr(model_or_pipe, "model", None), nn.Module):
        targets["text_encoder"] = model_or_pipe.model  # a muse_core TextEncoder
    elif isinstance(model_or_pipe, nn.Module):
        targets["transformer"] = model_or_pipe
    else:
        raise TypeError(f"apply_lora needs a MusePipeline, a transformer or a text encoder, got {type(model_or_pipe)}.")
    return targets


def lora_parts(path) -> set[str]:
    """The parts of a model a LoRA file patches (``transformer``, ``text_encoder``), read from its header
    alone: the check made before any model loads. CheckpointError if it is not a LoRA .safetensors file."""
    path = Path(path)
    if path.suffix != ".safetensors":
        raise CheckpointError(f"{path}: LoRA files are read as .safetensors only (pickles are never loaded).")
    if not path.is_file():
        raise CheckpointError(f"{path}: no such LoRA file.")
    names = tensor_names(path)
    parts = {PREFIX_ALIASES.get(prefix, prefix) for prefix, _, rest in (name.partition(".") for name in names)
             if PREFIX_ALIASES.get(prefix, prefix) in PREFIXES and _PAIR.match(rest)}
    if not parts:
        raise CheckpointError(
            f"{path}: holds no LoRA weights (no lora_A / lora_B keys under {' or '.join(PREFIXES)}; its keys: "
            f"{listing(names) or 'none'}). It is not a LoRA, or one for another model family.")
    return parts


def _read(path: Path) -> tuple[dict[str, torch.Tensor], dict]:
    from safetensors import SafetensorError, safe_open  # noqa: PLC0415

    lora_parts(path)
    try:
        with safe_open(str(path), framework="pt") as f:
            header = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError, ValueError) as e:  # truncated data surfaces only when a tensor is read
        raise CheckpointError(f"{path}: cannot read this LoRA file ({e}).") from e
    raw = header.get(METADATA_KEY)
    try:
        metadata = json.loads(raw) if raw else {}
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{path}: its {METADATA_KEY} is not JSON ({e}).") from e
    return tensors, metadata


def _pattern_value(patterns: dict, module: str, default):
    """PEFT's rule: a pattern key matches a module name it ends (as whole dotted parts)."""
    for key, value in patterns.items():
        if re.match(rf"(.*\.)?({key})$", module):
            return value
    return default


def _scale(metadata: dict, prefix: str, module: str, rank: int) -> float:
    """alpha / r as PEFT computes it; 1 without metadata (diffusers' alpha == rank for aMUSEd files)."""
    config = {k.removeprefix(f"{prefix}."): v for k, v in metadata.items() if k.startswith(f"{prefix}.")}
    if not config:
        return 1.0
    if config.get("use_dora") or config.get("lora_bias"):
        raise CheckpointError(f"the {prefix} LoRA uses DoRA or LoRA biases, which are not supported.")
    r = _pattern_value(config.get("rank_pattern") or {}, module, config.get("r", rank))
    alpha = _pattern_value(config.get("alpha_pattern") or {}, module, config.get("lora_alpha", r))
    return alpha / math.sqrt(r) if config.get("use_rslora") else alpha / r


def _delta(weight: torch.Tensor, down: torch.Tensor, up: torch.Tensor) -> torch.Tensor | None:
    """B @ A in float32 shaped like ``weight`` (Linear, or a groups=1 conv with a 1x1 B), or None if it
    does not fit."""
    if down.ndim != weight.ndim or up.ndim != weight.ndim or up.shape[1] != down.shape[0]:
        return None
    if weight.ndim == 4 and up.shape[2:] != (1, 1):
        return None
    delta = up.flatten(1).float() @ down.flatten(1).float()
    return delta.view(weight.shape) if delta.numel() == weight.numel() and delta.shape[0] == weight.shape[0] else None


def _plan(tensors, metadata, targets, path) -> list[tuple[nn.Parameter, torch.Tensor, float]]:
    """Every (weight, delta, scale) of the file, or CheckpointError listing what does not fit."""
    pairs: dict[tuple[str, str], dict[str, torch.Tensor]] = {}
    unknown = []
    for key, tensor in tensors.items():
        prefix, _, rest = key.partition(".")
        prefix = PREFIX_ALIASES.get(prefix, prefix)
        match = _PAIR.match(rest)
        if prefix not in targets or match is None:
            unknown.append(key)
            continue
        pairs.setdefault((prefix, match["module"]), {})[match["half"]] = tensor
    mismatched, plan = [], []
    for (prefix, module_name), halves in pairs.items():
        target = targets[prefix]
        if prefix == "text_encoder" and not hasattr(target, "text_model"):
            module_name = module_name.removeprefix("text_model.")  # older files name the CLIP tower's wrapper
        module = dict(target.named_modules()).get(module_name)
        weight = getattr(module, "weight", None) if isinstance(module, (nn.Linear, nn.Conv2d)) else None
        name = f"{prefix}.{module_name}"
        if weight is None or set(halves) != {"A", "B"}:
            unknown.append(name if weight is None else f"{name} (lora_A or lora_B missing)")
            continue
        if isinstance(module, nn.Conv2d) and module.groups != 1:
            mismatched.append(f"{name} (grouped conv)")
            continue
        delta = _delta(weight, halves["A"], halves["B"])
        if delta is None:
            mismatched.append(f"{name}: A {tuple(halves['A'].shape)}, B {tuple(halves['B'].shape)} "
                              f"vs weight {tuple(weight.shape)}")
            continue
        plan.append((weight, delta, _scale(metadata, prefix, module_name, halves["A"].shape[0])))
    problems = []
    if unknown:
        problems.append(f"{len(unknown)} key(s) name no layer of the model: {listing(unknown)}")
    if mismatched:
        problems.append(f"{len(mismatched)} shape(s) do not fit: {listing(mismatched, '; ')}")
    if problems:
        raise CheckpointError(f"{path}: not a LoRA for this model; {'. '.join(problems)}. Nothing was changed.")
    return plan  # not empty: _read found a LoRA pair, and each pair is planned or a problem


def _patched(weight: torch.Tensor, delta: torch.Tensor, factor: float) -> torch.Tensor:
    """``W + factor * delta``, summed in float32 on the weight's device and rounded once to its dtype."""
    return (weight.detach().float() + factor * delta.to(weight.device)).to(weight.dtype)


def lora_patches(model_or_pipe, path, strength: float = 1.0) -> Iterator[tuple[nn.Parameter, torch.Tensor]]:
    """Each weight of ``model_or_pipe`` that the file changes, with its patched value
    ``W + strength * scale * (B @ A)``; nothing is modified.

    The file is checked whole first (CheckpointError before any work); the values are then computed one at
    a time, as they are taken. At strength 0 there are none.
    """
    strength = check_number("LoRA strength", strength, -MAX_LORA_STRENGTH, MAX_LORA_STRENGTH)
    path = Path(path)
    tensors, metadata = _read(path)
    plan = _plan(tensors, metadata, _targets(model_or_pipe), path)
    if strength == 0:
        return iter(())
    return ((weight, _patched(weight, delta, strength * scale)) for weight, delta, scale in plan)


def apply_lora(model_or_pipe, path, strength: float = 1.0) -> LoraHandle:
    """Patch ``W += strength * scale * (B @ A)`` into a MusePipeline, a MaskedTokenUViT or a text encoder.

    ``strength``: from -MAX_LORA_STRENGTH to MAX_LORA_STRENGTH. Every key is checked before any weight
    changes. At strength 0 no weight is touched, so outputs are bitwise the base model's. The sum is formed
    in float32 and rounded once to the weight's dtype.
    """
    originals = []
    with torch.no_grad():
        for weight, patched in lora_patches(model_or_pipe, path, strength):
            originals.append((weight, weight.detach().clone()))
            weight.copy_(patched)
    return LoraHandle(originals)
