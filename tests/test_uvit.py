"""The U-ViT equals diffusers' UVit2DModel, through every loading path."""

import copy
import json

import pytest
import torch
from diffusers import UVit2DModel
from safetensors.torch import save_file

from muse_core.loading import load_model, save_model
from muse_core.loading.convert import convert_open_muse_state_dict
from muse_core.models.uvit import MaskedTokenUViT, UViTConfig

from .helpers import AMUSED_256, AMUSED_512, AMUSED_LIKE_UVIT, TINY_UVIT, uvit_inputs
from .reference import randomize_, relative_max_diff


def reference_uvit(cfg: dict, seed: int = 0) -> UVit2DModel:
    return randomize_(UVit2DModel(**cfg), seed).eval()


def logits(model, cfg, **kw):
    ids, hidden, pooled, micro = uvit_inputs(cfg, **kw)
    with torch.no_grad():
        return model(ids, hidden, pooled, micro)


@pytest.mark.parametrize("backend", ["sdpa", "math"])
@pytest.mark.parametrize("resample", [False, True], ids=["amused256-like", "amused512-like"])
def test_diffusers_folder_parity(tmp_path, resample, backend):
    """Bitwise diffusers' logits at batch 1 and 2 with sdpa, the attention call diffusers makes. Batch 1 is
    its own case: there a [1, C, H, W] tensor's layout hangs on its batch stride (see UViTBlock.forward)."""
    cfg = {**TINY_UVIT, "downsample": resample, "upsample": resample}
    reference = reference_uvit(cfg)
    reference.save_pretrained(tmp_path)
    ours = load_model(MaskedTokenUViT, tmp_path, attention=backend)
    assert ours.config == UViTConfig(**cfg)
    for batch in (1, 2):
        ours_logits, ref_logits = logits(ours, cfg, batch=batch), logits(reference, cfg, batch=batch)
        if backend == "sdpa":
            assert torch.equal(ours_logits, ref_logits), f"batch {batch}"
        else:
            # math is another formula (float32 einsum + softmax) than diffusers' SDPA kernel, so it can only be
            # equal up to rounding, at any batch size: measured max abs diff 3.4e-6 to 8.7e-6 (logits up to ~3.5).
            assert (ours_logits - ref_logits).abs().max() <= 2e-5, f"batch {batch}"


def test_fp16_variant_and_shards(tmp_path):
    reference = reference_uvit(TINY_UVIT)
    copy.deepcopy(reference).half().save_pretrained(tmp_path / "fp16", variant="fp16")
    reference.save_pretrained(tmp_path / "sharded", max_shard_size="60KB")
    assert list((tmp_path / "sharded").glob("*.index.json")), "the reference should have written shards"
    sharded = load_model(MaskedTokenUViT, tmp_path / "sharded")
    assert relative_max_diff(logits(sharded, TINY_UVIT), logits(reference, TINY_UVIT)) <= 1e-5
    # A folder holding only the fp16 variant loads; the weights are the fp16-rounded reference.
    half = load_model(MaskedTokenUViT, tmp_path / "fp16", dtype=torch.float32)
    rounded = {k: v.half().float() for k, v in reference.state_dict().items()}
    assert all(torch.equal(half.state_dict()[k], v) for k, v in rounded.items())
    in_bf16 = load_model(MaskedTokenUViT, tmp_path / "fp16", dtype=torch.bfloat16)
    assert in_bf16.dtype == torch.bfloat16 and logits(in_bf16, TINY_UVIT).dtype == torch.bfloat16


def test_single_file_roundtrip(tmp_path):
    reference = reference_uvit(TINY_UVIT)
    reference.save_pretrained(tmp_path / "folder")
    ours = load_model(MaskedTokenUViT, tmp_path / "folder")
    path = save_model(ours, tmp_path / "uvit.safetensors")
    again = load_model(MaskedTokenUViT, path)
    assert again.config == ours.config
    # Loading copies bytes: the weights are bitwise the folder's. The logits are not promised bitwise: each tensor
    # stays where safetensors read it, at its file offset (not 64-byte aligned as torch's own allocations are, and
    # another one in the single file than in the folder's file), and CPU GEMM kernels may sum in another order for
    # another alignment (last-bit differences).
    state, expected = again.state_dict(), ours.state_dict()
    assert state.keys() == expected.keys()
    assert all(torch.equal(state[k], expected[k]) for k in expected)
    torch.testing.assert_close(logits(again, TINY_UVIT), logits(ours, TINY_UVIT), rtol=0, atol=1e-5)


