"""Opt-in torch.compile of the transformers' per-step forward (``MuseModel.compile_steps``, ``--compile``)."""

import pytest
import torch

from muse_core import cli
from muse_core.models.base import MuseModel
from muse_core.pipeline import DEFAULT_MODEL_DIR, load_pipeline
from muse_core.sampling import generate


def test_compile_steps_wraps_once():
    pipe = load_pipeline(DEFAULT_MODEL_DIR)
    model = pipe.transformer
    eager = model.forward_with_text
    assert model.compile_steps() is model and model.steps_compiled
    compiled = model.forward_with_text
    assert compiled is not eager
    model.compile_steps()  # a second call (e.g. a second loader run) reuses the compiled code
    assert model.forward_with_text is compiled


def test_cli_compile_compiles_both_transformers(monkeypatch, tmp_path, capsys):
    compiled = []
    monkeypatch.setattr(MuseModel, "compile_steps", lambda self: compiled.append(type(self).__name__) or self)
    code = cli.main(["generate", "a red circle", "--steps", "1", "--sr", "--compile", "--quiet",
                     "-o", str(tmp_path / "out.png")])
    assert code == 0, capsys.readouterr().err
    assert compiled == ["MaskedTokenUViT", "SuperResTransformer"]


@pytest.mark.slow
def test_compiled_steps_give_the_eager_ids():
    """About 100 s on this 2-core CPU, nearly all of it inductor's compilation of the embedded transformer."""
    pipe = load_pipeline(DEFAULT_MODEL_DIR)
    options = pipe.sampling_options(steps=3)

    def run():
        return generate(pipe.transformer, pipe.text_encoder, "two red circles on a blue background", height=64,
                        width=64, downsample_factor=pipe.vq.downsample_factor, num_images_per_prompt=2, options=options)

    eager = run()
    pipe.transformer.compile_steps()
    assert torch.equal(run(), eager)


def test_loader_nodes_compile_when_asked(monkeypatch):
    from .comfy_harness import load_pack  # noqa: PLC0415

    compiled = []
    monkeypatch.setattr(MuseModel, "compile_steps", lambda self: compiled.append(type(self).__name__) or self)
    nodes = load_pack().NODE_CLASS_MAPPINGS
    nodes["MuseModelLoader"]().load("embedded", "auto", "cpu", "auto")  # a workflow saved before the widget
    assert compiled == []
    nodes["MuseModelLoader"]().load("embedded", "auto", "cpu", "auto", compile=True)
    nodes["MuseTransformerLoader"]().load("embedded/transformer.safetensors", "auto", "cpu", "auto", compile=True)
    assert compiled == ["MaskedTokenUViT", "SuperResTransformer", "MaskedTokenUViT"]
    assert "compile" not in nodes["MuseVQLoader"].INPUT_TYPES().get("optional", {})
