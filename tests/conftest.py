"""Fixtures shared by several test modules. Their configs and builders are in helpers.py.

diffusers and transformers are test-only references: a fixture that needs one skips its tests without it
(pytest.importorskip), so the modules that need neither still run.
"""

import shutil

import pytest
import torch

from .comfy_harness import load_pack
from .helpers import CLIP_LENGTH, PIPE_UVIT, RERANKER_IMAGE_SIZE, TINY_UVIT, TINY_VQ, write_clip_tokenizer, write_text_encoder_layouts
from .reference import randomize_


@pytest.fixture(scope="module")
def pack():
    """The repository imported as ComfyUI imports a custom-node folder (comfy_harness.load_pack)."""
    return load_pack()


@pytest.fixture(scope="module")
def nodes(pack):
    return pack.NODE_CLASS_MAPPINGS


@pytest.fixture
def tiny_uvit_config():
    return dict(TINY_UVIT)


@pytest.fixture(scope="module")
def clip_text_setup(tmp_path_factory):
    """A tiny CLIPTextModelWithProjection: (reference model, tokenizer, {layout: (path, tokenizer_path)})."""
    transformers = pytest.importorskip("transformers")
    root = tmp_path_factory.mktemp("clip")
    config = transformers.CLIPTextConfig(
        vocab_size=64, hidden_size=128, intermediate_size=256, num_hidden_layers=3, num_attention_heads=2,
        max_position_embeddings=CLIP_LENGTH, projection_dim=48, bos_token_id=0, eos_token_id=1, pad_token_id=1,
    )  # 64-wide heads so the single-file path can infer the head count
    torch.manual_seed(0)
    model = randomize_(transformers.CLIPTextModelWithProjection(config), seed=0, std=0.1).eval()
    tokenizer_dir = write_clip_tokenizer(root / "clip_tokenizer")
    tokenizer = transformers.CLIPTokenizerFast.from_pretrained(str(tokenizer_dir), local_files_only=True)

    state = {k: v.contiguous() for k, v in model.state_dict().items()}  # as in ComfyUI: no config, extra keys
    state["logit_scale"] = torch.tensor(4.6)
    state["text_model.embeddings.position_ids"] = torch.arange(CLIP_LENGTH)[None]
    layouts = write_text_encoder_layouts(root, model, tokenizer_dir, "clip_l.safetensors", state)
    return model, tokenizer, layouts


@pytest.fixture(scope="module")
def clip_reranker_setup(tmp_path_factory):
    """A tiny full CLIPModel (both towers) for the reranker: (reference model, tokenizer, model folder,
    tokenizer folder)."""
    transformers = pytest.importorskip("transformers")
    root = tmp_path_factory.mktemp("clip_scorer")
    text = dict(
        vocab_size=64, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2,
        max_position_embeddings=CLIP_LENGTH, bos_token_id=0, eos_token_id=1, pad_token_id=1,
    )
    vision = dict(
        hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2,
        image_size=RERANKER_IMAGE_SIZE, patch_size=8,
    )
    config = transformers.CLIPConfig(text_config=text, vision_config=vision, projection_dim=32)
    model = randomize_(transformers.CLIPModel(config), seed=0, std=0.1).eval()
    tokenizer_dir = write_clip_tokenizer(root / "tokenizer")
    tokenizer = transformers.CLIPTokenizerFast.from_pretrained(str(tokenizer_dir), local_files_only=True)
    model.save_pretrained(root / "folder", safe_serialization=True)
    shutil.copytree(tokenizer_dir, root / "folder", dirs_exist_ok=True)
    return model, tokenizer, root / "folder", tokenizer_dir


@pytest.fixture
def amused_folder(tmp_path, clip_text_setup):
    """A tiny random aMUSEd-layout folder (transformer/, vqvae/, text_encoder/, tokenizer/; VQ factor 2):
    (folder, reference UVit2DModel, reference CLIP text model, tokenizer)."""
    diffusers = pytest.importorskip("diffusers")
    clip_model, tokenizer, layouts = clip_text_setup
    transformer = randomize_(diffusers.UVit2DModel(**PIPE_UVIT)).eval()
    transformer.save_pretrained(tmp_path / "transformer")
    vq = randomize_(diffusers.VQModel(**TINY_VQ), seed=1).eval()
    vq.save_pretrained(tmp_path / "vqvae")
    shutil.copytree(layouts["pipeline"][0], tmp_path, dirs_exist_ok=True)  # text_encoder/ + tokenizer/
    return tmp_path, transformer, clip_model, tokenizer
