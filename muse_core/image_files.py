"""Reading image and mask files: ``[C, H, W]`` float tensors in [0, 1], checked before any model loads.

The size is read from the file's header and checked before its pixels are decoded, so an absurd image is
refused at once instead of after seconds and gigabytes. 16-bit images (Pillow modes ``I;16`` and ``I``)
are scaled from 0..65535; a plain ``convert("RGB")`` would clip them to white.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps

from .limits import MAX_PIXELS_PER_SIDE

SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")  # Pillow's modes for 16-bit greyscale files


class ImageFileError(ValueError):
    """An image file that cannot be used; the message names the file and the fix."""


def open_image(path: Path) -> Image.Image:
    """The decoded image in the orientation the user sees (EXIF rotation applied)."""
    if path.is_dir():
        raise ImageFileError(f"{path} is a folder, not an image file: give the path of a .png, .jpg or .webp file.")
    if not path.is_file():
        raise ImageFileError(f"{path}: no such image file.")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # check_image_size refuses those sizes
            image = Image.open(path)  # reads the header only
            check_image_size(path, *image.size)
            image.load()
    except Image.DecompressionBombError:  # Pillow refuses to even open it
        raise ImageFileError(f"{path}: the image is too large to be used (over {Image.MAX_IMAGE_PIXELS} pixels); "
                             f"at most {MAX_PIXELS_PER_SIDE} pixels per side can be tokenized: shrink it.") from None
    except OSError as error:  # PIL.UnidentifiedImageError and truncated files included
        raise ImageFileError(f"{path}: cannot read it as an image ({error}).") from None
    return ImageOps.exif_transpose(image)


def check_image_size(path: Path, width: int, height: int) -> None:
    if max(width, height) > MAX_PIXELS_PER_SIDE:
        raise ImageFileError(f"{path} is {width}x{height}; no model tokenizes more than {MAX_PIXELS_PER_SIDE} pixels "
                             "per side: shrink or crop it first.")


def to_tensor(image: Image.Image, mode: str) -> torch.Tensor:
    """A Pillow image -> ``[C, H, W]`` float32 in [0, 1], in ``mode`` ("RGB", "RGBA", "L" or "LA")."""
    if image.mode in SIXTEEN_BIT_MODES:
        grey = np.asarray(image, dtype=np.float32) / 65535
        alpha = np.ones_like(grey)
        bands = {"RGB": [grey] * 3, "RGBA": [grey] * 3 + [alpha], "L": [grey], "LA": [grey, alpha]}[mode]
        return torch.from_numpy(np.stack(bands)).clamp(0, 1)
    array = np.asarray(image.convert(mode), dtype=np.float32) / 255
    return torch.from_numpy(array.reshape(*array.shape[:2], -1)).permute(2, 0, 1)


def has_alpha(image: Image.Image) -> bool:
    return "A" in image.getbands() or "transparency" in image.info


def read_image(path: Path) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``[1, 3, H, W]`` RGB in [0, 1], and the ``[H, W]`` alpha channel when the image has one."""
    image = open_image(path)
    alpha = to_tensor(image, "RGBA")[3] if has_alpha(image) else None
    return to_tensor(image, "RGB")[None], alpha


def read_mask(path: Path) -> torch.Tensor:
    """``[H, W]`` in [0, 1], 1 = regenerate: white, and opaque when the mask has an alpha channel."""
    image = open_image(path)
    if has_alpha(image):
        luminance, alpha = to_tensor(image, "LA")
        return luminance * alpha
    return to_tensor(image, "L")[0]
