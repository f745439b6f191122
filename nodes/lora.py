"""Muse LoRA Loader: a transformer (and text encoder) with a LoRA file from ComfyUI's models/loras patched in.

The list offers the pack's example LoRA first (``example/<file>``, from ``example_inputs/``: a LoRA of the
embedded model, which the muse_lora workflow loads), then the files of models/loras.

The input models are never changed: ComfyUI caches them, and other branches of the graph may use them. The
outputs are copies of the module trees that share every tensor the LoRA leaves alone with the input and hold
new tensors for the patched weights only. So a loader costs the memory of the weights its LoRA patches, once
when it runs, and nothing per sampler run; loaders chain, each copying the output of the one before.
"""

from __future__ import annotations

import copy
import dataclasses
from pathlib import Path
from types import SimpleNamespace

from torch import nn

from muse_core.limits import MAX_LORA_STRENGTH
from muse_core.loading.lora import lora_parts, lora_patches

from .comfy_env import EXAMPLE_INPUTS
from .model_files import component_names, resolve
from .runtime import LoadedModel
from .types import TEXT_ENCODER, TRANSFORMER

LORA_FOLDER = "loras"  # ComfyUI's models/loras, which its own LoRA loaders list too
FOLDERS = (LORA_FOLDER,)
# The list's only entry when models/loras holds no file and the pack's example is missing: an empty list would
# show a blank widget that fails with "Value not in list", so the entry itself says what to install.
NO_LORA = "none installed: put LoRA .safetensors files in models/loras"
EXAMPLE = "example"  # the prefix of the pack's own LoRAs in the list


def example_loras() -> dict[str, Path]:
    """The LoRAs the pack ships (``example_inputs/*.safetensors``), by their listed names."""
    return {f"{EXAMPLE}/{path.name}": path for path in sorted(EXAMPLE_INPUTS.glob("*.safetensors"))}


def _patched_copy(loaded: LoadedModel, new_weights: dict[int, nn.Parameter], label: str) -> LoadedModel:
    """``loaded`` with the weights in ``new_weights`` (by ``id`` of the weight they replace) swapped in."""
    model = loaded.model
    # deepcopy takes what the memo holds as already copied: every tensor is shared with the input, except the
    # patched weights, which map to their new values. A text encoder's tokenizer is shared too: it never changes.
    shared = [*model.parameters(), *model.buffers()]
    if hasattr(model, "tokenizer"):
        shared.append(model.tokenizer)
    memo = {id(item): item for item in shared} | new_weights
    return dataclasses.replace(loaded, model=copy.deepcopy(model, memo), name=f"{loaded.name} + {label}")


class MuseLoraLoader:
    DESCRIPTION = (
        "Applies a LoRA from models/loras (diffusers' aMUSEd LoRA format, .safetensors) to a base transformer and, "
        "when connected, its text encoder. The inputs stay unchanged; chain several loaders to apply several LoRAs."
    )
    CATEGORY = "Muse/loaders"
    FUNCTION = "load"
    RETURN_TYPES = (TRANSFORMER, TEXT_ENCODER)
    RETURN_NAMES = ("transformer", "text_encoder")
    OUTPUT_TOOLTIPS = (
        "The transformer with the LoRA applied.",
        "The text encoder with the LoRA's text-encoder weights applied (empty when none is connected).",
    )

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "transformer": (TRANSFORMER, {"tooltip": "The base transformer the LoRA was trained on."}),
            "lora_name": ([*example_loras(), *component_names([], FOLDERS)] or [NO_LORA], {"tooltip": (
                "A LoRA file in models/loras, as diffusers' aMUSEd LoRA training saves it "
                "(pytorch_lora_weights.safetensors); example/... are the pack's own (for the embedded model).")}),
            "strength": ("FLOAT", {"default": 1.0, "min": -MAX_LORA_STRENGTH, "max": MAX_LORA_STRENGTH,
                                   "step": 0.01, "tooltip": (
                "How much of the LoRA to add: 1 as trained, 0 leaves the model as it is, negative values push "
                "away from what it learned.")}),
        }, "optional": {
            "text_encoder": (TEXT_ENCODER, {"tooltip": (
                "The text encoder, if the LoRA also patches it (it says so when it does and this is not connected).")}),
        }}

    def load(self, transformer, lora_name, strength, text_encoder=None):
        if lora_name == NO_LORA:
            raise FileNotFoundError(
                "Muse LoRA Loader: no LoRA is installed. Put the LoRA's .safetensors file (diffusers' aMUSEd LoRA "
                "training saves pytorch_lora_weights.safetensors) in ComfyUI/models/loras, then refresh the lists "
                "(press R).")
        path = example_loras().get(lora_name) or resolve(lora_name, FOLDERS)
        if "text_encoder" in lora_parts(path) and text_encoder is None:
            raise ValueError(
                f"Muse LoRA Loader: '{lora_name}' also patches the text encoder. Connect the text encoder to this "
                "node and its text_encoder output to Muse Text Encode.")
        # the two models as a pipeline, so that the file's transformer. and text_encoder. keys find their layers
        models = SimpleNamespace(transformer=transformer.model,
                                 text_encoder=None if text_encoder is None else text_encoder.model)
        new_weights = {id(weight): nn.Parameter(value, requires_grad=weight.requires_grad)
                       for weight, value in lora_patches(models, path, strength)}
        label = f"LoRA '{lora_name}' at {strength:g}"
        return (_patched_copy(transformer, new_weights, label),
                None if text_encoder is None else _patched_copy(text_encoder, new_weights, label))


NODE_CLASS_MAPPINGS = {"MuseLoraLoader": MuseLoraLoader}
NODE_DISPLAY_NAME_MAPPINGS = {"MuseLoraLoader": "Muse LoRA Loader"}
