"""A whole aMUSEd-layout folder loads through load_pipeline and computes what diffusers + transformers compute."""

import shutil

import pytest
import torch
from diffusers import VQModel

from muse_core import CheckpointError, load_pipeline, save_model
from muse_core.editing.maskfree import PAPER_SETTINGS
from muse_core.pipeline import read_sampling_defaults

from .helpers import CLIP_LENGTH, PIPE_UVIT, TINY_UVIT, TINY_VQ, tiny_super_res, uvit_inputs
from .reference import clip_reference, randomize_


def test_pipeline_folder_matches_reference(amused_folder):
    folder, transformer, clip_model, tokenizer = amused_folder
    pipe = load_pipeline(folder)
    prompts = ["a cat", ""]
    cond = pipe.text_encoder.encode(prompts)
    hidden, pooled = clip_reference(clip_model, tokenizer, prompts)
    ids, _, _, micro = uvit_inputs(PIPE_UVIT)
    with torch.no_grad():
        ours = pipe.transformer(ids, cond.hidden_states, cond.pooled, micro, cond.attention_mask)
        theirs = transformer(ids, hidden, pooled, micro)
    assert cond.hidden_states.shape[1] == CLIP_LENGTH
    assert (ours - theirs).abs().max() <= 1e-5
    assert pipe.vq.codebook_size == TINY_UVIT["codebook_size"] and pipe.super_res is None
    assert pipe.vq.dtype == torch.float32


def test_single_file_components_and_dtypes(amused_folder):
    folder, *_ = amused_folder
    pipe = load_pipeline(folder, dtype=torch.bfloat16)
    assert pipe.transformer.dtype == torch.bfloat16 and pipe.vq.dtype == torch.float32
    save_model(pipe.transformer, folder / "transformer.safetensors")
    shutil.rmtree(folder / "transformer")
    again = load_pipeline(folder)
    assert again.transformer.config == pipe.transformer.config


def test_mismatched_codebooks_are_refused(amused_folder):
    folder, *_ = amused_folder
    shutil.rmtree(folder / "vqvae")
    randomize_(VQModel(**{**TINY_VQ, "num_vq_embeddings": 48})).save_pretrained(folder / "vqvae")
    with pytest.raises(CheckpointError, match="predicts 32 codes but vqvae has a codebook of 48"):
        load_pipeline(folder)


def test_missing_component_is_named(amused_folder):
    folder, *_ = amused_folder
    shutil.rmtree(folder / "vqvae")
    with pytest.raises(CheckpointError, match="no vqvae/ folder or vqvae.safetensors"):
        load_pipeline(folder)


def test_sampling_json_sets_the_models_recommended_settings(amused_folder):
    folder, *_ = amused_folder
    assert load_pipeline(folder).sampling_options().guidance_scale == 10.0  # no file: aMUSEd's defaults
    (folder / "sampling.json").write_text('{"guidance_scale": 3.0, "temperature": [0.5, 0.0]}')
    pipe = load_pipeline(folder)
    options = pipe.sampling_options(steps=4, guidance_scale=None)
    assert (options.steps, options.guidance_scale, options.temperature) == (4, 3.0, (0.5, 0.0))
    assert pipe.sampling_options(guidance_scale=1.0).guidance_scale == 1.0  # a given value wins


def test_sampling_json_super_res_section_applies_to_that_stage_only(amused_folder):
    folder, *_ = amused_folder
    (folder / "sampling.json").write_text('{"guidance_scale": 3.0, "steps": 24, "super_res": {"guidance_scale": 1.0}}')
    assert read_sampling_defaults(folder) == {"guidance_scale": 3.0, "steps": 24}
    assert read_sampling_defaults(folder, "super_res") == {"guidance_scale": 1.0, "steps": 24}
    save_model(tiny_super_res(uvit={**PIPE_UVIT, "sample_size": 16}), folder / "super_res.safetensors")
    pipe = load_pipeline(folder)
    assert pipe.sampling_options().guidance_scale == 3.0
    assert pipe.super_res_sampling_options().guidance_scale == 1.0
    assert pipe.super_res_sampling_options(guidance_scale=2.0).guidance_scale == 2.0  # a given value wins


def test_sampling_json_mask_free_section_gives_the_editing_defaults(amused_folder):
    folder, *_ = amused_folder
    assert load_pipeline(folder).mask_free_settings() == PAPER_SETTINGS  # no file: the paper's
    (folder / "sampling.json").write_text('{"guidance_scale": 3.0, "mask_free": {"guidance_scale": 2.0, "top_k": 1}}')
    assert read_sampling_defaults(folder) == {"guidance_scale": 3.0}  # the section is not a sampler setting
    pipe = load_pipeline(folder)
    assert pipe.mask_free_settings() == PAPER_SETTINGS | {"guidance_scale": 2.0, "top_k": 1}
    assert pipe.mask_free_settings(top_k=5, iterations=None)["top_k"] == 5  # a given value wins, None does not
    with pytest.raises(ValueError, match=r"unknown mask-free settings \['steps'\]"):
        pipe.mask_free_settings(steps=3)


@pytest.mark.parametrize("content, message", [
    ('{"mask_free": {"steps": 3}}', r"mask_free: unknown mask-free settings \['steps'\]"),
    ('{"mask_free": {"top_k": 0}}', "mask_free: top_k must be an integer from 1"),
    ('{"mask_free": {"fraction": 2}}', "mask_free: fraction must be"),
    ('{"mask_free": []}', '"mask_free" must be an object'),
    ('{"guidance": 3}', r"unknown settings \['guidance'\]"),
    ('{"super_res": {"guidance": 1}}', r"super_res: unknown settings \['guidance'\]"),
    ('{"super_res": 1}', '"super_res" must be an object'),
    ('{"super_res": {"steps": 0}}', "steps must be from 1 to 1000"),
    ('{"steps": 0}', "steps must be from 1 to 1000"),
    ("[3]", "JSON object"),
    ("{oops", "Expecting property name"),
])
def test_bad_sampling_json_is_named(amused_folder, content, message):
    folder, *_ = amused_folder
    (folder / "sampling.json").write_text(content)
    with pytest.raises(CheckpointError, match=rf"sampling\.json: .*{message}.*Fix or delete"):
        load_pipeline(folder)
