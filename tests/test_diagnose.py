"""`muse eval --diagnose`: boundary tokens of renders, boundary accuracy and boundary infill."""

import json

import pytest
import torch

from muse_core import cli, load_pipeline
from muse_core.data.shapes import Scene, Shape, eval_scenes, grid_twin
from muse_core.eval.diagnose import diagnose
from muse_core.eval.run import rendered
from muse_core.pipeline import DEFAULT_MODEL_DIR
from muse_core.training.vq import boundary_patches


def test_boundary_tokens_are_the_patches_an_edge_crosses():
    # A square whose box lies on the 4-px grid (pixels 16..31) has no boundary token; shifted by 2 px, its edges
    # cut through a ring of tokens: 4 columns x 2 rows of edge tokens on each side, around a 3x3 flat inside.
    aligned = Scene("white", False, [Shape("square", "red", 0.375, 0.375, 0.25)], "single")
    shifted = Scene("white", False, [Shape("square", "red", 0.40625, 0.40625, 0.25)], "single")
    images = rendered([aligned, shifted], 64)
    boundary = boundary_patches(images, 4, levels=256)
    assert boundary.shape == (2, 16, 16)
    assert not boundary[0].any()
    expected = torch.zeros(16, 16, dtype=torch.bool)
    expected[4:9, 4:9] = True
    expected[5:8, 5:8] = False  # tokens 5..7 lie wholly inside pixels 18..33
    assert torch.equal(boundary[1], expected)


@pytest.mark.parametrize("placement", ["aligned", "slots"])
def test_grid_twins_keep_the_caption_on_the_grid(placement):
    for scene in [s for s in eval_scenes(40) if s.category == "single"]:
        twin = grid_twin(scene, placement)
        assert twin.caption == scene.caption and twin == grid_twin(scene, placement)  # seeded
        assert all(float(edge * 16).is_integer() for edge in twin.shapes[0].box())


def test_diagnose_the_embedded_model():
    pipe = load_pipeline(DEFAULT_MODEL_DIR, dtype=torch.float32)
    scenes = [scene for scene in eval_scenes(16) if scene.category == "single"]
    diagnosis = diagnose(pipe, scenes, batch_size=2)
    assert diagnosis.scenes == 4
    truth = rendered(scenes, pipe.native_size)
    assert diagnosis.boundary_share == boundary_patches(truth, 4, levels=256).float().mean().item()
    assert diagnosis.reconstruction_passed == 1.0  # the shipped VQ reconstructs these four
    # a trained model: most masked tokens right (flat background), boundaries far harder
    assert diagnosis.token_accuracy > 0.6 and diagnosis.boundary_accuracy < diagnosis.token_accuracy
    assert 0 <= diagnosis.infill_passed <= 1
    assert "boundary infill" in diagnosis.format()


def test_eval_diagnose_command(tmp_path, capsys):
    out = tmp_path / "diagnosis.json"
    code = cli.main(["eval", "--diagnose", "--limit", "1", "--quiet", "--json", str(out)])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "free shapes. Boundary diagnosis: 1 held-out scenes" in captured.out
    assert "aligned shapes. Boundary diagnosis: 1 held-out scenes" in captured.out
    assert "slots shapes. Boundary diagnosis: 1 held-out scenes" in captured.out
    values = json.loads(out.read_text())
    assert values["free"]["scenes"] == values["aligned"]["scenes"] == values["slots"]["scenes"] == 1
    assert 0 <= values["aligned"]["boundary_accuracy"] <= 1
