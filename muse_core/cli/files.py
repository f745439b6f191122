"""Image files on the command line: where outputs go (checked before any work), writing them, and fitting
input images and masks to the model's VQ factor."""

from __future__ import annotations

import os
from pathlib import Path

import torch
import torch.nn.functional as F
from PIL import Image

from ..limits import MAX_TOKENS_PER_SIDE, nearest_multiple
from ..output import atomic_output
from .arguments import UsageError


def plan_outputs(output: Path, count: int, overwrite: bool) -> list[Path]:
    """The files ``count`` images will be written to, checked now so no sampling work is wasted."""
    extension = output.suffix.lower()
    if Image.registered_extensions().get(extension) not in Image.SAVE:
        raise UsageError(f"-o {output}: unknown image type {extension or '(no extension)'!r}; use .png, .jpg or .webp.")
    paths = [output] + [output.with_name(f"{output.stem}_{k}{output.suffix}") for k in range(1, count)]
    for path in paths:
        if path.is_dir():
            raise UsageError(f"-o {path} is a folder: give a file name such as {path / 'out.png'}.")
        if path.exists() and not overwrite:
            raise UsageError(f"{path} already exists: choose another -o, or pass --overwrite to replace it.")
    ancestor = next(parent for parent in output.absolute().parents if parent.exists())
    if not ancestor.is_dir() or not os.access(ancestor, os.W_OK):
        raise UsageError(f"cannot write to {output.parent}: {ancestor} is not a writable folder.")
    return paths


def save_images(images: torch.Tensor, paths: list[Path], notes: list[str], overwrite: bool) -> None:
    """``images`` ``[N, 3, H, W]`` in [0, 1], each written whole or not at all (muse_core.output)."""
    for image, path, note in zip(images, paths, notes):
        pixels = (image.float().clamp(0, 1) * 255).round().byte().permute(1, 2, 0).cpu().numpy()
        with atomic_output(path, overwrite) as temporary:
            Image.fromarray(pixels).save(temporary, format=Image.registered_extensions()[path.suffix.lower()])
        print(f"wrote {path} ({note})")


def mask_from_alpha(path: Path, alpha: torch.Tensor | None) -> torch.Tensor:
    """ComfyUI LoadImage's convention: transparent pixels are the area to regenerate."""
    if alpha is None:
        raise UsageError(f"no --mask given and {path} has no alpha channel: pass --mask MASK (white = regenerate), "
                         "or an RGBA image whose transparent pixels mark the area.")
    return 1 - alpha


def check_mask(mask: torch.Tensor, mask_name: str, image: torch.Tensor, image_path: Path) -> None:
    height, width = image.shape[-2:]
    if mask.shape != (height, width):
        raise UsageError(f"the mask {mask_name} is {mask.shape[1]}x{mask.shape[0]} but {image_path} is "
                         f"{width}x{height}: resize the mask to {width}x{height}.")
    if not (mask >= 0.5).any():
        raise UsageError(f"the mask {mask_name} marks nothing to regenerate: paint that area white "
                         "(or transparent in an RGBA image).")


def check_size(width: int, height: int, factor: int, what: str, advice: str = "") -> None:
    """Refuse sizes the VQ cannot tokenize, naming the nearest valid one."""
    if width % factor or height % factor:
        raise UsageError(f"{what} is {width}x{height}, not a multiple of the model's VQ factor {factor}: use "
                         f"{nearest_multiple(width, factor)}x{nearest_multiple(height, factor)}{advice}.")
    largest = MAX_TOKENS_PER_SIDE * factor
    if max(width, height) > largest:
        raise UsageError(f"{what} is {width}x{height}; this model allows at most {largest} pixels per side.")


def fit_to_factor(image: torch.Tensor, factor: int, resize: bool, what: str) -> torch.Tensor:
    """``image`` (``[1, C, H, W]``), resized to the nearest multiple of ``factor`` when ``resize`` allows it."""
    height, width = image.shape[-2:]
    if resize and (height % factor or width % factor):
        size = [nearest_multiple(side, factor) for side in (height, width)]
        image = F.interpolate(image, size=size, mode="bicubic", antialias=True).clamp(0, 1)
        height, width = size
    check_size(width, height, factor, what, advice=" (--resize does it)")
    return image
