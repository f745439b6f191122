"""VQ tokenizer parity with diffusers' VQModel, used exactly as the aMUSEd pipelines use it.

diffusers is a test-only reference: ids come from ``vqvae.quantize(vqvae.encode(x).latents)[2][2]`` and
images from ``vqvae.decode(ids, force_not_quantize=True, shape=...).sample.clip(0, 1)``
(diffusers/pipelines/deprecated/amused/pipeline_amused_img2img.py).
"""

from __future__ import annotations

import dataclasses
import json
import time

import pytest
import torch
from safetensors.torch import save_file

from muse_core.loading import CheckpointError, load_model
from muse_core.models.vq import VQConfig, VQTokenizer

diffusers = pytest.importorskip("diffusers")  # the reference VQModel; muse_core itself does not need it

TINY = {
    "block_out_channels": [32, 64],
    "down_block_types": ["DownEncoderBlock2D"] * 2,
    "up_block_types": ["UpDecoderBlock2D"] * 2,
    "layers_per_block": 1,
    "latent_channels": 8,
    "norm_num_groups": 8,
    "num_vq_embeddings": 64,
    "mid_block_add_attention": False,
    "lookup_from_codebook": True,
    "force_upcast": True,
}
TINY_ATTN = {
    **TINY,
    "layers_per_block": 2,
    "mid_block_add_attention": True,
    "vq_embed_dim": 16,
}
AMUSED = {
    "block_out_channels": [128, 256, 256, 512, 768],
    "down_block_types": ["DownEncoderBlock2D"] * 5,
    "up_block_types": ["UpDecoderBlock2D"] * 5,
    "layers_per_block": 2,
    "latent_channels": 64,
    "norm_num_groups": 32,
    "num_vq_embeddings": 8192,
    "vq_embed_dim": None,
    "mid_block_add_attention": False,
    "lookup_from_codebook": True,
    "force_upcast": True,
    "norm_type": "group",
    "act_fn": "silu",
    "scaling_factor": 0.18215,
}


def _reference(config: dict, probe: torch.Tensor, seed: int = 0):
    """A diffusers VQModel with random weights everywhere, GroupNorm affines and a spread-out codebook included."""
    torch.manual_seed(seed)
    vq = diffusers.VQModel(**config).eval()
    with torch.no_grad():
        for module in vq.modules():
            if isinstance(module, torch.nn.GroupNorm):
                module.weight.normal_(1.0, 0.3)
                module.bias.normal_(0.0, 0.3)
        # diffusers' codebook init is uniform(+-1/K): every latent would pick nearly the same code
        latents = vq.encode(probe).latents.transpose(0, 1).flatten(1)  # [dim, positions]
        codebook = vq.quantize.embedding.weight
        codebook.normal_(0.0, 1.0).mul_(latents.std(dim=1)).add_(latents.mean(dim=1))
    return vq


