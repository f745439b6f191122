"""The pack outside ComfyUI: :func:`load_pack` imports the repository root the way ComfyUI imports a custom
node folder, and :class:`CoreNodes` doubles the few core nodes the shipped workflows use (same INPUT_TYPES,
same tensors out): LoadImage, SaveImage, PreviewImage, ImageScaleBy. :class:`ModelManagementDouble` stands
in for ComfyUI's model management (comfy.model_management and comfy.model_patcher) and records what it loads
and unloads.

tools/build_workflows.py reads the node definitions through them; the tests (tests/comfy_harness.py) also
run the workflows with them. A plain module: it imports nothing from tests/.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]


def load_pack(name: str = "muse_nodes_under_test"):
    """Import the repository root as a custom-node package (ComfyUI: spec_from_file_location)."""
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, ROOT / "__init__.py", submodule_search_locations=[str(ROOT)])
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


# ---- core node doubles -------------------------------------------------------------------------------

class CoreNodes:
    """Doubles of ComfyUI's LoadImage, SaveImage, PreviewImage and ImageScaleBy over two folders."""

    def __init__(self, input_dir: Path, output_dir: Path):
        self.input_dir, self.output_dir = Path(input_dir), Path(output_dir)
        harness = self

        class LoadImage:
            RETURN_TYPES = ("IMAGE", "MASK")
            FUNCTION = "load_image"

            @classmethod
            def INPUT_TYPES(cls):
                files = sorted(p.name for p in harness.input_dir.iterdir() if p.is_file())
                return {"required": {"image": (files, {"image_upload": True})}}

            def load_image(self, image):
                with Image.open(harness.input_dir / image) as picture:
                    rgb = np.asarray(picture.convert("RGB"), dtype=np.float32) / 255
                    has_alpha = "A" in picture.getbands()
                    alpha = np.asarray(picture.getchannel("A"), dtype=np.float32) / 255 if has_alpha else None
                mask = 1 - torch.from_numpy(alpha) if alpha is not None else torch.zeros(64, 64)
                return torch.from_numpy(rgb)[None], mask[None]

        class SaveImage:
            RETURN_TYPES = ()
            FUNCTION = "save_images"
            OUTPUT_NODE = True
            prefix_default = "ComfyUI"

            @classmethod
            def INPUT_TYPES(cls):
                return {"required": {"images": ("IMAGE",), "filename_prefix": ("STRING", {"default": cls.prefix_default})}}

            def save_images(self, images, filename_prefix="ComfyUI"):
                saved = []
                for image in images:
                    index = len(list(harness.output_dir.glob(f"{filename_prefix}_*.png")))
                    path = harness.output_dir / f"{filename_prefix}_{index:05}_.png"
                    path.parent.mkdir(parents=True, exist_ok=True)
                    Image.fromarray((image.numpy() * 255).clip(0, 255).astype(np.uint8)).save(path)
                    saved.append({"filename": path.name, "type": "output"})
                return {"ui": {"images": saved}}

        class PreviewImage(SaveImage):
            prefix_default = "preview"

            @classmethod
            def INPUT_TYPES(cls):
                return {"required": {"images": ("IMAGE",)}}

            def save_images(self, images, filename_prefix="preview"):
                return super().save_images(images, filename_prefix)

        class ImageScaleBy:
            RETURN_TYPES = ("IMAGE",)
            FUNCTION = "upscale"

            @classmethod
            def INPUT_TYPES(cls):
                methods = ["nearest-exact", "bilinear", "area", "bicubic", "lanczos"]
                return {"required": {"image": ("IMAGE",), "upscale_method": (methods,),
                                     "scale_by": ("FLOAT", {"default": 1.0, "min": 0.01, "max": 8.0, "step": 0.01})}}

            def upscale(self, image, upscale_method, scale_by):
                if upscale_method == "lanczos":
                    raise NotImplementedError("the ImageScaleBy double has no lanczos")
                height, width = round(image.shape[1] * scale_by), round(image.shape[2] * scale_by)
                scaled = F.interpolate(image.movedim(-1, 1), size=(height, width), mode=upscale_method)
                return (scaled.movedim(1, -1),)

        self.mappings = {"LoadImage": LoadImage, "SaveImage": SaveImage, "PreviewImage": PreviewImage,
                         "ImageScaleBy": ImageScaleBy}


# ---- model management double -------------------------------------------------------------------------

def _module_size(module: torch.nn.Module) -> int:
    """comfy.model_management.module_size: the bytes of a module's state dict."""
    return sum(t.nelement() * t.element_size() for t in module.state_dict().values())


