import pytest
import torch

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


@pytest.fixture
def tiny_uvit_config():
    return dict(TINY_UVIT)