def _reference_ids(vq, images: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        latents = vq.encode(images).latents
        batch, _, height, width = latents.shape
        return vq.quantize(latents)[2][2].reshape(batch, height, width)


def _reference_images(vq, ids: torch.Tensor) -> torch.Tensor:
    embed_dim = vq.config.vq_embed_dim or vq.config.latent_channels
    with torch.no_grad():
        return vq.decode(ids, force_not_quantize=True, shape=(*ids.shape, embed_dim)).sample.clip(0, 1)


def _images(batch: int, size: int, seed: int = 1) -> torch.Tensor:
    return torch.rand(batch, 3, size, size, generator=torch.Generator().manual_seed(seed))


def _check_parity(vq, model: VQTokenizer, images: torch.Tensor, decode_tol: float) -> tuple[float, torch.Tensor]:
    ids = model.encode(images)
    assert ids.dtype == torch.long
    assert ids.shape == (
        images.shape[0],
        *(s // model.downsample_factor for s in images.shape[-2:]),
    )
    assert torch.equal(ids, _reference_ids(vq, images))
    assert ids.unique().numel() > min(8, ids.numel() // 4), "codes too uniform for a meaningful test"

    out = model.decode(ids)
    ref = _reference_images(vq, ids)
    assert out.dtype == torch.float32 and out.shape == ref.shape
    assert ((out > 0) & (out < 1)).float().mean() > 0.2, "output mostly clamped: the comparison would be empty"
    diff = (out - ref).abs().max().item()
    assert diff <= decode_tol
    return diff, ids


@pytest.fixture(params=[TINY, TINY_ATTN], ids=["tiny", "tiny-attn-embeddim"])
def tiny(request, tmp_path):
    vq = _reference(request.param, _images(2, 16, seed=7))
    vq.save_pretrained(tmp_path)
    return vq, tmp_path


@pytest.mark.parametrize(
    "config",
    [TINY, TINY_ATTN, AMUSED, {**AMUSED, "mid_block_add_attention": True, "layers_per_block": 1}],
    ids=["tiny", "tiny-attn-embeddim", "amused", "amused-attn"],
)
def test_state_dict_keys_and_shapes_match_diffusers(config):
    with torch.device("meta"):  # no memory, no init: the real config costs nothing here
        theirs = {k: tuple(v.shape) for k, v in diffusers.VQModel(**config).state_dict().items()}
        ours = {k: tuple(v.shape) for k, v in VQTokenizer(VQConfig.from_dict(config)).state_dict().items()}
    assert ours == theirs
    inferred = VQTokenizer.infer_config({k: torch.Size(v) for k, v in theirs.items()})
    assert inferred.norm_num_groups == 32  # not in the weights: the documented default
    assert dataclasses.replace(inferred, norm_num_groups=config["norm_num_groups"]) == VQConfig.from_dict(config)


def test_tiny_parity_with_diffusers(tiny):
    vq, path = tiny
    model = load_model(VQTokenizer, path, dtype=torch.float32, device="cpu")
    assert model.downsample_factor == 2 and model.codebook_size == 64
    diff, ids = _check_parity(vq, model, _images(2, 16), decode_tol=1e-5)
    print(f"tiny decode max abs diff {diff:.2e}")

    if model.config.mid_block_add_attention:  # every attention backend that runs on CPU gives the same image
        reference = model.decode(ids)
        for module in model.modules():
            if hasattr(module, "backend"):
                module.backend = "math"
        assert (model.decode(ids) - reference).abs().max() <= 1e-5


@pytest.mark.parametrize("backend", ["sdpa", "math"])
def test_tiny_bitwise_parity_at_batch_1_and_2(tiny, backend):
    """Latents, ids and images bitwise diffusers' with sdpa, the attention call diffusers makes. Batch 1 is its
    own case: there a [1, C, H, W] tensor's layout hangs on its batch stride (see SelfAttention.forward)."""
    vq, path = tiny
    model = load_model(VQTokenizer, path, dtype=torch.float32, device="cpu", attention=backend)
    for batch in (1, 2):
        images = _images(batch, 16)
        with torch.no_grad():
            latents, ref_latents = model.quant_conv(model.encoder(images)), vq.encode(images).latents
        ids = model.encode(images)
        assert torch.equal(ids, _reference_ids(vq, images)), f"batch {batch}"
        out, ref = model.decode(ids), _reference_images(vq, ids)
        if backend == "sdpa" or not model.config.mid_block_add_attention:
            assert torch.equal(latents, ref_latents) and torch.equal(out, ref), f"batch {batch}"
        else:
            # math is another formula (float32 einsum + softmax) than diffusers' SDPA kernel, so it can only be
            # equal up to rounding, at any batch size: measured max abs diff 2.4e-7 to 4.2e-7 on the latents
            # and 2.0e-6 to 2.9e-6 on the decoded images.
            assert (latents - ref_latents).abs().max() <= 2e-6, f"batch {batch}"
            assert (out - ref).abs().max() <= 1e-5, f"batch {batch}"


def test_fp16_weights_upcast_to_fp32(tiny):
    """fp16-stored weights compute in fp32: same result as an fp32 model holding the fp16-rounded weights."""
    _, path = tiny
    half = load_model(VQTokenizer, path, dtype=torch.float16, device="cpu")
    rounded = load_model(VQTokenizer, path, dtype=torch.float32, device="cpu")
    with torch.no_grad():
        for p in rounded.parameters():
            p.copy_(p.half().float())
    state, expected = half.state_dict(), rounded.state_dict()
    assert state.keys() == expected.keys()
    assert all(state[k].dtype == torch.float16 and torch.equal(state[k].float(), expected[k]) for k in expected)
    # The outputs are not promised bitwise: the fp32 copies of the fp16 weights are fresh allocations, the fp32
    # model's weights sit where loading put them, and CPU conv / GEMM kernels may sum in another order for another
    # alignment (last-bit differences). The ids are discrete: equal unless a latent sits within rounding of a tie
    # between two codes, as _check_parity assumes against diffusers.
    images = _images(1, 16)
    ids = half.encode(images)
    assert torch.equal(ids, rounded.encode(images))
    out = half.decode(ids)
    assert out.dtype == torch.float32 and half.dtype == torch.float16  # the module itself stays fp16
    torch.testing.assert_close(out, rounded.decode(ids), rtol=0, atol=1e-5)


def test_config_round_trip(tiny):
    vq, path = tiny
    config = VQConfig.from_dict(json.loads((path / "config.json").read_text()))
    assert config == VQConfig.from_dict(dict(vq.config))
    assert VQConfig.from_dict(config.to_dict()) == config


def test_bad_inputs(tiny):
    _, path = tiny
    model = load_model(VQTokenizer, path, dtype=torch.float32, device="cpu")
    good = _images(1, 16)
    cases = [
        (good[:, :2], "shaped"),
        (good[0], "shaped"),
        (good[..., :15], "divisible by 2"),
        (good * 2 - 1, r"\[0, 1\]"),
        (good * 255, r"\[0, 1\]"),
        ((good * 255).to(torch.uint8), "float"),
    ]
    for images, message in cases:
        with pytest.raises(ValueError, match=message):
            model.encode(images)
    ids = torch.zeros(1, 8, 8, dtype=torch.long)
    for bad, message in [(ids + 64, "ids must lie"), (ids - 1, "ids must lie"), (ids.float(), "integer"),
                         (ids[0], "shaped")]:  # fmt: skip
        with pytest.raises(ValueError, match=message):
            model.decode(bad)


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"norm_type": "spatial"}, "norm_type"),
        (
            {"down_block_types": ["AttnDownEncoderBlock2D", "DownEncoderBlock2D"]},
            "down_block_types",
        ),
        ({"up_block_types": ["UpDecoderBlock2D"]}, "up_block_types"),
        ({"act_fn": "tanh"}, "act_fn"),
        ({"norm_num_groups": 24}, "norm_num_groups"),
    ],
)
def test_unsupported_configs_are_refused(change, field, tmp_path):
    with pytest.raises(ValueError, match=f"VQConfig.{field}"):
        VQConfig.from_dict({**TINY, **change})
    (tmp_path / "config.json").write_text(json.dumps({**TINY, **change}))
    save_file({}, str(tmp_path / "diffusion_pytorch_model.safetensors"))  # the config is read and refused first
    with pytest.raises(CheckpointError, match=field):
        load_model(VQTokenizer, tmp_path)


def test_infer_config_refuses_foreign_tensors():
    with pytest.raises(ValueError, match="VQModel"):
        VQTokenizer.infer_config({"transformer.weight": torch.Size([4, 4])})


@pytest.mark.slow
def test_amused_config_parity(tmp_path):
    start = time.perf_counter()
    vq = _reference(AMUSED, _images(1, 64, seed=7))
    vq.save_pretrained(tmp_path)
    model = load_model(VQTokenizer, tmp_path, dtype=torch.float32, device="cpu")
    assert sum(p.numel() for p in model.parameters()) == 146_244_675
    assert model.downsample_factor == 16 and model.codebook_size == 8192
    diff, _ = _check_parity(vq, model, _images(2, 64), decode_tol=1e-4)
    print(f"aMUSEd-config decode max abs diff {diff:.2e}, {time.perf_counter() - start:.1f}s")