class ModelManagementDouble:
    """comfy.model_management as far as the pack uses it (plus ``unload_all_models`` and ``free_memory``), and as
    ``.model_patcher`` comfy.model_patcher's ModelPatcher, with ComfyUI's rules for plain torch layers.

    Its compute device (the CPU: the tests have no GPU) counts as a GPU of ``vram_bytes``: ``load_models_gpu``
    makes room on it as ComfyUI does (1.1 x what the models still need), unloading whole models, the oldest first
    (ComfyUI orders by offloaded memory, references and size, and may unload part of one). With ``novram`` it
    loads as ComfyUI does under
    --novram: 0.1 bytes of weights. Every load and unload is recorded in ``events`` as (what, model name).
    """

    def __init__(self, vram_bytes: int = 1 << 36, novram: bool = False):
        self.vram_bytes, self.novram = vram_bytes, novram
        self.device = torch.device("cpu")
        self.events: list[tuple[str, str]] = []
        self.current_loaded_models: list = []  # ModelPatchers, most recently loaded first
        self.model_patcher = SimpleNamespace(ModelPatcher=self._patcher_class())

    # -- devices and housekeeping
    def get_torch_device(self):
        return self.device

    def unet_offload_device(self):
        return torch.device("cpu")

    text_encoder_offload_device = vae_offload_device = unet_offload_device

    def soft_empty_cache(self, force=False):
        pass

    def throw_exception_if_processing_interrupted(self):
        pass

    # -- loading and unloading
    def free_memory(self, memory_required, device, keep_loaded=()):
        for patcher in reversed(list(self.current_loaded_models)):  # oldest first
            if self._free(device) >= memory_required:
                break
            if patcher.load_device == device and patcher not in keep_loaded:
                patcher.detach()
                self.current_loaded_models.remove(patcher)

    def load_models_gpu(self, models, memory_required=0, force_patch_weights=False, minimum_memory_required=None,
                        force_full_load=False):
        models = list(dict.fromkeys(models))  # ComfyUI makes a set of them
        needed = sum(p.model_size() - p.loaded_size() for p in models)
        self.free_memory(1.1 * needed + memory_required, self.device)
        for patcher in models:
            if patcher in self.current_loaded_models:
                self.current_loaded_models.remove(patcher)
            # LoadedModel.model_load: lowvram_model_memory 0 means all of it; --novram overrides force_full_load
            lowvram_model_memory = 0.1 if self.novram else 0
            patcher.partially_load(patcher.load_device, lowvram_model_memory or 1e32, force_patch_weights)
            self.current_loaded_models.insert(0, patcher)

    def unload_all_models(self):
        self.free_memory(1e30, self.get_torch_device())

    def _free(self, device) -> float:
        return self.vram_bytes - sum(p.loaded_size() for p in self.current_loaded_models if p.load_device == device)

    def _patcher_class(self):
        events = self.events

        class ModelPatcher:
            """ModelPatcher's bookkeeping (on the model, as ComfyUI keeps it) and its load rules. None of our layers
            are comfy.ops layers, so a partial load moves the layers that fit, largest first, and leaves the rest
            where they are, still counting the model as not in low-VRAM mode (ModelPatcher.load)."""

            def __init__(self, model, load_device, offload_device, size=0, weight_inplace_update=False):
                self.model, self.load_device, self.offload_device, self.size = model, load_device, offload_device, size
                if getattr(model, "device", None) is None:
                    model.device = offload_device
                model.model_loaded_weight_memory = 0
                model.model_lowvram = False

            def model_size(self):
                return self.size or _module_size(self.model)

            def loaded_size(self):
                return self.model.model_loaded_weight_memory

            def load(self, device_to=None, lowvram_model_memory=0, force_patch_weights=False, full_load=False):
                if full_load:
                    self.model.to(device_to)
                    loaded = self.model_size()
                else:
                    loaded = 0
                    layers = [m for m in self.model.modules() if list(m.parameters(recurse=False))
                              and len(list(m.parameters())) == len(list(m.parameters(recurse=False)))]
                    for layer in sorted(layers, key=_module_size, reverse=True):
                        if loaded + _module_size(layer) < lowvram_model_memory:
                            layer.to(device_to)
                            loaded += _module_size(layer)
                self.model.device = device_to
                self.model.model_loaded_weight_memory = loaded
                events.append(("load", self.model.name))

            def partially_load(self, device_to, extra_memory=0, force_patch_weights=False):
                used = self.loaded_size()
                if not self.model.model_lowvram and used > 0:
                    return 0  # already loaded
                self.load(device_to, lowvram_model_memory=used + extra_memory, force_patch_weights=force_patch_weights,
                          full_load=used + extra_memory > self.model_size())
                return self.loaded_size() - used

            def detach(self, unpatch_all=True):
                if unpatch_all:
                    self.model.to(self.offload_device)
                    self.model.device = self.offload_device
                    self.model.model_loaded_weight_memory = 0
                    events.append(("unload", self.model.name))
                return self.model

        return ModelPatcher


