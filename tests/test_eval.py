"""The shapes checker on ground-truth renders and on wrong scenes; evaluate() end to end on tiny random models."""

import json
import random

import numpy as np
import pytest
import torch
import transformers

from muse_core import load_pipeline
from muse_core.data.shapes import PLACEMENTS, eval_scenes, negative_scenes, object_mask, render, training_scenes
from muse_core.eval.checker import check, detect
from muse_core.eval.run import SETTINGS, evaluate, format_table
from muse_core.pipeline import MusePipeline
from muse_core.rerank import load_clip_scorer

from .helpers import CLIP_LENGTH, PIPE_UVIT, area_downsample, tiny_super_res, write_clip_tokenizer
from .reference import randomize_


def failures(scenes, images) -> list[str]:
    return [f"{scene.caption}: {result.aspects}" for scene, image in zip(scenes, images)
            if not (result := check(image, scene)).passed]


def test_checker_passes_every_eval_render():
    scenes = eval_scenes()
    for size in (64, 128):
        assert failures(scenes, [render(scene, size) for scene in scenes]) == [], f"{size} px"
    downsampled = [area_downsample(render(scene, 128)).astype(np.float32) / 255 for scene in scenes]
    assert failures(scenes, downsampled) == [], "128 px area-downsampled to 64 px"


def test_checker_passes_training_renders():
    for placement in PLACEMENTS:
        scenes = [scene for scene, _ in training_scenes(500, seed=123, placement=placement)]
        assert failures(scenes, [render(scene, 64) for scene in scenes]) == [], placement


def test_checker_reads_what_was_drawn():
    scene = next(s for s in eval_scenes() if s.category == "position")
    image = render(scene, 128)
    found = detect(torch.from_numpy(image).float() / 255)  # a float tensor reads as the uint8 array does
    assert found == detect(image)
    assert found.background == scene.background
    assert sorted((o.colour, o.shape) for o in found.objects) == sorted((s.colour, s.kind) for s in scene.shapes)
    for obj in found.objects:
        shape = next(s for s in scene.shapes if (s.colour, s.kind) == (obj.colour, obj.shape))
        assert abs(obj.cx - shape.cx) < 0.02 and abs(obj.size - shape.size) < 0.03
    with pytest.raises(ValueError, match=r"channels-first\? use image.permute\(1, 2, 0\)"):
        detect(torch.zeros(3, 64, 64))


def test_checker_fails_mismatched_scenes():
    rng = random.Random(0)
    for scene in eval_scenes()[:80]:
        image = render(scene, 64)
        for negative in negative_scenes(scene, rng):
            assert not check(image, negative).passed, f"{scene.caption!r} passed as {negative.caption!r}"
    blank = np.full((64, 64, 3), 255, dtype=np.uint8)
    result = check(blank, eval_scenes(1)[0])
    assert not result.passed and not result.aspects["count"]


@pytest.fixture
def tiny_pipe(amused_folder):
    """A random base model (VQ factor 2) plus a super-res stage that doubles its 8x8 native grid."""
    base = load_pipeline(amused_folder[0])
    super_res = tiny_super_res(uvit={**PIPE_UVIT, "sample_size": 16})
    return MusePipeline(base.transformer, base.vq, base.text_encoder, super_res)


@pytest.fixture
def tiny_scorer(tmp_path):
    text = dict(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                max_position_embeddings=CLIP_LENGTH, bos_token_id=0, eos_token_id=1, pad_token_id=1)
    vision = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, image_size=32,
                  patch_size=8)
    config = transformers.CLIPConfig(text_config=text, vision_config=vision, projection_dim=16)
    randomize_(transformers.CLIPModel(config), std=0.1).save_pretrained(tmp_path / "reranker")
    write_clip_tokenizer(tmp_path / "reranker")
    return load_clip_scorer(tmp_path / "reranker")


def test_evaluate_end_to_end(tiny_pipe, tiny_scorer):
    tiny_pipe.super_res_sampling = {"guidance_scale": 1.5}  # the super-res stage's own recommended guidance
    report = evaluate(tiny_pipe, tiny_scorer, limit=1, best_of=2, edit_iterations=2, progress=False)
    assert [row.key for row in report.rows] == list(SETTINGS)
    for row in report.rows:
        assert not row.note.startswith("skipped"), row
        assert set(row.accuracy) == {"single", "pair", "counting", "position", "overall"}
        assert all(value is None or 0 <= value <= 1 for value in row.accuracy.values()), row
        assert row.accuracy["overall"] is not None and row.prompts >= 1
    rows = {row.key: row for row in report.rows}
    assert rows["steps12"].prompts == 4 and rows["maskfree"].prompts == 1 and rows["inpaint"].prompts == 3
    assert rows["inpaint"].accuracy["single"] is None
    assert rows["inpaint"].extra["changed_pixels_outside_mask"] == 0
    assert 0 <= rows["best_of"].extra["oracle (any of the samples)"] <= 1
    assert rows["super_res"].note == "checked at 32 px; super-res guidance 1.5"
    assert report.guidance_scale == 10.0  # the base rows': aMUSEd's default (this pipeline has no sampling.json)
    (given,) = evaluate(tiny_pipe, settings=["super_res"], limit=1, guidance_scale=2.0, progress=False).rows
    assert given.note == "checked at 32 px; super-res guidance 2"  # a given guidance is every guided row's
    table = format_table(report)
    assert all(row.label in table for row in report.rows) and table.count("\n") == len(SETTINGS) + 3
    json.dumps(report.to_dict())


def test_evaluate_skips_what_the_pipeline_lacks(tiny_pipe):
    base_only = MusePipeline(tiny_pipe.transformer, tiny_pipe.vq, tiny_pipe.text_encoder)
    report = evaluate(base_only, None, settings=["super_res", "best_of"], limit=1, progress=False)
    assert [row.note for row in report.rows] == ["skipped: the pipeline has no super-res stage",
                                                 "skipped: no CLIP reranker given"]
    assert all(value is None for row in report.rows for value in row.accuracy.values())
    with pytest.raises(ValueError, match="unknown evaluation settings \\['steps5'\\]"):
        evaluate(base_only, None, settings=["steps5"])


def test_inpainting_mask_covers_one_object_only():
    scene = next(s for s in eval_scenes() if s.category == "counting" and len(s.shapes) == 4)
    mask = object_mask(scene, 0, 64)
    found = detect(render(scene, 64)).objects
    inside = [bool(mask[int(o.cy * 64), int(o.cx * 64)]) for o in found]
    assert sum(inside) == 1
