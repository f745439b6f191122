"""Malformed configs, files of another model kind and bad dtype arguments give errors that name the
file (or the argument), the problem and the fix."""

from __future__ import annotations

import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from muse_core.loading import CheckpointError, load_model
from muse_core.models.super_res import SuperResTransformer
from muse_core.models.uvit import MaskedTokenUViT
from muse_core.models.vq import VQTokenizer
from muse_core.pipeline import DEFAULT_MODEL_DIR, load_pipeline, load_text_encoder
from muse_core.text import load_clip_encoder, load_t5_encoder

TOKENIZER = DEFAULT_MODEL_DIR / "tokenizer"


@pytest.fixture
def model_copy(tmp_path):
    """A writable copy of the embedded model folder."""
    return shutil.copytree(DEFAULT_MODEL_DIR, tmp_path / "model")


# ---- 7a: malformed JSON configs ----------------------------------------------------------------------

BAD_JSON = [
    ('{"model_type": "t5", "d_model": }', r"not valid JSON \(Expecting value: line 1 column 33"),
    ("[1, 2]", "holds a JSON list, not a JSON object"),
]


@pytest.mark.parametrize("content, problem", BAD_JSON)
def test_malformed_text_encoder_config_names_the_file(model_copy, content, problem):
    config = model_copy / "text_encoder" / "config.json"
    config.write_text(content)
    message = rf"text_encoder[/\\]config\.json: {problem}.*[Ff]ix the file"
    with pytest.raises(CheckpointError, match=message):
        load_text_encoder(model_copy / "text_encoder", tokenizer_path=model_copy / "tokenizer")
    with pytest.raises(CheckpointError, match=message):
        load_t5_encoder(model_copy / "text_encoder", tokenizer_path=model_copy / "tokenizer")
    with pytest.raises(CheckpointError, match=message):
        load_pipeline(model_copy)


def test_undecodable_component_config_names_the_file(tmp_path):
    folder = tmp_path / "vqvae"
    folder.mkdir()
    shutil.copy(DEFAULT_MODEL_DIR / "vqvae.safetensors", folder / "diffusion_pytorch_model.safetensors")
    (folder / "config.json").write_bytes(b"\xff\xfe{}")
    with pytest.raises(CheckpointError, match=r"vqvae[/\\]config\.json: not valid JSON.*[Ff]ix the file"):
        load_model(VQTokenizer, folder)


def test_malformed_shard_index_names_the_file(tmp_path):
    (tmp_path / "diffusion_pytorch_model.safetensors.index.json").write_text("{oops")
    with pytest.raises(CheckpointError, match=r"index\.json: not valid JSON"):
        load_model(VQTokenizer, tmp_path)


# ---- 7b: a file of another model kind ----------------------------------------------------------------

@pytest.fixture(scope="module")
def plain_files(tmp_path_factory):
    """The embedded model's weights as plain safetensors files: no muse_kind metadata, no config beside them."""
    root = tmp_path_factory.mktemp("plain")
    sources = {"vq": "vqvae.safetensors", "uvit": "transformer.safetensors", "super_res": "super_res.safetensors",
               "t5": "text_encoder/model.safetensors", "clip": "reranker/model.safetensors"}
    files = {}
    for kind, name in sources.items():
        files[kind] = root / f"{kind}.safetensors"
        save_file(load_file(DEFAULT_MODEL_DIR / name), str(files[kind]))
    return files


