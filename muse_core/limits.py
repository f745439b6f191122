"""What the engine accepts: every limit on user input, and the checks that enforce it, in one place.

The API calls these checks before any heavy work; the CLI's argument ranges and the nodes' widget ranges
are built from the same constants, so a value the CLI or a node accepts is one the API accepts.
Each check raises ``ValueError`` with a message that names the field and says what is allowed.
"""

from __future__ import annotations

import math

import torch

MAX_STEPS = 1000  # decoding steps; beyond this a typo is likelier than a wish
MAX_IMAGES = 1000  # images in one call (prompts x num_images_per_prompt, -n, a node's batch)
MAX_EDIT_ITERATIONS = 10_000  # mask-free editing rounds
MAX_TOKENS_PER_SIDE = 256  # 4096 px at f16
MAX_VQ_FACTOR = 16  # the coarsest VQ of the families this pack runs (aMUSEd, Meissonic)
MAX_PIXELS_PER_SIDE = MAX_TOKENS_PER_SIDE * MAX_VQ_FACTOR  # no supported model tokenizes a larger image
# Image k of a batch draws with seed + k; torch generators take seeds below 2**64, so seed + MAX_IMAGES fits.
MAX_SEED = 2**63 - 1
MAX_LORA_STRENGTH = 10.0  # |strength|: LoRAs are used at about -2 to 2; beyond 10 it is a typo, not a wish


def check_number(name: str, value, low: float = -math.inf, high: float = math.inf) -> float:
    """A finite real number in [low, high]; NaN and infinity are refused (NaN compares false with every bound)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}.")
    if not low <= value <= high:
        limits = f"in [{low:g}, {high:g}]" if high < math.inf else f">= {low:g}"
        raise ValueError(f"{name} must be {limits}, got {value}.")
    return value


def check_int(name: str, value, low: int, high: int) -> int:
    """A whole number (not a bool) in [low, high]."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{name} must be a whole number from {low} to {high}, got {value!r}.")
    if not low <= value <= high:
        raise ValueError(f"{name} must be from {low} to {high}, got {value}.")
    return value


def check_seed(seed) -> int:
    return check_int("seed", seed, 0, MAX_SEED)


def check_image_count(count: int, what: str = "num_images_per_prompt") -> int:
    return check_int(what, count, 1, MAX_IMAGES)


def check_text(name: str, text) -> str:
    """A prompt: a string that is valid Unicode (a shell passes undecodable bytes on as lone surrogates,
    which the tokenizers cannot encode)."""
    if not isinstance(text, str):
        raise ValueError(f"{name} must be a string, got {type(text).__name__}.")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as error:
        raise ValueError(f"{name} is not valid UTF-8 text (an undecodable byte at character {error.start}): "
                         "type it again, or set your terminal's encoding to UTF-8.") from None
    return text


# Resampling (bicubic resizing, a decoder's output) overshoots [0, 1] a little; [-1, 1] or 0..255 inputs a lot.
PIXEL_RANGE_SLACK = 0.05


def check_pixels(name: str, values: torch.Tensor) -> torch.Tensor:
    """Images or masks: a non-empty float tensor with values in [0, 1] (up to the slack above) and no NaN.

    NaN is checked on its own: it compares false with every bound, so a range check alone lets it through
    and the model returns NaN pixels.
    """
    if not isinstance(values, torch.Tensor) or not values.is_floating_point():
        kind = f"dtype {values.dtype}" if isinstance(values, torch.Tensor) else type(values).__name__
        raise ValueError(f"{name} must be a float tensor with values in [0, 1], got {kind}.")
    if values.numel() == 0:
        raise ValueError(f"{name} is empty (shape {list(values.shape)}): give at least one image.")
    if torch.isnan(values).any():
        raise ValueError(f"{name}: NaN values found; check the node or code that produced them.")
    low, high = (bound.item() for bound in values.aminmax())
    if low < -PIXEL_RANGE_SLACK or high > 1 + PIXEL_RANGE_SLACK:
        raise ValueError(f"{name} must have values in [0, 1], got values from {low:.4g} to {high:.4g}: map [-1, 1] "
                         "with (x + 1) / 2 and 0..255 with x / 255.")
    return values


def check_image_batch(name: str, images, factor: int, channels: int = 3) -> torch.Tensor:
    """Images for a VQ of factor ``factor``: ``[B, channels, H, W]`` pixels (``check_pixels``), each side a
    multiple of the factor (divisible by it) within MAX_TOKENS_PER_SIDE tokens."""
    if not isinstance(images, torch.Tensor) or images.ndim != 4 or images.shape[1] != channels:
        shape = list(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
        raise ValueError(f"{name} must be shaped [B, {channels}, H, W], got {shape}.")
    check_pixels(name, images)
    height, width = images.shape[-2:]
    if height % factor or width % factor:
        raise ValueError(f"{name}: size {width}x{height} is not a multiple of the VQ factor {factor} (not divisible "
                         f"by {factor}): resize or crop to {nearest_multiple(width, factor)}x"
                         f"{nearest_multiple(height, factor)} first.")
    check_side("the image height", height, factor)
    check_side("the image width", width, factor)
    return images


def check_side(name: str, pixels: int, factor: int) -> int:
    """One side of an image: a positive multiple of the VQ factor, at most MAX_TOKENS_PER_SIDE tokens."""
    if isinstance(pixels, bool) or not isinstance(pixels, int) or pixels < factor or pixels % factor:
        raise ValueError(f"{name}={pixels!r}: image sizes must be positive multiples of the VQ downsampling factor "
                         f"{factor} (nearest: {nearest_multiple(pixels, factor)}).")
    if pixels // factor > MAX_TOKENS_PER_SIDE:
        raise ValueError(f"{name}={pixels} is {pixels // factor} tokens per side; at most {MAX_TOKENS_PER_SIDE} "
                         f"({MAX_TOKENS_PER_SIDE * factor} px with this VQ) are allowed.")
    return pixels


def nearest_multiple(pixels, factor: int) -> int:
    """The multiple of ``factor`` nearest to ``pixels`` (at least ``factor``): the size to suggest or resize to."""
    if isinstance(pixels, bool) or not isinstance(pixels, (int, float)) or not math.isfinite(pixels):
        return factor
    return max(factor, round(pixels / factor) * factor)
