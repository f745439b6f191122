import pytest
import torch
from safetensors.torch import save_file

from muse_core.loading import load_model, save_model
from muse_core.models.layers import grid_positions
from muse_core.models.super_res import SuperResTransformer
from muse_core.models.uvit import upsample_tokens

from .helpers import AMUSED_LIKE_UVIT, TINY_UVIT, tiny_super_res


def inputs(model, batch=2, high=8, low=4, text_len=5):
    g = torch.Generator().manual_seed(3)
    t = model.config.transformer
    high_ids = torch.full((batch, high, high), t.vocab_size - 1)
    low_ids = torch.randint(0, model.config.lowres_codebook_size, (batch, low, low), generator=g)
    text = torch.randn(batch, text_len, t.encoder_hidden_size, generator=g)
    pooled = torch.randn(batch, t.cond_embed_dim, generator=g)
    return high_ids, low_ids, text, pooled, model.default_micro_conds(high * 8, high * 8, batch)


def run(model, high_ids, low_ids, text, pooled, micro, mask=None):
    with torch.no_grad():
        return model(high_ids, model.encode_lowres(low_ids), text, pooled, micro, mask)


def test_output_is_logits_over_the_high_res_grid():
    model = tiny_super_res()
    out = run(model, *inputs(model))
    assert out.shape == (2, TINY_UVIT["codebook_size"], 8, 8)


def test_low_res_tokens_condition_the_output():
    model = tiny_super_res()
    high, low, text, pooled, micro = inputs(model)
    other = (low + 1) % model.config.lowres_codebook_size
    assert not torch.allclose(run(model, high, low, text, pooled, micro), run(model, high, other, text, pooled, micro))


def test_low_res_context_is_visible_even_with_a_text_mask():
    model = tiny_super_res()
    high, low, text, pooled, micro = inputs(model)
    mask = torch.ones(text.shape[:2], dtype=torch.bool)
    mask[:, 3:] = False
    masked = run(model, high, low, text, pooled, micro, mask)
    cropped = run(model, high, low, text[:, :3], pooled, micro)
    assert torch.allclose(masked, cropped, atol=1e-5)


def test_positions_distinguish_grid_cells():
    pos = grid_positions(4, 6, 32)
    assert pos.shape == (24, 32)
    assert torch.cdist(pos, pos).add(torch.eye(24)).min() > 0.1


@pytest.mark.parametrize("low", [4, 8, 16])
def test_positions_of_a_finer_grid_are_nearest_the_coarse_cell_under_them(low):
    """What lets a super-res token find its low-res token: both grids measure positions on the same image."""
    high = 2 * low
    nearest = torch.cdist(grid_positions(high, high, 128), grid_positions(low, low, 128)).argmin(dim=1)
    rows, cols = torch.meshgrid(torch.arange(high), torch.arange(high), indexing="ij")
    assert torch.equal(nearest, ((rows // 2) * low + cols // 2).flatten())


def test_upsampled_tokens_repeat_each_coarse_feature_over_the_cells_it_covers():
    features = torch.arange(2 * 6 * 3, dtype=torch.float32).reshape(2, 6, 3)  # [B, 2x3 grid, C]
    grid = upsample_tokens(features, 4, 6)  # [B, C, 4, 6]
    rows, cols = torch.meshgrid(torch.arange(4), torch.arange(6), indexing="ij")
    under = (rows // 2) * 3 + cols // 2  # the coarse cell under each fine one
    assert torch.equal(grid, features[:, under].permute(0, 3, 1, 2))
    with pytest.raises(ValueError, match="do not tile"):
        upsample_tokens(features, 5, 6)


def test_adding_low_res_to_tokens_is_one_extra_path_off_by_default():
    """add_lowres_to_tokens adds one projection and nothing else: zeroed, the logits are the plain model's."""
    plain = tiny_super_res()
    assert not any("lowres_to_tokens" in key for key in plain.state_dict())  # Muse's keys when off
    added = tiny_super_res(add_lowres_to_tokens=True)
    missing = added.load_state_dict(plain.state_dict(), strict=False).missing_keys
    assert missing == ["lowres_to_tokens.weight"]
    high, low, text, pooled, micro = inputs(added)
    with torch.no_grad():
        added.lowres_to_tokens.weight.zero_()
    torch.testing.assert_close(run(added, high, low, text, pooled, micro), run(plain, high, low, text, pooled, micro))
    with torch.no_grad():
        added.lowres_to_tokens.weight.normal_()
    assert not torch.allclose(run(added, high, low, text, pooled, micro), run(plain, high, low, text, pooled, micro))


@pytest.mark.parametrize("add_lowres_to_tokens", [False, True])
def test_save_load_and_config_inference(tmp_path, add_lowres_to_tokens):
    model = tiny_super_res(uvit=AMUSED_LIKE_UVIT, add_lowres_to_tokens=add_lowres_to_tokens)
    again = load_model(SuperResTransformer, save_model(model, tmp_path / "sr.safetensors"))
    assert again.config == model.config
    save_file(model.state_dict(), str(tmp_path / "bare.safetensors"))
    inferred = load_model(SuperResTransformer, tmp_path / "bare.safetensors")
    expected = run(model, *inputs(model))
    # Loading copies bytes: the weights are bitwise the model's. The logits are not promised bitwise: the loaded
    # tensors sit at their file offsets (other alignments than torch's allocations), for which CPU GEMM kernels may
    # sum in another order (last-bit differences). 1e-5: the logits here are below 4; fp32 rounding leaves ~1e-6.
    for loaded in (again, inferred):
        state = loaded.state_dict()
        assert state.keys() == model.state_dict().keys()
        assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())
    torch.testing.assert_close(run(again, *inputs(again)), expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(run(inferred, *inputs(inferred)), expected, rtol=1e-5, atol=1e-5)


def test_low_res_ids_out_of_range_are_refused():
    model = tiny_super_res()
    with pytest.raises(ValueError, match="low-res ids must lie in"):
        model.encode_lowres(torch.full((1, 4, 4), 32))
