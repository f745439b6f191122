"""The procedural shapes dataset: determinism, the held-out eval set, captions, negatives, files on disk."""

import json
import random
from collections import Counter

import numpy as np
import pytest
from PIL import Image

from muse_core.data.shapes import (
    CATEGORIES,
    EVAL_COUNT,
    GAP,
    MARGIN,
    NEUTRAL_BACKGROUNDS,
    NUMBER_WORDS,
    RELATION_DRIFT,
    RELATION_SEPARATION,
    RELATION_WORDS,
    SHAPE_COLOURS,
    SLOT_JITTER,
    SLOTS,
    TOKEN_GRID,
    Scene,
    eval_scenes,
    held_out_captions,
    negative_scenes,
    render,
    reordered_caption,
    sample_scene,
    training_scenes,
    with_article,
    write_dataset,
)
from muse_core.eval.checker import check

from .helpers import area_downsample


def gap_between(a, b) -> float:
    """Empty space between two shapes' boxes along the axis where they are furthest apart."""
    (ax0, ay0, ax1, ay1), (bx0, by0, bx1, by1) = a.box(), b.box()
    return max(bx0 - ax1, ax0 - bx1, by0 - ay1, ay0 - by1)


def test_same_seed_same_scenes_and_pixels():
    first, again = list(training_scenes(40, seed=3)), list(training_scenes(40, seed=3))
    assert [(s.to_dict(), n) for s, n in first] == [(s.to_dict(), n) for s, n in again]
    assert all(np.array_equal(render(a, 64), render(b, 64)) for (a, _), (b, _) in zip(first, again))
    other = [s.caption for s, _ in training_scenes(40, seed=4)]
    assert other != [s.caption for s, _ in first]


def test_write_dataset_is_byte_identical_and_readable(tmp_path):
    paths = [write_dataset(tmp_path / name, 6, seed=1, size=64) for name in ("a", "b")]
    assert paths[0].read_bytes() == paths[1].read_bytes()
    for name in (f"images/{k:06d}.png" for k in range(6)):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    lines = [json.loads(line) for line in paths[0].read_text().splitlines()]
    assert len(lines) == 6
    for line in lines:
        scene = Scene.from_dict(line["scene"])
        assert scene.caption == line["caption"] and 3 <= len(line["negatives"]) <= 4
        pixels = np.asarray(Image.open(tmp_path / "a" / line["image"]))
        assert pixels.shape == (64, 64, 3) and np.array_equal(pixels, render(scene, 64))


