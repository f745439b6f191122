"""Run ComfyUI workflows headlessly against the pack's NODE_CLASS_MAPPINGS, without ComfyUI.

- :func:`load_pack` imports the repository root the way ComfyUI imports a custom node folder.
- :func:`ui_to_api` turns a UI-format workflow (what the editor saves: nodes, links, positional
  ``widgets_values``) into the API format posted to ``/prompt`` (``{id: {class_type, inputs}}``), the way
  the front-end does: widgets in INPUT_TYPES order, required then optional, skipping the extra value
  of a seed's "control after generate" widget and of LoadImage's upload button.
- :func:`run_api` validates inputs as ComfyUI's executor does (required inputs, combo choices, numeric
  ranges, socket types) and runs the nodes in dependency order.
- The few core nodes the shipped workflows use have faithful doubles here (same INPUT_TYPES, same
  tensors out): LoadImage, SaveImage, PreviewImage, ImageScaleBy.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
WIDGET_TYPES = ("INT", "FLOAT", "STRING", "BOOLEAN")
SEED_NAMES = ("seed", "noise_seed")  # the front-end adds a control widget to these even without the flag


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


# ---- UI format -> API format ------------------------------------------------------------------------

def is_widget(spec) -> bool:
    kind, options = spec[0], (spec[1] if len(spec) > 1 else {})
    return (isinstance(kind, (list, tuple)) or kind in WIDGET_TYPES) and not options.get("forceInput")


def extra_widget_values(name: str, spec) -> list:
    """The values the front-end stores after a widget's own: seed control mode, image upload button."""
    options = spec[1] if len(spec) > 1 else {}
    if spec[0] == "INT" and (options.get("control_after_generate") or name in SEED_NAMES):
        return ["fixed"]
    return ["image"] if options.get("image_upload") else []


def ui_to_api(workflow: dict, mappings: dict) -> dict:
    links = {link[0]: link for link in workflow["links"]}
    api = {}
    for node in sorted(workflow["nodes"], key=lambda n: n["id"]):
        if node.get("mode", 0) != 0:
            raise ValueError(f"node {node['id']} is muted or bypassed; the shipped workflows use neither.")
        cls = mappings[node["type"]]
        specs = cls.INPUT_TYPES()
        ordered = {**specs.get("required", {}), **specs.get("optional", {})}
        linked = {}
        for entry in node.get("inputs", []):
            if entry.get("link") is not None:
                _, origin, slot, *_ = links[entry["link"]]
                linked[entry["name"]] = [str(origin), slot]
        values = list(node.get("widgets_values", []))
        inputs = {}
        for name, spec in ordered.items():
            if is_widget(spec):
                if not values:
                    raise ValueError(f"node {node['id']} ({node['type']}): widgets_values ends before {name!r}.")
                inputs[name] = values.pop(0)
                del values[:len(extra_widget_values(name, spec))]
            if name in linked:
                inputs[name] = linked[name]
        if values:
            raise ValueError(f"node {node['id']} ({node['type']}): {len(values)} widget values left over: {values}.")
        api[str(node["id"])] = {"class_type": node["type"], "inputs": inputs, "_meta": {"title": node.get("title", node["type"])}}
    return api


# ---- validation and execution -------------------------------------------------------------------------

def _check_value(node_id: str, name: str, spec, value) -> None:
    kind, options = spec[0], (spec[1] if len(spec) > 1 else {})
    where = f"node {node_id}, input {name!r}"
    if isinstance(kind, (list, tuple)):
        if value not in kind:
            raise ValueError(f"{where}: {value!r} is not one of {list(kind)[:8]}.")
    elif kind in ("INT", "FLOAT"):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or (kind == "INT" and not isinstance(value, int)):
            raise ValueError(f"{where}: {value!r} is not a {kind}.")
        if value < options.get("min", -float("inf")) or value > options.get("max", float("inf")):
            raise ValueError(f"{where}: {value} is outside [{options.get('min')}, {options.get('max')}].")
    elif kind == "STRING" and not isinstance(value, str):
        raise ValueError(f"{where}: {value!r} is not a STRING.")
    elif kind == "BOOLEAN" and not isinstance(value, bool):
        raise ValueError(f"{where}: {value!r} is not a BOOLEAN.")


def run_api(prompt: dict, mappings: dict) -> dict:
    """Run every node; returns {node id: {"result": outputs tuple, "ui": ui dict or None}}."""
    done: dict[str, dict] = {}

    def run(node_id: str):
        if node_id in done:
            return done[node_id]
        node = prompt[node_id]
        cls = mappings[node["class_type"]]
        specs = cls.INPUT_TYPES()
        required, optional = specs.get("required", {}), specs.get("optional", {})
        missing = [name for name in required if name not in node["inputs"]]
        if missing:
            raise ValueError(f"node {node_id} ({node['class_type']}): required inputs {missing} are missing.")
        kwargs = {}
        for name, value in node["inputs"].items():
            spec = required.get(name) or optional.get(name)
            if spec is None:
                raise ValueError(f"node {node_id} ({node['class_type']}): unknown input {name!r}.")
            if isinstance(value, list):
                origin, slot = value
                origin_cls = mappings[prompt[origin]["class_type"]]
                produced = origin_cls.RETURN_TYPES[slot]
                if produced != spec[0]:
                    raise ValueError(f"node {node_id}: input {name!r} wants {spec[0]}, the link brings {produced}.")
                kwargs[name] = run(origin)["result"][slot]
            else:
                _check_value(node_id, name, spec, value)
                kwargs[name] = value
        returned = getattr(cls(), cls.FUNCTION)(**kwargs)
        if isinstance(returned, dict):
            done[node_id] = {"result": tuple(returned.get("result", ())), "ui": returned.get("ui")}
        else:
            done[node_id] = {"result": tuple(returned), "ui": None}
        return done[node_id]

    for node_id in prompt:
        run(node_id)
    return done


def load_workflow(path: Path) -> dict:
    return json.loads(Path(path).read_text())