@pytest.mark.parametrize("kind, model_cls, message", [
    ("vq", MaskedTokenUViT, "looks like a VQ tokenizer .*not a U-ViT transformer"),
    ("vq", SuperResTransformer, "looks like a VQ tokenizer .*not a super-res transformer"),
    ("uvit", VQTokenizer, "looks like a U-ViT transformer .*not a VQ tokenizer"),
    ("uvit", SuperResTransformer, "looks like a U-ViT transformer .*not a super-res transformer"),
    ("super_res", MaskedTokenUViT, "looks like a super-res transformer .*not a U-ViT transformer"),
    ("t5", VQTokenizer, "looks like a T5 text encoder .*not a VQ tokenizer"),
    ("clip", MaskedTokenUViT, "looks like a CLIP model .*not a U-ViT transformer"),
])
def test_plain_file_of_another_kind_says_what_it_looks_like(plain_files, kind, model_cls, message):
    with pytest.raises(CheckpointError, match=rf"{kind}\.safetensors: this file {message}"):
        load_model(model_cls, plain_files[kind])


@pytest.mark.parametrize("kind, loader", [("vq", load_t5_encoder), ("uvit", load_clip_encoder),
                                          ("super_res", load_text_encoder)])
def test_text_loaders_say_a_muse_model_file_is_not_a_text_encoder(plain_files, kind, loader):
    with pytest.raises(CheckpointError, match=rf"{kind}\.safetensors: this file looks like a .* not a text encoder"):
        loader(plain_files[kind], tokenizer_path=TOKENIZER)


def test_config_that_cannot_be_inferred_names_the_file(tmp_path, plain_files):
    tensors = load_file(plain_files["uvit"])
    del tensors["embed.embeddings.weight"]
    save_file(tensors, str(tmp_path / "cut.safetensors"))
    message = r"cut\.safetensors: a MaskedTokenUViT config cannot be inferred .*no tensor 'embed\.embeddings\.weight'.*config\.json"
    with pytest.raises(CheckpointError, match=message):
        load_model(MaskedTokenUViT, tmp_path / "cut.safetensors")


def test_plain_files_of_the_right_kind_still_load(plain_files):
    assert load_model(VQTokenizer, plain_files["vq"]).codebook_size > 0
    assert load_t5_encoder(plain_files["t5"], tokenizer_path=TOKENIZER).hidden_size == 192


# ---- 7c: dtype arguments -----------------------------------------------------------------------------

DTYPE_MESSAGE = r"dtype must be torch\.float32, torch\.float16 or torch\.bfloat16 .*None.*got 'nonsense'"


def test_bad_dtype_is_refused_before_any_file_is_read(tmp_path):
    gone = tmp_path / "gone"
    with pytest.raises(ValueError, match=DTYPE_MESSAGE):
        load_model(VQTokenizer, gone, dtype="nonsense")
    with pytest.raises(ValueError, match=DTYPE_MESSAGE):
        load_pipeline(gone, dtype="nonsense")
    for argument in ("text_dtype", "vq_dtype"):
        with pytest.raises(ValueError, match=DTYPE_MESSAGE):
            load_pipeline(gone, **{argument: "nonsense"})
    with pytest.raises(ValueError, match=DTYPE_MESSAGE):
        load_text_encoder(gone, dtype="nonsense")


@pytest.mark.parametrize("loader", [load_t5_encoder, load_text_encoder])
def test_bad_dtype_in_text_encoder_loaders(loader):
    with pytest.raises(ValueError, match=DTYPE_MESSAGE):
        loader(DEFAULT_MODEL_DIR / "text_encoder", tokenizer_path=TOKENIZER, dtype="nonsense")
    with pytest.raises(ValueError, match=r"dtype must be .*got torch\.int8"):
        loader(DEFAULT_MODEL_DIR / "text_encoder", tokenizer_path=TOKENIZER, dtype=torch.int8)


def test_dtype_names_and_none_are_accepted():
    vq = load_model(VQTokenizer, DEFAULT_MODEL_DIR / "vqvae.safetensors", dtype="bf16")
    assert {p.dtype for p in vq.parameters()} == {torch.bfloat16}
    encoder = load_t5_encoder(DEFAULT_MODEL_DIR / "text_encoder", tokenizer_path=TOKENIZER, dtype=None)
    assert encoder.model.shared.weight.dtype == torch.float16  # the file's dtype
