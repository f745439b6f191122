"""Loading refuses pickles, partial loads and corrupt files, with errors that name file, keys and fix."""

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from muse_core.loading import CheckpointError, load_model, save_model
from muse_core.models.super_res import SuperResConfig, SuperResTransformer
from muse_core.models.uvit import MaskedTokenUViT, UViTConfig

from .helpers import TINY_UVIT


@pytest.fixture
def uvit_file(tmp_path):
    return save_model(MaskedTokenUViT(UViTConfig(**TINY_UVIT)), tmp_path / "uvit.safetensors")


@pytest.mark.parametrize("suffix", [".bin", ".pt", ".ckpt", ".pth"])
def test_pickle_formats_are_refused_with_a_conversion_hint(tmp_path, suffix):
    path = tmp_path / f"model{suffix}"
    path.write_bytes(b"not opened")
    with pytest.raises(CheckpointError, match=r"pickle.*safetensors"):
        load_model(MaskedTokenUViT, path)


def test_folder_with_only_pickle_weights_is_refused(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps(TINY_UVIT))
    (tmp_path / "diffusion_pytorch_model.bin").write_bytes(b"not opened")
    with pytest.raises(CheckpointError, match="pickle"):
        load_model(MaskedTokenUViT, tmp_path)


def test_missing_path_and_empty_folder(tmp_path):
    with pytest.raises(CheckpointError, match="no such file"):
        load_model(MaskedTokenUViT, tmp_path / "nope.safetensors")
    with pytest.raises(CheckpointError, match="no .*safetensors weights found"):
        load_model(MaskedTokenUViT, tmp_path)


def test_truncated_file_is_a_clear_error(tmp_path, uvit_file):
    data = uvit_file.read_bytes()
    broken = tmp_path / "broken.safetensors"
    broken.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=r"broken\.safetensors.*(truncated|corrupt)"):
        load_model(MaskedTokenUViT, broken)
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"\x00" * 64)
    with pytest.raises(CheckpointError, match="garbage.safetensors"):
        load_model(MaskedTokenUViT, garbage)


def _resave(tmp_path, uvit_file, edit):
    tensors = load_file(str(uvit_file))
    edit(tensors)
    out = tmp_path / "edited.safetensors"
    save_file(tensors, str(out), metadata={"muse_kind": "uvit", "muse_config": json.dumps(TINY_UVIT)})
    return out


def test_missing_tensor_is_named(tmp_path, uvit_file):
    path = _resave(tmp_path, uvit_file, lambda t: t.pop("mlm_layer.conv2.weight"))
    with pytest.raises(CheckpointError, match=r"edited\.safetensors.*missing tensors: mlm_layer\.conv2\.weight"):
        load_model(MaskedTokenUViT, path)


def test_unexpected_tensor_is_named(tmp_path, uvit_file):
    path = _resave(tmp_path, uvit_file, lambda t: t.update(extra=torch.zeros(2)))
    with pytest.raises(CheckpointError, match="unexpected tensors: extra"):
        load_model(MaskedTokenUViT, path)


def test_wrong_shape_names_expected_and_found(tmp_path, uvit_file):
    path = _resave(tmp_path, uvit_file, lambda t: t.update({"encoder_proj.weight": torch.zeros(64, 47)}))
    with pytest.raises(CheckpointError, match=r"encoder_proj\.weight expected \[64, 48\] found \[64, 47\]"):
        load_model(MaskedTokenUViT, path)


def test_file_of_another_kind_is_refused(tmp_path):
    cfg = SuperResConfig(lowres_codebook_size=32, lowres_hidden_size=32, lowres_num_layers=1, lowres_num_heads=2,
                         lowres_intermediate_size=48, transformer=UViTConfig(**TINY_UVIT))
    path = save_model(SuperResTransformer(cfg), tmp_path / "sr.safetensors")
    with pytest.raises(CheckpointError, match="'super_res' model, not a 'uvit' model"):
        load_model(MaskedTokenUViT, path)


def test_bad_config_is_a_checkpoint_error(tmp_path, uvit_file):
    (tmp_path / "folder").mkdir()
    (tmp_path / "folder" / "config.json").write_text(json.dumps({**TINY_UVIT, "num_attention_heads": 3}))
    (tmp_path / "folder" / "diffusion_pytorch_model.safetensors").write_bytes(uvit_file.read_bytes())
    with pytest.raises(CheckpointError, match="hidden_size / num_attention_heads"):
        load_model(MaskedTokenUViT, tmp_path / "folder")


def test_load_builds_on_meta_and_uses_requested_dtype(uvit_file):
    model = load_model(MaskedTokenUViT, uvit_file, dtype=torch.float16)
    assert {p.dtype for p in model.parameters()} == {torch.float16}
    assert not any(p.is_meta for p in model.parameters())
    assert not model.training