# ---- validation and execution -------------------------------------------------------------------------

def _check_value(node_id: str, name: str, spec, value) -> None:
    kind, options = spec[0], (spec[1] if len(spec) > 1 else {})
    where = f"node {node_id}, input {name!r}"
    if isinstance(kind, list):  # ComfyUI's rule: choices given as a tuple are not checked
        if value not in kind:
            choices = kind if len(kind) <= 20 else f"(list of length {len(kind)})"
            raise ValueError(f"{where}: Value not in list: {name}: {value!r} not in {choices}")
    elif kind in ("INT", "FLOAT"):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or (kind == "INT" and not isinstance(value, int)):
            raise ValueError(f"{where}: {value!r} is not a {kind}.")
        if value < options.get("min", -float("inf")) or value > options.get("max", float("inf")):
            raise ValueError(f"{where}: {value} is outside [{options.get('min')}, {options.get('max')}].")
    elif kind == "STRING" and not isinstance(value, str):
        raise ValueError(f"{where}: {value!r} is not a STRING.")
    elif kind == "BOOLEAN" and not isinstance(value, bool):
        raise ValueError(f"{where}: {value!r} is not a BOOLEAN.")


def validate_api(prompt: dict, mappings: dict) -> None:
    """Refuse the prompt, as ComfyUI's /prompt does before anything runs, if any node's inputs are invalid."""
    for node_id, node in prompt.items():
        specs = mappings[node["class_type"]].INPUT_TYPES()
        required, optional = specs.get("required", {}), specs.get("optional", {})
        missing = [name for name in required if name not in node["inputs"]]
        if missing:
            raise ValueError(f"node {node_id} ({node['class_type']}): required inputs {missing} are missing.")
        for name, value in node["inputs"].items():
            spec = required.get(name) or optional.get(name)
            if spec is None:
                raise ValueError(f"node {node_id} ({node['class_type']}): unknown input {name!r}.")
            if isinstance(value, list):  # a link: [origin node id, output slot]
                origin, slot = value
                produced = mappings[prompt[origin]["class_type"]].RETURN_TYPES[slot]
                if produced != spec[0]:
                    raise ValueError(f"node {node_id}: input {name!r} wants {spec[0]}, the link brings {produced}.")
            else:
                _check_value(node_id, name, spec, value)


def run_api(prompt: dict, mappings: dict, cache: dict | None = None) -> dict:
    """Validate, then run every node; returns {node id: {"result": outputs tuple, "ui": ui dict or None}}.

    ``cache``: a dict kept from prompt to prompt, as ComfyUI's (classic) cache: a node whose inputs, and its
    upstream nodes' inputs, are those of a node run before is not run again; its outputs are reused."""
    validate_api(prompt, mappings)
    done: dict[str, dict] = {}

    def signature(node_id: str) -> str:
        node = prompt[node_id]
        inputs = {name: [signature(value[0]), value[1]] if isinstance(value, list) else value
                  for name, value in node["inputs"].items()}
        return json.dumps([node["class_type"], inputs], sort_keys=True)

    def run(node_id: str):
        if node_id in done:
            return done[node_id]
        if cache is not None and signature(node_id) in cache:
            done[node_id] = cache[signature(node_id)]
            return done[node_id]
        node = prompt[node_id]
        cls = mappings[node["class_type"]]
        kwargs = {name: run(value[0])["result"][value[1]] if isinstance(value, list) else value
                  for name, value in node["inputs"].items()}
        returned = getattr(cls(), cls.FUNCTION)(**kwargs)
        if isinstance(returned, dict):
            done[node_id] = {"result": tuple(returned.get("result", ())), "ui": returned.get("ui")}
        else:
            done[node_id] = {"result": tuple(returned), "ui": None}
        if cache is not None:
            cache[signature(node_id)] = done[node_id]
        return done[node_id]

    for node_id in prompt:
        run(node_id)
    return done
