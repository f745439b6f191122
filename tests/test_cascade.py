"""`muse train` end to end on the tiny preset: every stage runs, the folder loads and generates."""

import dataclasses
import json
import os

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from muse_core.cli import main
from muse_core.loading import load_model
from muse_core.models.vq import VQTokenizer
from muse_core.pipeline import DEFAULT_MODEL_DIR, load_pipeline
from muse_core.rerank import load_clip_scorer
from muse_core.training.cascade import PRESETS, super_res_config, train_cascade, transformer_config
from muse_core.training.loop import TrainConfig


@pytest.fixture(scope="module")
def tiny_cascade(tmp_path_factory):
    out = tmp_path_factory.mktemp("cascade") / "model"
    assert main(["train", "--preset", "tiny", "-o", str(out), "--quiet"]) == 0
    return out


def test_tiny_cascade_writes_a_complete_model_folder(tiny_cascade):
    names = sorted(p.name for p in tiny_cascade.iterdir())
    assert names == ["reranker", "super_res.safetensors", "super_res_vqvae.safetensors", "text_encoder", "tokenizer",
                     "transformer.safetensors", "vqvae.safetensors"]
    pipe = load_pipeline(tiny_cascade)
    assert pipe.super_res is not None and pipe.super_res_vq is not None
    assert pipe.transformer.codebook_size == pipe.vq.codebook_size
    # the super-res U-ViT needs positions to find the low-res token under each high-res one; the preset
    # gives the base U-ViT its own
    assert pipe.super_res.config.transformer.position_embedding_type == "sincos"
    assert pipe.transformer.config.position_embedding_type == PRESETS["tiny"].base_positions == "sincos"
    # shipped weights are fp16 files; they load as fp32 by default
    assert pipe.transformer.dtype == torch.float32
    scorer = load_clip_scorer(tiny_cascade / "reranker")
    assert scorer.score(torch.rand(2, 3, 16, 16), "a red circle").shape == (2,)


def test_model_files_get_the_users_permissions(tiny_cascade):
    """safetensors' save_file recreates its file readable by the owner only; a model folder that a ComfyUI
    server or a colleague should read must get the user's umask like any file the user writes."""
    umask = os.umask(0)
    os.umask(umask)
    weights = sorted(tiny_cascade.rglob("*.safetensors"))
    assert len(weights) == 6  # base and super-res transformers and VQs, T5, CLIP
    modes = {str(path.relative_to(tiny_cascade)): path.stat().st_mode & 0o777 for path in weights}
    assert modes == dict.fromkeys(modes, 0o666 & ~umask)


def test_shipped_preset_builds_the_embedded_models_architectures():
    """`muse train` (preset shipped) must reproduce the embedded model, so their configs must agree."""
    preset, pipe = PRESETS["shipped"], load_pipeline(DEFAULT_MODEL_DIR)
    grid = preset.base_size // pipe.vq.downsample_factor
    assert pipe.transformer.config == transformer_config(preset, grid, preset.layers, preset.base_positions,
                                                         preset.base_grid_res_blocks)
    assert pipe.super_res.config == super_res_config(preset, preset.sr_size // pipe.super_res_vq.downsample_factor)
    assert pipe.text_encoder.model.config.d_model == preset.text_width
    assert json.loads((DEFAULT_MODEL_DIR / "sampling.json").read_text()) == preset.sampling


def test_generate_with_super_res_and_reranking_from_a_trained_folder(tiny_cascade, tmp_path):
    out = tmp_path / "x.png"
    assert main(["generate", "two red circles", "--model", str(tiny_cascade), "--steps", "2", "--sr", "--rerank", "2",
                 "-o", str(out), "--quiet"]) == 0
    assert Image.open(out).size == (32, 32)  # 16 px base, 2x super-res


def test_training_again_skips_finished_stages(tiny_cascade, capsys):
    before = {p.name: p.stat().st_mtime_ns for p in tiny_cascade.glob("*.safetensors")}
    assert main(["train", "--preset", "tiny", "-o", str(tiny_cascade), "--quiet"]) == 0
    assert {p.name: p.stat().st_mtime_ns for p in tiny_cascade.glob("*.safetensors")} == before


def test_train_refuses_a_missing_data_folder(tmp_path, capsys):
    assert main(["train", "--data", str(tmp_path / "nope"), "-o", str(tmp_path / "m"), "--quiet"]) == 2
    assert "no such folder" in capsys.readouterr().err


def test_a_preset_takes_its_reused_stages_from_the_embedded_model(tmp_path):
    preset = dataclasses.replace(PRESETS["tiny"], reused_stages=("vqvae", "reranker"))
    out = tmp_path / "model"
    train_cascade(out, tmp_path / "work", preset, stages=("vqvae", "reranker"), progress=False)  # generated shapes
    assert sorted(p.name for p in out.iterdir()) == ["reranker", "vqvae.safetensors"]
    assert (out / "vqvae.safetensors").read_bytes() == (DEFAULT_MODEL_DIR / "vqvae.safetensors").read_bytes()
    for file in (DEFAULT_MODEL_DIR / "reranker").iterdir():
        assert (out / "reranker" / file.name).read_bytes() == file.read_bytes()


def test_reused_stages_are_trained_on_a_data_folder(tiny_cascade, tmp_path):
    """The embedded VQs know the shapes only: on the user's own data every stage is trained."""
    preset = dataclasses.replace(PRESETS["tiny"], reused_stages=("vqvae",))
    out = tmp_path / "model"
    train_cascade(out, tmp_path / "work", preset, data_dir=tiny_cascade.with_name("model.work") / "data",
                  stages=("vqvae",), progress=False)
    assert (out / "vqvae.safetensors").read_bytes() != (DEFAULT_MODEL_DIR / "vqvae.safetensors").read_bytes()
    assert load_model(VQTokenizer, out / "vqvae.safetensors").config.num_vq_embeddings == preset.codebook_size


def test_a_warm_restart_continues_the_first_phase_with_a_fresh_optimizer(tmp_path):
    """The restart and inpainting phases start from the weights before them (at a negligible learning rate
    they export the first phase's unchanged, up to the fp16 export) and count their own steps from 0 (their
    own optimizer and schedule)."""
    def frozen_phase(steps):
        return TrainConfig(steps=steps, batch_size=8, warmup_steps=1, lr=1e-30, weight_decay=0.0)

    frozen = dataclasses.replace(PRESETS["tiny"], transformer_restart=frozen_phase(3), transformer_inpaint=frozen_phase(2))
    out, work = tmp_path / "model", tmp_path / "work"
    train_cascade(out, work, frozen, stages=("vqvae", "transformer"), progress=False)
    restart = json.loads((work / "transformer_restart" / "checkpoint" / "trainer.json").read_text())
    assert restart["step"] == 3 and restart["config"]["seed"] == 1  # seed + 1: other batches and masks
    inpaint = json.loads((work / "transformer_inpaint" / "checkpoint" / "trainer.json").read_text())
    assert inpaint["step"] == 2 and inpaint["config"]["seed"] == 2
    assert (work / "objects_16px_4.safetensors").is_file()  # the object boxes it masked
    first_phase = load_file(work / "transformer" / "checkpoint" / "state.safetensors")
    exported = load_file(out / "transformer.safetensors")
    assert exported.keys() == {k.removeprefix("model.model.") for k in first_phase if k.startswith("model.model.")}
    for key, value in exported.items():
        assert torch.equal(value, first_phase[f"model.model.{key}"].to(value.dtype)), key
