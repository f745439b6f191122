"""A programmatic checker for the shapes domain: does an image show exactly what a scene describes?

detect: the background is the most frequent nearest-palette colour. Object pixels are those nearer
to a shape colour than to the measured background (at a blurred edge: the half-covered boundary),
split into 4-connected components; tiny ones (noise) are dropped. Each component takes its majority
colour ("unknown" when far from the palette) and the shape whose template, placed by matching the
component's centroid and spread, overlaps it best (IoU). Tolerant to blur and noise (a VQ's output).

check: the detected objects must be exactly the scene's multiset of (colour, shape); the relation is
judged by centroids, sizes ("small"/"large") by box sides, and the background only when mentioned.
"""

from __future__ import annotations

import dataclasses
import functools
from collections import Counter

import numpy as np
import torch

from ..data.shapes import PALETTE, SHAPE_COLOURS, Scene

COLOUR_NAMES = list(PALETTE)
PALETTE_RGB = np.array([PALETTE[name] for name in COLOUR_NAMES], dtype=np.float32)
MAX_COLOUR_DISTANCE = 64.0  # an object's typical RGB distance to its colour; palette colours are >= 95 apart
MIN_OBJECT_AREA = 0.006  # share of the image; the smallest shape covers ~0.02 (a 0.2-wide triangle)
RELATION_MARGIN = 0.05  # centroids must differ by this much (share of the image side) along the axis
SIZE_RATIO = 1.2  # a "large" object's box side must be this much bigger than the "small" one's


@dataclasses.dataclass
class DetectedObject:
    colour: str
    shape: str
    cx: float  # centroid, in [0, 1]
    cy: float
    area: float  # share of the image
    size: float  # side of the best-fitting shape's box, as a share of the image side (as Shape.size)


@dataclasses.dataclass
class Detection:
    background: str
    objects: list[DetectedObject]


@dataclasses.dataclass
class CheckResult:
    passed: bool
    aspects: dict[str, bool]  # e.g. count, colours, shapes, objects, position, sizes, background


def as_rgb255(image) -> np.ndarray:
    """uint8 or float [0, 1] [H, W, 3] array or tensor -> float32 [H, W, 3] in 0..255."""
    if isinstance(image, torch.Tensor):
        image = image.detach().cpu()
        image = image.numpy() if image.dtype == torch.uint8 else image.float().numpy()
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[-1] != 3:
        hint = " (channels-first? use image.permute(1, 2, 0))" if image.ndim == 3 and image.shape[0] == 3 else ""
        raise ValueError(f"image must be [H, W, 3]; got shape {list(image.shape)}{hint}.")
    if image.dtype == np.uint8:
        return image.astype(np.float32)
    if not np.issubdtype(image.dtype, np.floating):
        raise ValueError(f"image must be uint8 (0..255) or float (0..1); got dtype {image.dtype}.")
    return image.astype(np.float32) * 255.0