def test_single_file_without_config_infers_it(tmp_path):
    reference = reference_uvit(AMUSED_LIKE_UVIT)
    save_file(reference.state_dict(), str(tmp_path / "bare.safetensors"))
    ours = load_model(MaskedTokenUViT, tmp_path / "bare.safetensors")
    expected = UViTConfig(**AMUSED_LIKE_UVIT)
    assert ours.config == UViTConfig(**{**expected.to_dict(), "sample_size": UViTConfig.sample_size})
    assert relative_max_diff(logits(ours, AMUSED_LIKE_UVIT), logits(reference, AMUSED_LIKE_UVIT)) <= 1e-5


# Written from the open-muse -> diffusers table in diffusers' scripts/convert_amused.py, in reverse.
def to_open_muse(state_dict):
    qkv = {"to_q": "query", "to_k": "key", "to_v": "value", "to_out.0": "out"}
    out = {}
    for key, tensor in state_dict.items():
        new = key.replace("down_block.", "down_blocks.0.").replace("up_block.", "up_blocks.0.")
        new = new.replace("cond_embed.linear_1.", "cond_embed.0.").replace("cond_embed.linear_2.", "cond_embed.2.")
        if new.startswith("transformer_layers."):
            if ".ff.net.0.proj." in new:
                value, gate = tensor.chunk(2, dim=0)
                out[new.replace("ff.net.0.proj", "ffn.wi_1")] = value
                out[new.replace("ff.net.0.proj", "ffn.wi_0")] = gate
                continue
            for ours, theirs in [("norm1.norm", "attn_layer_norm"), ("norm1.linear", "self_attn_adaLN_modulation.mapper"),
                                 ("norm2.norm", "crossattn_layer_norm"), ("norm2.linear", "cross_attn_adaLN_modulation.mapper"),
                                 ("norm3.norm", "ffn.pre_mlp_layer_norm"), ("norm3.linear", "ffn.adaLN_modulation.mapper"),
                                 ("ff.net.2", "ffn.wo")]:
                new = new.replace(f".{ours}.", f".{theirs}.")
        if ".attention_blocks." in new:
            new = new.replace(".norm1.", ".attn_layer_norm.").replace(".norm2.", ".crossattn_layer_norm.")
        if ".res_blocks." in new:
            for ours, theirs in [("norm", "norm.norm"), ("channelwise_linear_1", "channelwise.0"),
                                 ("channelwise_norm", "channelwise.2"), ("channelwise_linear_2", "channelwise.4"),
                                 ("cond_embeds_mapper", "adaLN_modulation.mapper")]:
                new = new.replace(f".{ours}.", f".{theirs}.")
        for ours, theirs in qkv.items():
            new = new.replace(f".attn1.{ours}.", f".attention.{theirs}.").replace(f".attn2.{ours}.", f".crossattention.{theirs}.")
        new = new.replace("downsample.norm.", "downsample.0.norm.").replace("downsample.conv.", "downsample.1.")
        new = new.replace("upsample.norm.", "upsample.0.norm.").replace("upsample.conv.", "upsample.1.")
        new = new.replace("mlm_layer.layer_norm.", "mlm_layer.layer_norm.norm.")
        out[new] = tensor
    return out


@pytest.mark.parametrize("resample", [False, True])
def test_open_muse_names_are_converted(tmp_path, resample):
    cfg = {**TINY_UVIT, "downsample": resample, "upsample": resample}
    reference = reference_uvit(cfg)
    open_muse = to_open_muse(reference.state_dict())
    assert "transformer_layers.0.attention.query.weight" in open_muse
    assert convert_open_muse_state_dict(open_muse).keys() == reference.state_dict().keys()
    # open-muse's config names the resampling flag differently and lists block_out_channels.
    config = {**cfg, "block_out_channels": [cfg["block_out_channels"]], "force_down_up_sample": resample}
    del config["downsample"], config["upsample"]
    (tmp_path / "config.json").write_text(json.dumps(config))
    save_file(open_muse, str(tmp_path / "diffusion_pytorch_model.safetensors"))
    ours = load_model(MaskedTokenUViT, tmp_path)
    assert relative_max_diff(logits(ours, cfg), logits(reference, cfg)) <= 1e-5


def test_text_padding_mask_hides_padding():
    model = randomize_(MaskedTokenUViT(UViTConfig(**TINY_UVIT))).eval()
    ids, hidden, pooled, micro = uvit_inputs(TINY_UVIT)
    mask = torch.ones(hidden.shape[:2], dtype=torch.bool)
    mask[:, 4:] = False
    garbage = hidden.clone()
    garbage[:, 4:] = 100 * torch.randn_like(garbage[:, 4:])
    with torch.no_grad():
        clean = model(ids, hidden, pooled, micro, mask)
        noisy = model(ids, garbage, pooled, micro, mask)
        unmasked = model(ids, garbage, pooled, micro)
    assert torch.allclose(clean, noisy, atol=1e-5)
    assert not torch.allclose(clean, unmasked, atol=1e-3)


