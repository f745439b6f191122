"""Tiny model configs and builders shared by several test modules (a plain module: the fixtures that use
them are in conftest.py, the parity helpers against diffusers / transformers in reference.py)."""

from __future__ import annotations

import json
import shutil
import string
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file

from muse_core.models.super_res import SuperResConfig, SuperResTransformer
from muse_core.models.uvit import UViTConfig

from .reference import randomize_

# ---- U-ViT ----

# Small U-ViT configs in diffusers' field names. "amused-like" keeps aMUSEd's 64-wide heads and
# 5 x 256 micro-conditioning so its config can also be inferred from tensor shapes.
TINY_UVIT = dict(
    hidden_size=64, cond_embed_dim=40, micro_cond_encode_dim=8, micro_cond_embed_dim=40, encoder_hidden_size=48,
    vocab_size=40, codebook_size=32, in_channels=24, block_out_channels=32, num_res_blocks=2, block_num_heads=2,
    num_hidden_layers=2, num_attention_heads=2, intermediate_size=96, sample_size=8,
)
AMUSED_LIKE_UVIT = dict(
    hidden_size=128, cond_embed_dim=32, micro_cond_encode_dim=256, micro_cond_embed_dim=1280, encoder_hidden_size=48,
    vocab_size=72, codebook_size=64, in_channels=32, block_out_channels=64, num_res_blocks=1, block_num_heads=1,
    num_hidden_layers=2, num_attention_heads=2, intermediate_size=96, sample_size=8,
)
AMUSED_256 = dict(
    hidden_size=1024, use_bias=False, cond_embed_dim=768, micro_cond_encode_dim=256, micro_cond_embed_dim=1280,
    encoder_hidden_size=768, vocab_size=8256, codebook_size=8192, in_channels=768, block_out_channels=768,
    num_res_blocks=3, downsample=False, upsample=False, block_num_heads=12, num_hidden_layers=22,
    num_attention_heads=16, intermediate_size=2816, layer_norm_eps=1e-6, sample_size=16,
)
AMUSED_512 = {**AMUSED_256, "downsample": True, "upsample": True, "sample_size": 32}


def uvit_inputs(cfg: dict, batch: int = 2, grid: int = 8, text_len: int = 7, seed: int = 1):
    """Random ids (including mask tokens), text states, pooled vector and micro-conds for a U-ViT config."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, cfg["vocab_size"], (batch, grid, grid), generator=g)
    ids[:, ::2, ::3] = cfg["vocab_size"] - 1
    hidden = torch.randn(batch, text_len, cfg["encoder_hidden_size"], generator=g)
    pooled = torch.randn(batch, cfg["cond_embed_dim"], generator=g)
    micro = torch.tensor([[256.0, 256, 0, 0, 6]]).repeat(batch, 1)
    micro[-1] = torch.tensor([512.0, 384, 3, 1, 5.5])
    return ids, hidden, pooled, micro


def tiny_super_res(uvit=TINY_UVIT, layers=2, add_lowres_to_tokens=False):
    cfg = SuperResConfig(lowres_codebook_size=32, lowres_hidden_size=64, lowres_num_layers=layers, lowres_num_heads=1,
                         lowres_intermediate_size=96, add_lowres_to_tokens=add_lowres_to_tokens,
                         transformer=UViTConfig(**uvit))
    return randomize_(SuperResTransformer(cfg)).eval()


# ---- the tiny aMUSEd-layout pipeline folder (conftest.amused_folder) ----

TINY_VQ = dict(block_out_channels=(16, 32), down_block_types=("DownEncoderBlock2D",) * 2,
               up_block_types=("UpDecoderBlock2D",) * 2, layers_per_block=1, latent_channels=8, norm_num_groups=8,
               num_vq_embeddings=32, mid_block_add_attention=False, lookup_from_codebook=True, force_upcast=True)
# Text widths of the tiny CLIP text encoder of conftest.clip_text_setup (hidden 128, projection 48).
PIPE_UVIT = {**TINY_UVIT, "encoder_hidden_size": 128, "cond_embed_dim": 48}


# ---- tiny CLIP tokenizer ----

CLIP_LENGTH = 16
RERANKER_IMAGE_SIZE = 32  # the vision tower of conftest.clip_reranker_setup (patch 8)


def write_clip_tokenizer(folder):
    """A byte-level BPE vocabulary of single letters plus two merges, in the sd1_tokenizer file layout."""
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for suffix in ("", "</w>"):
        vocab.update({c + suffix: len(vocab) + i for i, c in enumerate(string.ascii_lowercase)})
    vocab.update({"ca": len(vocab), "cat</w>": len(vocab) + 1})
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\nc a\nca t</w>\n")
    config = {"tokenizer_class": "CLIPTokenizer", "model_max_length": CLIP_LENGTH, "pad_token": "<|endoftext|>"}
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    return folder


# ---- images ----


def write_text_encoder_layouts(root: Path, model, tokenizer_dir: Path, single_name: str, single_state: dict) -> dict:
    """A text encoder saved the three ways the loaders read: a transformers folder, a pipeline folder
    (text_encoder/ + tokenizer/) and a ComfyUI-style single file with the tokenizer elsewhere.

    Returns {layout: (path, tokenizer_path)}."""
    model.save_pretrained(root / "folder")
    shutil.copytree(tokenizer_dir, root / "folder", dirs_exist_ok=True)
    model.save_pretrained(root / "pipeline" / "text_encoder")
    shutil.copytree(tokenizer_dir, root / "pipeline" / "tokenizer")
    single = root / "text_encoders" / single_name
    single.parent.mkdir()
    save_file(single_state, str(single))
    return {"folder": (root / "folder", None), "pipeline": (root / "pipeline", None),
            "single_file": (single, tokenizer_dir)}


def area_downsample(image: np.ndarray, factor: int = 2) -> np.ndarray:
    size = image.shape[0] // factor
    return image.reshape(size, factor, size, factor, 3).astype(np.float64).mean(axis=(1, 3))
