"""The pack outside ComfyUI: :func:`load_pack` imports the repository root the way ComfyUI imports a custom
node folder, and :class:`CoreNodes` doubles the few core nodes the shipped workflows use (same INPUT_TYPES,
same tensors out): LoadImage, SaveImage, PreviewImage, ImageScaleBy.

tools/build_workflows.py reads the node definitions through them; the tests (tests/comfy_harness.py) also
run the workflows with them. A plain module: it imports nothing from tests/.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

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