def test_eval_set_is_fixed_balanced_and_unique():
    scenes = eval_scenes()
    assert len(scenes) == EVAL_COUNT >= 200
    assert Counter(s.category for s in scenes) == {c: EVAL_COUNT // 4 for c in CATEGORIES}
    assert len({s.caption for s in scenes}) == len(scenes)
    assert [s.to_dict() for s in eval_scenes(20)] == [s.to_dict() for s in scenes[:20]]
    with pytest.raises(ValueError, match="held-out set has 240 scenes"):
        eval_scenes(EVAL_COUNT + 1)


def test_training_data_never_uses_an_eval_caption():
    held_out = held_out_captions()
    for scene, negatives in training_scenes(3000, seed=0):
        assert scene.caption not in held_out and not held_out.intersection(negatives)


def test_backgrounds_include_shape_colours_no_object_has():
    scenes = eval_scenes() + [s for s, _ in training_scenes(2000, seed=1)]
    for scene in scenes:
        assert scene.background not in {shape.colour for shape in scene.shapes}
    backgrounds = Counter(scene.background for scene in scenes)
    assert set(backgrounds) == set(NEUTRAL_BACKGROUNDS) | set(SHAPE_COLOURS)
    red_on_blue = [s for s in scenes if s.background == "blue" and s.shapes[0].colour == "red" and s.background_mentioned]
    assert red_on_blue and all("on a blue background" in s.caption for s in red_on_blue)


def test_captions_name_every_object():
    for scene in eval_scenes() + [s for s, _ in training_scenes(400, seed=5)]:
        caption = scene.caption
        assert all(f"{shape.colour} {shape.kind}" in caption for shape in scene.shapes), caption
        if scene.category == "counting":
            assert caption.count(NUMBER_WORDS[len(scene.shapes)]) == 1 and f"{scene.shapes[0].kind}s" in caption
            assert len({(s.colour, s.kind, s.size) for s in scene.shapes}) == 1
        else:
            assert len(scene.shapes) == {"single": 1, "pair": 2, "position": 2}[scene.category]
        if scene.relation is not None:
            assert any(f" {words} " in caption for words in RELATION_WORDS[scene.relation]), caption
        assert (f"on {with_article(scene.background)} background" in caption) == scene.background_mentioned
        assert ("small" in caption and "large" in caption) == scene.sizes_mentioned


def test_a_pairs_reordered_caption_names_the_objects_the_other_way_round():
    """A pair's other caption starts with its second object and still describes the same picture (the
    checker passes it); the categories whose order carries meaning have none."""
    scenes = [s for s, _ in training_scenes(200, seed=6, placement="slots")]
    for scene in scenes:
        other = reordered_caption(scene)
        if scene.category != "pair":
            assert other is None
            continue
        first, second = (f"{shape.colour} {shape.kind}" for shape in scene.shapes)
        assert scene.caption.index(first) < scene.caption.index(second)
        assert other.index(second) < other.index(first)
        swapped = scene.replace(shapes=scene.shapes[::-1])
        assert swapped.caption == other and check(render(scene, 64), swapped).passed
    assert sum(scene.category == "pair" for scene in scenes) > 20


def test_negatives_differ_from_the_caption():
    rng = random.Random(0)
    for scene in eval_scenes():
        negatives = [n.caption for n in negative_scenes(scene, rng)]
        assert len(negatives) == 4 and len(set(negatives)) == 4 and scene.caption not in negatives


def test_geometry_is_unambiguous():
    on_grid = [s for placement in ("aligned", "slots") for s, _ in training_scenes(1000, seed=2, placement=placement)]
    for scene in eval_scenes() + [s for s, _ in training_scenes(1000, seed=2)] + on_grid:
        for i, shape in enumerate(scene.shapes):
            x0, y0, x1, y1 = shape.box()
            assert min(x0, y0) >= MARGIN - 1e-3 and max(x1, y1) <= 1 - MARGIN + 1e-3 and shape.size >= 0.2
            assert all(gap_between(shape, other) >= GAP - 1e-3 for other in scene.shapes[i + 1:])
        if scene.relation is not None:
            a, b = scene.shapes
            horizontal = scene.relation in ("left of", "right of")
            along, across = (a.cx - b.cx, a.cy - b.cy) if horizontal else (a.cy - b.cy, a.cx - b.cx)
            sign = -1 if scene.relation in ("left of", "above") else 1
            assert sign * along >= RELATION_SEPARATION - 1e-3 and abs(across) <= RELATION_DRIFT + 1e-3


@pytest.mark.parametrize("placement", ["aligned", "slots"])
def test_shapes_on_the_grid_lie_on_token_boundaries(placement):
    scenes = [s for s, _ in training_scenes(400, seed=7, placement=placement)]
    for scene in scenes:
        for shape in scene.shapes:
            assert all(float(edge * TOKEN_GRID).is_integer() for edge in shape.box()), shape
    # squares' edges are token boundaries: every 4x4 patch of a square-only render at 64 px is one colour
    squares = [s for s in scenes if {shape.kind for shape in s.shapes} == {"square"}]
    assert len(squares) > 50
    for scene in squares:
        patches = render(scene, 64).reshape(16, 4, 16, 4, 3).transpose(0, 2, 1, 3, 4).reshape(256, 16, 3)
        assert (patches == patches[:, :1]).all(), scene.caption
    # the same concepts: every category, count, kind, colour and both size words
    captions = " ".join(s.caption for s in scenes)
    assert {s.category for s in scenes} == set(CATEGORIES) and "small" in captions and "large" in captions
    assert all(word in captions for word in [*SHAPE_COLOURS, *NUMBER_WORDS.values(), "circle", "triangle"])
    assert not held_out_captions() & {s.caption for s in scenes}


def test_slots_put_each_shape_near_its_slot():
    scenes = [s for s, _ in training_scenes(400, seed=5, placement="slots")]
    for scene in scenes:
        vertical = scene.relation in ("above", "below")
        slots = tuple((y, x) for x, y in SLOTS[2]) if vertical else SLOTS[len(scene.shapes)]
        if scene.relation in ("right of", "below"):
            slots = slots[::-1]
        for shape, (x, y) in zip(scene.shapes, slots, strict=True):
            # an edge moves at most SLOT_JITTER cells, plus half a cell for an odd side's centring
            assert max(abs(shape.cx - x), abs(shape.cy - y)) * TOKEN_GRID <= SLOT_JITTER + 0.5, scene
        if scene.relation is not None:  # the first object takes the relation's side
            a, b = scene.shapes
            assert {"left of": a.cx < b.cx, "right of": a.cx > b.cx, "above": a.cy < b.cy,
                    "below": a.cy > b.cy}[scene.relation]
    singles = {(s.shapes[0].cx, s.shapes[0].cy) for s in scenes if s.category == "single"}
    assert 1 < len(singles) <= (2 * SLOT_JITTER + 1) ** 2 * 2  # jittered, not one fixed spot (7-cell boxes: half-cells)


def test_unknown_placement_is_refused_before_anything_is_written(tmp_path):
    with pytest.raises(ValueError, match="unknown placement 'grid'.*free"):
        sample_scene(random.Random(0), "single", "grid")
    with pytest.raises(ValueError, match="unknown placement 'grid'"):
        write_dataset(tmp_path / "data", 4, seed=0, placement="grid")
    assert not (tmp_path / "data").exists()


def test_render_looks_the_same_at_every_resolution():
    for scene in eval_scenes(12):
        small, large = render(scene, 64), render(scene, 128)
        assert small.dtype == np.uint8 and small.shape == (64, 64, 3)
        assert np.abs(area_downsample(large) - small).mean() < 1.0


def test_scene_round_trips_through_json():
    scene = sample_scene(random.Random(1), "position")
    again = Scene.from_dict(json.loads(json.dumps(scene.to_dict())))
    assert again == scene and again.relation in RELATION_WORDS
    with pytest.raises(ValueError, match="unknown category 'colour'"):
        sample_scene(random.Random(1), "colour")