@pytest.mark.slow
@pytest.mark.parametrize("cfg", [AMUSED_256, AMUSED_512], ids=["amused-256", "amused-512"])
def test_real_config_parity(tmp_path, cfg):
    reference = reference_uvit(cfg)
    reference.save_pretrained(tmp_path)
    del reference  # keep peak memory at one model + the file's tensors
    ours = load_model(MaskedTokenUViT, tmp_path)
    reference = UVit2DModel.from_pretrained(tmp_path).eval()
    grid = cfg["sample_size"]
    ours_logits = logits(ours, cfg, batch=1, grid=grid, text_len=77)
    ref_logits = logits(reference, cfg, batch=1, grid=grid, text_len=77)
    diff = relative_max_diff(ours_logits, ref_logits)
    print(f"{cfg['sample_size']}: max abs diff {(ours_logits - ref_logits).abs().max().item():.3g}, relative {diff:.3g}")
    assert diff <= 1e-4


@pytest.mark.parametrize("resample", [False, True], ids=["amused256-like", "amused512-like"])
def test_text_context_computed_once_gives_the_same_logits(resample):
    """A generation projects the text once (text_context) and reuses it at every step: bitwise the same."""
    cfg = {**TINY_UVIT, "downsample": resample, "upsample": resample}
    model = MaskedTokenUViT(UViTConfig(**cfg))
    randomize_(model)
    ids, hidden, pooled, micro = uvit_inputs(cfg)
    mask = torch.ones(hidden.shape[:2], dtype=torch.bool)
    mask[0, -2:] = False
    with torch.no_grad():
        text = model.text_context(hidden, pooled, micro, mask)
        for step_ids in (ids, ids.flip(1), torch.full_like(ids, cfg["vocab_size"] - 1)):
            assert torch.equal(model.forward_with_text(step_ids, text), model(step_ids, hidden, pooled, micro, mask))
    attention_modules = sum(1 for layer in model.transformer_layers) + 2 * 2 * cfg["num_res_blocks"]
    assert len(text.keys_values) == attention_modules  # every cross-attention reads its keys/values from the context


@pytest.mark.parametrize("positions", [None, "sincos"])
def test_sincos_positions_tell_apart_the_cells_of_a_fully_masked_grid(positions):
    """aMUSEd's U-ViT has no positions: away from the border, cells of an all-mask grid get the same logits
    (only the convolutions' zero padding tells them apart, and the 2x upsampling each cell's place in its 2x2
    block). With sincos positions every cell differs."""
    cfg = {**AMUSED_LIKE_UVIT, "downsample": True, "upsample": True, "sample_size": 16,
           "position_embedding_type": positions}
    model = randomize_(MaskedTokenUViT(UViTConfig(**cfg))).eval()
    ids, hidden, pooled, micro = uvit_inputs(cfg, grid=16)
    with torch.no_grad():
        out = model(torch.full_like(ids, cfg["vocab_size"] - 1), hidden, pooled, micro)
    interior = out[:, :, 6:11:2, 6:11:2].flatten(2)  # same place in their 2x2 blocks, far from the border
    same = torch.allclose(interior, interior[:, :, :1].expand_as(interior), atol=1e-5)
    assert same == (positions is None)


def test_position_embedding_type_is_checked_and_saved(tmp_path):
    with pytest.raises(ValueError, match="position_embedding_type"):
        UViTConfig(**{**TINY_UVIT, "position_embedding_type": "learned"})
    model = randomize_(MaskedTokenUViT(UViTConfig(**{**TINY_UVIT, "position_embedding_type": "sincos"})))
    assert load_model(MaskedTokenUViT, save_model(model, tmp_path / "pos.safetensors")).config == model.config


def test_grid_res_blocks_are_saved_and_read_off_the_tensors(tmp_path):
    """Our full-grid ConvNeXt blocks (not in aMUSEd): none by default, so diffusers' key names stay exact;
    when present, a bare state dict says how many there are and loads to the same logits."""
    assert not any("grid_" in key for key in MaskedTokenUViT(UViTConfig(**TINY_UVIT)).state_dict())
    cfg = {**AMUSED_LIKE_UVIT, "downsample": True, "upsample": True, "grid_res_blocks": 2}
    model = randomize_(MaskedTokenUViT(UViTConfig(**cfg))).eval()
    assert load_model(MaskedTokenUViT, save_model(model, tmp_path / "grid.safetensors")).config == model.config
    save_file(model.state_dict(), str(tmp_path / "bare.safetensors"))
    bare = load_model(MaskedTokenUViT, tmp_path / "bare.safetensors")
    assert bare.config.grid_res_blocks == 2
    torch.testing.assert_close(logits(bare, cfg), logits(model, cfg), rtol=0, atol=1e-5)  # file alignment: see above
