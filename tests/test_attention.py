import pytest
import torch

from muse_core.attention import attention, check_backend, xformers_available
from muse_core.models.layers import set_attention_backend
from muse_core.models.uvit import MaskedTokenUViT, UViTConfig

from .helpers import TINY_UVIT, uvit_inputs
from .reference import randomize_

AVAILABLE = ["math", "sdpa"] + (["xformers"] if xformers_available() else [])
DEVICE = "cuda" if xformers_available() else "cpu"


def qkv(batch=2, heads=3, q_len=10, k_len=13, dim=16, dtype=torch.float32):
    g = torch.Generator().manual_seed(0)
    make = lambda n: torch.randn(batch, heads, n, dim, generator=g).to(DEVICE, dtype)  # noqa: E731
    return make(q_len), make(k_len), make(k_len)


@pytest.mark.parametrize("backend", AVAILABLE)
def test_backends_agree_with_math(backend):
    q, k, v = qkv()
    mask = torch.ones(2, 13, dtype=torch.bool, device=DEVICE)
    mask[0, 9:] = False
    for key_mask in (None, mask):
        expected = attention(q, k, v, key_mask, backend="math")
        assert torch.allclose(attention(q, k, v, key_mask, backend=backend), expected, atol=1e-5)


def test_mask_excludes_keys():
    q, k, v = qkv()
    mask = torch.ones(2, 13, dtype=torch.bool, device=DEVICE)
    mask[:, 7:] = False
    for backend in AVAILABLE:
        assert torch.allclose(attention(q, k, v, mask, backend), attention(q, k[:, :, :7], v[:, :, :7], backend=backend), atol=1e-5)


def test_model_outputs_agree_across_backends():
    model = randomize_(MaskedTokenUViT(UViTConfig(**TINY_UVIT))).eval()
    inputs = uvit_inputs(TINY_UVIT)
    outputs = {}
    for backend in AVAILABLE:
        set_attention_backend(model, backend)
        with torch.no_grad():
            outputs[backend] = model(*inputs)
    for backend, out in outputs.items():
        assert torch.allclose(out, outputs["math"], atol=1e-4), backend


def test_unknown_backend_and_unavailable_xformers_are_clear_errors():
    with pytest.raises(ValueError, match="choose one of auto, xformers, sdpa, math"):
        check_backend("flash")
    if not xformers_available():
        with pytest.raises(RuntimeError, match="xformers.*(not installed|no CUDA)"):
            check_backend("xformers")
        q, k, v = qkv()
        with pytest.raises(RuntimeError, match="xformers"):
            attention(q, k, v, backend="xformers")
    assert check_backend("auto") == "auto"
