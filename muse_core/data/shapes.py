"""A procedural image domain whose outputs a program can check (GenEval-like): flat-coloured shapes.

A :class:`Scene` holds 1-4 shapes (circle, square, triangle) in 6 colours on a background that is
one of 5 neutral colours or a shape colour no shape of the scene has ("red circles on a blue background"),
in normalised [0, 1] coordinates (y points down), with a caption that names every object, so a
colour-segmentation checker (``muse_core.eval.checker``) can demand an exact match. Categories:

    single     one object                      "a red circle"
    pair       two different objects           "a small purple circle and a large orange square"
    counting   2-4 identical objects           "three yellow triangles on a gray background"
    position   two objects and a relation      "a green triangle to the left of a blue square"

Geometry is chosen so detection is reliable at 64 px even through a 4x4-pixel VQ: shapes are at least
0.2 of the image wide, never touch, and a relation has a clear separation along its axis.

``placement`` (training data only) says where shapes go: ``"free"`` anywhere (the held-out scenes);
``"aligned"`` puts every shape's box on whole cells of a ``TOKEN_GRID`` x
``TOKEN_GRID`` grid, the embedded model's token grid at both its resolutions (4 px at 64 px, 8 px at
128 px). An edge that ends on a token boundary puts no sub-token offset into the tokens: a square is flat
tokens only, and the tokens a circle's or triangle's edge crosses are fixed by its size in cells. With
free positions the boundary tokens carry where within 4x4 pixels each edge passes, which a transformer
cannot know from the rest of the image (docs/evaluation.md, `--diagnose`). ``"slots"`` is aligned and
also puts each box within SLOT_JITTER cells of a fixed slot, in the caption's order (the centre for one
object; left and right halves for two, or top and bottom for "above"/"below"; three in a triangle; four in
the quadrants): with free centres, an all-masked prompt's per-token
marginals spread its objects thinly over the whole image, so confidence sampling commits background
everywhere first and leaves the objects as specks; fixed slots make the first steps sure of where the
objects are. The held-out scenes stay free: the checker reads captions, not positions.
Everything is seeded: the same seed gives the same scenes, captions and bytes.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import math
import random
from pathlib import Path

import numpy as np
from PIL import Image

# Colours far apart in RGB (>= 95 from each other) so nearest-colour segmentation is unambiguous.
SHAPE_COLOURS = {
    "red": (220, 30, 30),
    "green": (30, 170, 50),
    "blue": (30, 70, 220),
    "yellow": (245, 225, 25),
    "purple": (150, 40, 200),
    "orange": (245, 125, 15),
}
# Neutral backgrounds; a scene may also stand on any shape colour that none of its shapes has, so the
# background of an image is never confused with one of its objects.
NEUTRAL_BACKGROUNDS = {
    "white": (255, 255, 255),
    "black": (0, 0, 0),
    "gray": (128, 128, 128),
    "beige": (240, 215, 160),
    "navy": (20, 30, 100),
}
PALETTE = {**SHAPE_COLOURS, **NEUTRAL_BACKGROUNDS}
KINDS = ("circle", "square", "triangle")
CATEGORIES = ("single", "pair", "counting", "position")
RELATIONS = ("left of", "right of", "above", "below")
FLIPPED = {"left of": "right of", "right of": "left of", "above": "below", "below": "above"}
NUMBER_WORDS = {2: "two", 3: "three", 4: "four"}

SMALL_SIZES = (0.20, 0.24)  # "small" and "large" differ by >= 1.4x, so the checker can compare them
LARGE_SIZES = (0.34, 0.40)
PLACEMENTS = ("free", "aligned", "slots")
TOKEN_GRID = 16  # aligned shapes: boxes of whole cells of this grid
# Box sides of aligned shapes, in cells, for each free range of sizes (small and large: 1.5x apart).
ALIGNED_CELLS = {(0.2, 0.45): (4, 5, 6, 7), (0.2, 0.36): (4, 5), (0.2, 0.28): (4,), (0.2, 0.34): (4, 5),
                 SMALL_SIZES: (4,), LARGE_SIZES: (6,)}
# Slot centres by number of objects (x, y in [0, 1]), in the caption's order: the first object named takes the
# first slot. One row per count, so a caption fixes where each object goes (a choice would split the first
# steps' marginals between the options again).
SLOTS = {1: ((0.5, 0.5),), 2: ((0.25, 0.5), (0.75, 0.5)), 3: ((0.25, 0.25), (0.75, 0.25), (0.5, 0.75)),
         4: ((0.25, 0.25), (0.75, 0.25), (0.25, 0.75), (0.75, 0.75))}
SLOT_JITTER = 1  # "slots" placement: a box's edges lie up to this many cells from its slot's
MARGIN = 0.04  # empty border around every shape's box
GAP = 0.07  # empty space between two shapes' boxes: >= 4 px at 64 px, so blurred shapes stay apart
RELATION_SEPARATION = 0.35  # centre distance along a relation's axis ...
RELATION_DRIFT = 0.12  # ... and at most this much across it, so "left of" is never "above"
BACKGROUND_MENTION_RATE = 0.35
SIZE_MENTION_RATE = 0.3
SUPERSAMPLING = 4  # 4x4 samples per pixel: antialiased edges, same look at every resolution

EVAL_SEED = 20240917
EVAL_COUNT = 240  # the held-out evaluation set: 60 prompts per category

# "{A}"/"{B}": objects with article ("a red circle"); "{bare}": without; "{N} {plural}": "three red circles".
TEMPLATES = {
    "single": ("{A}", "an image of {A}", "a single {bare}", "there is {A}"),
    "pair": ("{A} and {B}", "an image of {A} and {B}", "{A} together with {B}", "there is {A} and {B}"),
    "counting": ("{N} {plural}", "an image of {N} {plural}", "exactly {N} {plural}", "there are {N} {plural}"),
    "position": ("{A} {rel} {B}", "an image of {A} {rel} {B}", "there is {A} {rel} {B}", "{A} placed {rel} {B}"),
}
RELATION_WORDS = {
    "left of": ("left of", "to the left of"),
    "right of": ("right of", "to the right of"),
    "above": ("above", "over"),
    "below": ("below", "under"),
}
NEGATIVES_PER_SCENE = 4


@dataclasses.dataclass
class Shape:
    kind: str  # circle | square | triangle (apex up)
    colour: str
    cx: float  # centre of the shape's box, in [0, 1]
    cy: float
    size: float  # box side (circle diameter, square side, triangle base and height), in [0, 1]

    def box(self) -> tuple[float, float, float, float]:
        half = self.size / 2
        return self.cx - half, self.cy - half, self.cx + half, self.cy + half


@dataclasses.dataclass
class Scene:
    background: str
    background_mentioned: bool
    shapes: list[Shape]
    category: str
    relation: str | None = None  # shapes[0] <relation> shapes[1] (position category)
    sizes_mentioned: bool = False  # pair captions may say "small"/"large"
    template: int = 0  # index into TEMPLATES[category]
    caption: str = ""

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> Scene:
        values = dict(values)
        values["shapes"] = [Shape(**shape) for shape in values["shapes"]]
        return cls(**values)

    def replace(self, **changes) -> Scene:
        """A copy with some fields changed and the caption rewritten to match."""
        shapes = [dataclasses.replace(shape) for shape in changes.pop("shapes", self.shapes)]
        scene = dataclasses.replace(self, shapes=shapes, **changes)
        scene.caption = describe(scene)
        return scene


# ---- captions ----


def size_word(shape: Shape) -> str:
    return "small" if shape.size < (SMALL_SIZES[1] + LARGE_SIZES[0]) / 2 else "large"


def with_article(words: str) -> str:
    return ("an " if words[0] in "aeiou" else "a ") + words


def object_words(shape: Shape, sized: bool = False) -> str:
    words = f"{shape.colour} {shape.kind}"
    return f"{size_word(shape)} {words}" if sized else words


def describe(scene: Scene) -> str:
    """The caption of a scene: names every object, the relation, and the background if mentioned."""
    template = TEMPLATES[scene.category][scene.template % len(TEMPLATES[scene.category])]
    first = scene.shapes[0]
    words = dict(A=with_article(object_words(first, scene.sizes_mentioned)), bare=object_words(first))
    if len(scene.shapes) > 1:
        words["B"] = with_article(object_words(scene.shapes[1], scene.sizes_mentioned))
    if scene.category == "counting":
        words.update(N=NUMBER_WORDS[len(scene.shapes)], plural=object_words(first) + "s")
    if scene.relation is not None:
        choices = RELATION_WORDS[scene.relation]
        words["rel"] = choices[scene.template % len(choices)]
    caption = template.format(**words)
    if scene.background_mentioned:
        caption += f" on {with_article(scene.background)} background"
    return caption


def reordered_caption(scene: Scene) -> str | None:
    """The caption of ``scene`` naming its two objects the other way round, for a pair (whose caption's
    order says nothing of the picture); None for the other categories (a relation or a count fixes it)."""
    return scene.replace(shapes=scene.shapes[::-1]).caption if scene.category == "pair" else None


# ---- sampling ----


def object_mask(scene: Scene, index: int, size: int) -> np.ndarray:
    """float32 ``[size, size]``, 1 on a rectangle around object ``index`` (half the gap to other shapes): the
    area inpainting evaluation repaints, and the one inpainting-style training masks."""
    x0, y0, x1, y1 = scene.shapes[index].box()
    pad = GAP / 2
    left, top = max(int((x0 - pad) * size), 0), max(int((y0 - pad) * size), 0)
    right, bottom = min(int((x1 + pad) * size) + 1, size), min(int((y1 + pad) * size) + 1, size)
    mask = np.zeros((size, size), np.float32)
    mask[top:bottom, left:right] = 1
    return mask


def boxes_apart(a: Shape, b: Shape) -> bool:
    ax0, ay0, ax1, ay1 = a.box()
    bx0, by0, bx1, by1 = b.box()
    return ax1 + GAP <= bx0 or bx1 + GAP <= ax0 or ay1 + GAP <= by0 or by1 + GAP <= ay0


def random_size(rng: random.Random, sizes: tuple[float, float], placement: str) -> float:
    """A box side from the range ``sizes``, or for shapes on the grid a whole number of cells (ALIGNED_CELLS)."""
    return rng.uniform(*sizes) if placement == "free" else rng.choice(ALIGNED_CELLS[sizes]) / TOKEN_GRID


def random_centre(rng: random.Random, size: float, placement: str, slot: float = 0.5) -> float:
    """A box centre at least MARGIN from the border; on the grid the box's edges are grid lines, and for
    ``"slots"`` they lie within SLOT_JITTER cells of the box centred on ``slot``."""
    if placement == "free":
        return rng.uniform(MARGIN + size / 2, 1 - MARGIN - size / 2)
    cells, margin = round(size * TOKEN_GRID), math.ceil(MARGIN * TOKEN_GRID)
    low, high = margin, TOKEN_GRID - margin - cells  # the box's first cell
    if placement == "slots":
        first = math.floor(slot * TOKEN_GRID - cells / 2)
        low, high = max(low, first - SLOT_JITTER), min(high, first + SLOT_JITTER)
    return (rng.randint(low, high) + cells / 2) / TOKEN_GRID


def slot_row(count: int, relation: str | None = None) -> tuple[tuple[float, float], ...]:
    """The slot centres for ``count`` shapes, in the shapes' order: SLOTS, or the relation's ("left of": first
    left, second right; "above": first top, second bottom)."""
    if relation is None:
        return SLOTS[count]
    row = SLOTS[2] if relation in ("left of", "right of") else tuple((y, x) for x, y in SLOTS[2])
    return row if relation in ("left of", "above") else row[::-1]


def place(rng: random.Random, shapes: list[Shape], placement: str = "free", relation: str | None = None,
          attempts: int = 100) -> None:
    """Give the shapes random, well-separated positions (in place), one after another."""
    slots = slot_row(len(shapes), relation) if placement == "slots" else [(0.5, 0.5)] * len(shapes)  # unused off slots
    for _ in range(attempts):
        for index, (shape, (x, y)) in enumerate(zip(shapes, slots)):
            for _ in range(attempts):
                shape.cx, shape.cy = random_centre(rng, shape.size, placement, x), random_centre(rng, shape.size, placement, y)
                if all(boxes_apart(shape, other) for other in shapes[:index]):
                    break
            else:
                break  # no room left for this shape: start over
        else:
            return
    raise RuntimeError(f"could not place {len(shapes)} shapes of sizes {[s.size for s in shapes]} apart; "
                       "lower their sizes or GAP.")


def place_related(rng: random.Random, first: Shape, second: Shape, relation: str, placement: str = "free",
                  attempts: int = 500) -> None:
    """Place two shapes so that ``first <relation> second`` holds with a clear margin."""
    horizontal = relation in ("left of", "right of")
    sign = -1 if relation in ("left of", "above") else 1  # first's axis coordinate minus second's
    for _ in range(attempts):
        place(rng, [first, second], placement, relation if placement == "slots" else None)
        along = (first.cx - second.cx) if horizontal else (first.cy - second.cy)
        across = (first.cy - second.cy) if horizontal else (first.cx - second.cx)
        if sign * along >= RELATION_SEPARATION and abs(across) <= RELATION_DRIFT:
            return
    raise RuntimeError(f"could not place two shapes {relation} each other; lower their sizes.")


def two_different_objects(rng: random.Random) -> tuple[tuple[str, str], tuple[str, str]]:
    first = (rng.choice(list(SHAPE_COLOURS)), rng.choice(KINDS))
    while (second := (rng.choice(list(SHAPE_COLOURS)), rng.choice(KINDS))) == first:
        pass
    return first, second


def possible_backgrounds(shapes: list[Shape]) -> list[str]:
    """The neutral colours and every shape colour that none of ``shapes`` has."""
    used = {shape.colour for shape in shapes}
    return [*NEUTRAL_BACKGROUNDS, *(colour for colour in SHAPE_COLOURS if colour not in used)]


def check_placement(placement: str) -> None:
    if placement not in PLACEMENTS:
        raise ValueError(f"unknown placement {placement!r}; choose one of {PLACEMENTS}.")


def sample_scene(rng: random.Random, category: str | None = None, placement: str = "free") -> Scene:
    """A random scene of ``category`` (random category if None), with its caption; ``placement``: where the
    shapes go (module docstring)."""
    category = category or rng.choice(CATEGORIES)
    if category not in CATEGORIES:
        raise ValueError(f"unknown category {category!r}; choose one of {CATEGORIES}.")
    check_placement(placement)
    mentioned = rng.random() < BACKGROUND_MENTION_RATE
    relation, sizes_mentioned = None, False
    if category == "single":
        shapes = [Shape(rng.choice(KINDS), rng.choice(list(SHAPE_COLOURS)), 0, 0, random_size(rng, (0.2, 0.45), placement))]
        place(rng, shapes, placement)
    elif category == "counting":
        count = rng.choice(list(NUMBER_WORDS))
        kind, colour = rng.choice(KINDS), rng.choice(list(SHAPE_COLOURS))
        size = random_size(rng, (0.2, 0.36) if count == 2 else (0.2, 0.28), placement)
        shapes = [Shape(kind, colour, 0, 0, size) for _ in range(count)]
        place(rng, shapes, placement)
    else:
        (colour_a, kind_a), (colour_b, kind_b) = two_different_objects(rng)
        if category == "pair" and rng.random() < SIZE_MENTION_RATE:
            sizes_mentioned = True
            sizes = [random_size(rng, SMALL_SIZES, placement), random_size(rng, LARGE_SIZES, placement)]
            rng.shuffle(sizes)
        else:
            sizes = [random_size(rng, (0.2, 0.34), placement), random_size(rng, (0.2, 0.34), placement)]
        shapes = [Shape(kind_a, colour_a, 0, 0, sizes[0]), Shape(kind_b, colour_b, 0, 0, sizes[1])]
        if category == "position":
            relation = rng.choice(RELATIONS)
            place_related(rng, shapes[0], shapes[1], relation, placement)
        else:
            place(rng, shapes, placement)
    for shape in shapes if placement == "free" else ():  # short JSON, same render (grid ones are exact in binary)
        shape.cx, shape.cy, shape.size = round(shape.cx, 4), round(shape.cy, 4), round(shape.size, 4)
    background = rng.choice(possible_backgrounds(shapes))
    template = rng.randrange(len(TEMPLATES[category]))
    scene = Scene(background, mentioned, shapes, category, relation, sizes_mentioned, template)
    scene.caption = describe(scene)
    return scene


def negative_scenes(scene: Scene, rng: random.Random, count: int = NEGATIVES_PER_SCENE) -> list[Scene]:
    """Up to ``count`` scenes that differ from ``scene`` in one attribute (hard negatives for a reranker).

    Kinds: colour, shape, count, relation direction, colour swap between two objects, size swap,
    background (a different one, or one mentioned where the caption had none). One per kind first,
    in random order, then more of the same kinds. They are meant for their captions and for ``check``:
    their shapes keep the original positions (a changed count stacks copies), so do not render them.
    """
    counting = scene.category == "counting"
    # A counting scene's objects are identical, so they change together; otherwise one object changes.
    object_groups = [list(range(len(scene.shapes)))] if counting else [[i] for i in range(len(scene.shapes))]

    def changed(indices, **fields) -> Scene | None:
        shapes = [dataclasses.replace(s, **fields) if i in indices else s for i, s in enumerate(scene.shapes)]
        if shapes == scene.shapes or (not counting and len({(s.colour, s.kind) for s in shapes}) < len(shapes)):
            return None  # unchanged, or two objects made the same
        return scene.replace(shapes=shapes)

    kinds = {
        "colour": [changed(group, colour=colour) for group in object_groups for colour in SHAPE_COLOURS],
        "shape": [changed(group, kind=kind) for group in object_groups for kind in KINDS],
        "background": [scene.replace(background=background, background_mentioned=True)
                       for background in possible_backgrounds(scene.shapes) if background != scene.background],
    }
    if counting:
        kinds["count"] = [scene.replace(shapes=[scene.shapes[0]] * n) for n in NUMBER_WORDS if n != len(scene.shapes)]
    if scene.relation is not None:
        kinds["relation"] = [scene.replace(relation=FLIPPED[scene.relation])]
    if len(scene.shapes) == 2 and not counting:
        a, b = scene.shapes
        if a.colour != b.colour and a.kind != b.kind:  # else swapping colours gives the same objects
            swapped = [dataclasses.replace(a, colour=b.colour), dataclasses.replace(b, colour=a.colour)]
            kinds["swap"] = [scene.replace(shapes=swapped)]
        if scene.sizes_mentioned:
            resized = [dataclasses.replace(a, size=b.size), dataclasses.replace(b, size=a.size)]
            kinds["size"] = [scene.replace(shapes=resized)]

    groups = [[s for s in group if s is not None] for group in kinds.values()]
    for group in groups:
        rng.shuffle(group)
    rng.shuffle(groups)
    ordered = [group[0] for group in groups if group] + [s for group in groups for s in group[1:]]
    chosen, seen = [], {scene.caption}
    for negative in ordered:
        if negative.caption not in seen and negative.caption not in held_out_captions():
            chosen.append(negative)
            seen.add(negative.caption)
        if len(chosen) == count:
            break
    return chosen


# ---- the fixed evaluation set and training data ----


def eval_scenes(count: int = EVAL_COUNT) -> list[Scene]:
    """The held-out evaluation scenes: fixed seed, categories in turn, unique captions.

    ``eval_scenes(n)`` is the first n of ``eval_scenes()``; training data excludes all of their captions.
    """
    if not 1 <= count <= EVAL_COUNT:
        raise ValueError(f"count={count}: the held-out set has {EVAL_COUNT} scenes (training data excludes "
                         f"only those); ask for 1 to {EVAL_COUNT}.")
    return [Scene.from_dict(values) for values in _eval_scene_dicts()[:count]]


@functools.cache
def _eval_scene_dicts() -> tuple[dict, ...]:
    rng = random.Random(EVAL_SEED)
    scenes, captions = [], set()
    while len(scenes) < EVAL_COUNT:
        scene = sample_scene(rng, CATEGORIES[len(scenes) % len(CATEGORIES)])
        if scene.caption not in captions:
            scenes.append(scene.to_dict())
            captions.add(scene.caption)
    return tuple(scenes)


def grid_twin(scene: Scene, placement: str = "aligned", seed: int = 0, attempts: int = 1_000_000) -> Scene:
    """A scene with ``scene``'s caption whose shapes are placed by ``placement`` (on the token grid): the
    held-out prompts as a model trained on such data draws them (``muse eval --diagnose``). Seeded
    rejection sampling."""
    rng = random.Random(f"{seed}:{scene.caption}")
    for _ in range(attempts):
        twin = sample_scene(rng, scene.category, placement)
        if twin.caption == scene.caption:
            return twin
    raise RuntimeError(f"no {placement} scene found for {scene.caption!r} in {attempts} draws.")


@functools.cache
def held_out_captions() -> frozenset[str]:
    return frozenset(values["caption"] for values in _eval_scene_dicts())


def training_scenes(count: int, seed: int, placement: str = "free"):
    """Yields ``count`` (scene, negative captions) pairs, categories in turn; no caption of the eval set."""
    rng = random.Random(seed)
    for index in range(count):
        scene = sample_scene(rng, CATEGORIES[index % len(CATEGORIES)], placement)
        while scene.caption in held_out_captions():
            scene = sample_scene(rng, scene.category, placement)
        yield scene, [negative.caption for negative in negative_scenes(scene, rng)]


# ---- rendering ----


def inside(kind: str, x: np.ndarray, y: np.ndarray, shape: Shape) -> np.ndarray:
    """Which sample points (normalised coordinates) fall inside the shape."""
    half = shape.size / 2
    dx, dy = x - shape.cx, y - shape.cy
    if kind == "circle":
        return dx**2 + dy**2 <= half**2
    if kind == "square":
        return (np.abs(dx) <= half) & (np.abs(dy) <= half)
    if kind == "triangle":  # apex at the top centre, base along the bottom of the box
        return (np.abs(dx) <= (dy + half) / 2) & (dy <= half)
    raise ValueError(f"unknown shape kind {kind!r}; choose one of {KINDS}.")


def render(scene: Scene, size: int) -> np.ndarray:
    """The scene as a uint8 [size, size, 3] image, antialiased by supersampling (deterministic)."""
    image = np.empty((size, size, 3), dtype=np.float64)
    image[:] = PALETTE[scene.background]
    samples = SUPERSAMPLING
    for shape in scene.shapes:
        x0, y0, x1, y1 = shape.box()
        left, top = max(int(np.floor(x0 * size)), 0), max(int(np.floor(y0 * size)), 0)
        right, bottom = min(int(np.ceil(x1 * size)), size), min(int(np.ceil(y1 * size)), size)
        xs = (np.arange(left * samples, right * samples) + 0.5) / (samples * size)
        ys = (np.arange(top * samples, bottom * samples) + 0.5) / (samples * size)
        hits = inside(shape.kind, xs[None, :], ys[:, None], shape)
        coverage = hits.reshape(bottom - top, samples, right - left, samples).mean(axis=(1, 3))[..., None]
        region = image[top:bottom, left:right]
        region += coverage * (np.array(SHAPE_COLOURS[shape.colour], dtype=np.float64) - region)
    return np.rint(image).astype(np.uint8)


def write_dataset(folder: str | Path, count: int, seed: int, size: int = 128, placement: str = "free") -> Path:
    """Write ``folder/images/000000.png ...`` and ``folder/captions.jsonl``; returns the JSONL path.

    Each line: ``{"image", "caption", "negatives", "scene"}``. Same arguments -> byte-identical files.
    """
    if count < 1:
        raise ValueError(f"count={count}: a dataset needs at least one image.")
    check_placement(placement)
    folder = Path(folder)
    (folder / "images").mkdir(parents=True, exist_ok=True)
    lines = []
    for index, (scene, negatives) in enumerate(training_scenes(count, seed, placement)):
        name = f"images/{index:06d}.png"
        Image.fromarray(render(scene, size)).save(folder / name, compress_level=1)
        lines.append(json.dumps({"image": name, "caption": scene.caption, "negatives": negatives,
                                 "scene": scene.to_dict()}))
    path = folder / "captions.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Write a seeded shapes dataset (PNG images + captions.jsonl).")
    parser.add_argument("out", type=Path, help="output folder")
    parser.add_argument("--count", type=int, default=20000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--size", type=int, default=128, help="image side in pixels")
    parser.add_argument("--placement", choices=PLACEMENTS, default="free",
                        help=f"where shapes go: anywhere, on the {TOKEN_GRID}x{TOKEN_GRID} token grid, or on it near "
                             "fixed slots (module docstring)")
    args = parser.parse_args(argv)
    print(write_dataset(args.out, args.count, args.seed, args.size, args.placement))


if __name__ == "__main__":
    main()