def nearest_colours(rgb: np.ndarray, palette: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For each pixel of [H, W, 3]: index of the nearest ``palette`` row [H, W] and the distance to it."""
    # Each distinct colour once: flat renders have a few hundred, against 16k pixels at 128 px.
    quantised = np.clip(np.rint(rgb), 0, 255).astype(np.int32)
    codes = (quantised[..., 0] << 16) | (quantised[..., 1] << 8) | quantised[..., 2]
    unique, inverse = np.unique(codes, return_inverse=True)
    colours = np.stack([unique >> 16, (unique >> 8) & 255, unique & 255], axis=-1).astype(np.float32)
    distances = np.linalg.norm(colours[:, None, :] - palette, axis=-1)
    nearest = distances.argmin(axis=-1)
    return nearest[inverse].reshape(codes.shape), distances.min(axis=-1)[inverse].reshape(codes.shape)


def connected_components(mask: np.ndarray) -> np.ndarray:
    """4-connected components of a bool [H, W] mask: [H, W] labels (-1 outside the mask).

    Min-label propagation with pointer jumping (a label is the flat index of a pixel of the same
    component, so labels[labels] follows it), which converges in few iterations.
    """
    height, width = mask.shape
    outside = height * width
    labels = np.where(mask, np.arange(outside).reshape(height, width), outside)
    while True:
        updated = labels.copy()
        np.minimum(updated[1:], labels[:-1], out=updated[1:])  # from the pixel above
        np.minimum(updated[:-1], labels[1:], out=updated[:-1])  # below
        np.minimum(updated[:, 1:], labels[:, :-1], out=updated[:, 1:])  # left
        np.minimum(updated[:, :-1], labels[:, 1:], out=updated[:, :-1])  # right
        updated[~mask] = outside
        flat = np.append(updated.ravel(), outside)
        updated = flat[flat[:-1]].reshape(height, width)  # pointer jumping
        if np.array_equal(updated, labels):
            return np.where(mask, labels, -1)
        labels = updated


# Ideal shapes in a unit box (u right, v down); triangles in any of 4 orientations.
SHAPE_TEMPLATES = {
    "circle": [lambda u, v: (u - 0.5) ** 2 + (v - 0.5) ** 2 <= 0.25],
    "square": [lambda u, v: (u >= 0) & (u <= 1) & (v >= 0) & (v <= 1)],
    "triangle": [
        lambda u, v: (np.abs(u - 0.5) <= v / 2) & (v <= 1),  # apex up, as rendered
        lambda u, v: (np.abs(u - 0.5) <= (1 - v) / 2) & (v >= 0),
        lambda u, v: (np.abs(v - 0.5) <= u / 2) & (u <= 1),
        lambda u, v: (np.abs(v - 0.5) <= (1 - u) / 2) & (u >= 0),
    ],
}


@functools.cache
def template_moments(kind: str, index: int) -> tuple[float, float, float, float]:
    """Centroid and standard deviation (u, v) of a template in its unit box."""
    grid = (np.arange(400) + 0.5) / 400
    v, u = np.nonzero(SHAPE_TEMPLATES[kind][index](grid[None, :], grid[:, None]))
    u, v = grid[u], grid[v]
    return u.mean(), v.mean(), u.std(), v.std()


def fit_shape(rows: np.ndarray, cols: np.ndarray) -> tuple[str, float]:
    """The shape kind that best overlaps (IoU) a component, and the side of its box in pixels.

    Each template is placed by matching the component's centroid and spread (first and second
    moments), not its extreme pixels, so a few stray pixels on a noisy edge do not move it.
    """
    centre_x, centre_y = cols.mean() + 0.5, rows.mean() + 0.5
    # + 1/12: the variance of a uniform pixel, so the discrete spread matches the continuous one
    spread_x, spread_y = np.sqrt(cols.var() + 1 / 12), np.sqrt(rows.var() + 1 / 12)
    best = ("", -1.0, 0.0)
    for kind, templates in SHAPE_TEMPLATES.items():
        for index, template in enumerate(templates):
            mean_u, mean_v, sd_u, sd_v = template_moments(kind, index)
            width, height = spread_x / sd_u, spread_y / sd_v
            left, top = centre_x - mean_u * width, centre_y - mean_v * height
            x0, y0 = int(min(np.floor(left), cols.min())), int(min(np.floor(top), rows.min()))
            x1, y1 = int(max(np.ceil(left + width), cols.max() + 1)), int(max(np.ceil(top + height), rows.max() + 1))
            xs, ys = np.arange(x0, x1) + 0.5, np.arange(y0, y1) + 0.5
            ideal = template((xs[None, :] - left) / width, (ys[:, None] - top) / height)
            found = np.zeros_like(ideal)
            found[rows - y0, cols - x0] = True
            iou = (ideal & found).sum() / (ideal | found).sum()
            if iou > best[1]:
                best = (kind, iou, float(np.sqrt(width * height)))
    return best[0], best[2]


def detect(image) -> Detection:
    """Background colour and objects (colour, shape, centroid, area, size) of an [H, W, 3] image."""
    rgb = as_rgb255(image)
    height, width = rgb.shape[:2]
    labels, _ = nearest_colours(rgb, PALETTE_RGB)
    background = int(np.bincount(labels.ravel()).argmax())
    background_rgb = np.median(rgb[labels == background], axis=0)
    # Object pixels are nearer to a shape colour than to the measured background: at a blurred edge
    # that is the half-covered boundary, so a blurred square keeps its corners.
    candidates = [i for i, name in enumerate(COLOUR_NAMES) if name in SHAPE_COLOURS and i != background]
    colour_index, colour_distance = nearest_colours(rgb, PALETTE_RGB[candidates])
    is_object = colour_distance < np.linalg.norm(rgb - background_rgb, axis=-1)
    components = connected_components(is_object)
    sizes = np.bincount(components[components >= 0], minlength=1)
    objects = []
    for component_id in np.nonzero(sizes >= MIN_OBJECT_AREA * height * width)[0]:
        rows, cols = np.nonzero(components == component_id)
        majority = np.bincount(colour_index[rows, cols]).argmax()
        inside_colour = colour_index[rows, cols] == majority
        # Interior pixels far from every palette colour: a colour the domain does not have.
        off_palette = np.median(colour_distance[rows, cols][inside_colour]) > MAX_COLOUR_DISTANCE
        kind, side = fit_shape(rows, cols)
        objects.append(DetectedObject(
            colour="unknown" if off_palette else COLOUR_NAMES[candidates[majority]],
            shape=kind,
            cx=float((cols.mean() + 0.5) / width),
            cy=float((rows.mean() + 0.5) / height),
            area=float(len(rows) / (height * width)),
            size=float(side / np.sqrt(height * width)),
        ))
    objects.sort(key=lambda o: (o.cy, o.cx))
    return Detection(COLOUR_NAMES[background], objects)


def find(objects: list[DetectedObject], colour: str, shape: str) -> DetectedObject | None:
    """The only detected object of that colour and shape, or None (absent or ambiguous)."""
    matches = [o for o in objects if (o.colour, o.shape) == (colour, shape)]
    return matches[0] if len(matches) == 1 else None


def relation_holds(first: DetectedObject, second: DetectedObject, relation: str) -> bool:
    """``first <relation> second`` by centroids: the right side by a margin, and mostly along that axis."""
    dx, dy = first.cx - second.cx, first.cy - second.cy
    along, across = {"left of": (-dx, dy), "right of": (dx, dy), "above": (-dy, dx), "below": (dy, dx)}[relation]
    return along >= RELATION_MARGIN and along > abs(across)


def check(image, scene: Scene, detection: Detection | None = None) -> CheckResult:
    """Whether ``image`` shows ``scene``; ``passed`` is the AND of every applicable aspect.

    ``detection`` may be given to reuse one ``detect(image)`` for several checks.
    """
    found = detection or detect(image)
    wanted = [(s.colour, s.kind) for s in scene.shapes]
    got = [(o.colour, o.shape) for o in found.objects]
    aspects = {
        "count": len(got) == len(wanted),
        "colours": Counter(c for c, _ in got) == Counter(c for c, _ in wanted),
        "shapes": Counter(k for _, k in got) == Counter(k for _, k in wanted),
        "objects": Counter(got) == Counter(wanted),
    }
    if scene.relation is not None or scene.sizes_mentioned:
        first, second = (find(found.objects, *pair) for pair in wanted[:2])
        both = first is not None and second is not None
        if scene.relation is not None:
            aspects["position"] = both and relation_holds(first, second, scene.relation)
        if scene.sizes_mentioned:
            small, large = (first, second) if scene.shapes[0].size < scene.shapes[1].size else (second, first)
            aspects["sizes"] = both and large.size >= SIZE_RATIO * small.size
    if scene.background_mentioned:
        aspects["background"] = found.background == scene.background
    return CheckResult(all(aspects.values()), aspects)
