"""Iterative decoding: token-for-token parity with diffusers' AmusedPipeline, seeds, batches, img2img, super-res."""

import pytest
import torch
import transformers
from diffusers import AmusedScheduler, UVit2DModel, VQModel
from diffusers.pipelines.deprecated.amused import AmusedPipeline

from muse_core import load_pipeline
from muse_core.sampling import SamplingOptions, generate, img2img, super_resolve, unmask_step, upscale_via_img2img
from muse_core.sampling.generate import remask_for_strength
from muse_core.sampling.sampler import generators_for
from muse_core.sampling.schedules import masked_fraction

from .helpers import AMUSED_256, PIPE_UVIT, TINY_VQ, tiny_super_res, write_clip_tokenizer
from .reference import randomize_

SIZE = 16  # pixels: the tiny VQ has factor 2, so an 8x8 token grid


def reference_pipeline(folder, tokenizer):
    return AmusedPipeline(
        vqvae=VQModel.from_pretrained(folder / "vqvae"),
        tokenizer=tokenizer,
        text_encoder=transformers.CLIPTextModelWithProjection.from_pretrained(folder / "text_encoder"),
        transformer=UVit2DModel.from_pretrained(folder / "transformer"),
        scheduler=AmusedScheduler(mask_token_id=UVit2DModel.from_pretrained(folder / "transformer").config.vocab_size - 1),
    )


def ours(pipe, prompt="a cat", **kw):
    options = SamplingOptions(**{k: kw.pop(k) for k in list(kw) if k in SamplingOptions.__dataclass_fields__})
    return generate(pipe.transformer, pipe.text_encoder, prompt, height=SIZE, width=SIZE,
                    downsample_factor=pipe.vq.downsample_factor, options=options, **kw)


def test_mask_counts_follow_amused_schedule():
    remaining = [int((256 * masked_fraction("cosine", i + 1, 12)).floor()) for i in range(11)]
    # 127, not 128, after step 8: AmusedScheduler computes cos(pi / 3) * 256 in float32 (= 127.99998).
    assert remaining == [253, 247, 236, 221, 203, 181, 155, 127, 97, 66, 33]


@pytest.mark.parametrize("kw", [dict(), dict(guidance_scale=1.0), dict(steps=4, temperature=(1.0, 0.5)),
                                dict(negative_prompt="a dog")], ids=["defaults", "no-guidance", "steps4", "negative"])
def test_ids_equal_amused_pipeline(amused_folder, kw):
    folder, _, _, tokenizer = amused_folder
    reference = reference_pipeline(folder, tokenizer)
    pipe = load_pipeline(folder)
    ref_kw = dict(guidance_scale=kw.get("guidance_scale", 10.0), num_inference_steps=kw.get("steps", 12),
                  temperature=kw.get("temperature", (2, 0)), negative_prompt=kw.get("negative_prompt"))
    for seed in (0, 1):
        expected = reference("a cat", height=SIZE, width=SIZE, generator=torch.Generator().manual_seed(seed),
                             output_type="latent", **ref_kw).images
        got = ours(pipe, seed=seed, **kw)
        assert torch.equal(got, expected), f"seed {seed}"
    assert (got != pipe.transformer.mask_token_id).all()


def test_seeds_and_batch_rule(amused_folder):
    pipe = load_pipeline(amused_folder[0])
    batch = ours(pipe, ["a cat", "a dog"], num_images_per_prompt=2, seed=5)
    assert batch.shape == (4, 8, 8)
    # image k of a batch = the same prompt alone with seed + k: a documented bitwise promise (sampler.py, docs/api.md),
    # although the batch's logits come from a larger matmul than the single image's
    assert torch.equal(batch[3:4], ours(pipe, "a dog", seed=8))
    assert torch.equal(batch[0:1], ours(pipe, "a cat", seed=5))
    assert torch.equal(ours(pipe, seed=5), ours(pipe, seed=5))
    assert not torch.equal(ours(pipe, seed=5), ours(pipe, seed=6))


def test_callback_sees_every_step_and_can_cancel(amused_folder):
    pipe = load_pipeline(amused_folder[0])
    seen = []
    ours(pipe, steps=5, callback=lambda step, total, ids: seen.append((step, total, (ids == 39).sum().item())))
    assert [s[:2] for s in seen] == [(i, 5) for i in range(1, 6)]
    assert [s[2] for s in seen] == sorted((s[2] for s in seen), reverse=True) and seen[-1][2] == 0

    def cancel(step, total, ids):
        raise KeyboardInterrupt
    with pytest.raises(KeyboardInterrupt):
        ours(pipe, callback=cancel)


def test_linear_guidance_schedule_changes_the_result(amused_folder):
    pipe = load_pipeline(amused_folder[0])
    assert not torch.equal(ours(pipe, guidance_schedule="linear"), ours(pipe))


def test_token_temperature_moves_sampling_towards_the_likeliest_code():
    logits = torch.randn(2, 6, 4, 4, generator=torch.Generator().manual_seed(0))  # 6 codes; mask id 6
    masked = torch.full((2, 4, 4), 6)

    def last_step(token_temperature):  # the last step commits every masked token
        return unmask_step(logits, masked, 11, 12, 6, generators_for(0, 2, "cpu"), torch.tensor(0.0),
                           token_temperature=token_temperature)
    assert torch.equal(last_step(1e-3), logits.argmax(1))
    hits = {t: (last_step(t) == logits.argmax(1)).float().mean() for t in (1.0, 0.5)}
    assert hits[1.0] < hits[0.5] < 1


def test_token_temperature_changes_generation(amused_folder):
    pipe = load_pipeline(amused_folder[0])
    assert torch.equal(ours(pipe, token_temperature=1.0), ours(pipe))  # 1 is aMUSEd's plain sampling
    assert not torch.equal(ours(pipe, token_temperature=0.5), ours(pipe))


@pytest.mark.parametrize("bad, match", [
    (dict(steps=0), "steps must be from 1 to 1000"), (dict(guidance_scale=-1.0), "guidance_scale must be >= 0"),
    (dict(mask_schedule="zigzag"), "mask_schedule must be one of"), (dict(temperature=-1.0), "temperature must be >= 0"),
    (dict(token_temperature=0.0), "token_temperature must be > 0"),
])
def test_bad_options_are_refused(bad, match):
    with pytest.raises(ValueError, match=match):
        SamplingOptions(**bad)


def test_bad_requests_are_refused_before_work(amused_folder):
    pipe = load_pipeline(amused_folder[0])
    with pytest.raises(ValueError, match="height=15: image sizes must be positive multiples"):
        generate(pipe.transformer, pipe.text_encoder, "x", height=15, width=16, downsample_factor=2)
    with pytest.raises(ValueError, match="prompts is empty"):
        generate(pipe.transformer, pipe.text_encoder, [], height=16, width=16, downsample_factor=2)
    with pytest.raises(ValueError, match="2 negative prompts for 1 prompts"):
        ours(pipe, negative_prompt=["a", "b"])


def test_img2img_strength_bounds(amused_folder):
    pipe = load_pipeline(amused_folder[0])
    source = ours(pipe, seed=3)
    kw = dict(height=SIZE, width=SIZE)
    assert torch.equal(img2img(pipe.transformer, pipe.text_encoder, source, "a dog", strength=0.0, **kw), source)
    options = SamplingOptions()
    masked, start = remask_for_strength(source, 1.0, options, 39)
    assert start == 0 and (masked == 39).all()  # strength 1 re-masks every token
    masked, start = remask_for_strength(source, 0.5, options, 39)
    assert start == 6 and (masked == 39).sum(dim=(1, 2)).tolist() == [int(64 * 0.5**0.5)]
    kept = masked != 39
    result = img2img(pipe.transformer, pipe.text_encoder, source, "a dog", strength=0.5, **kw)
    assert torch.equal(result[kept], source[kept]) and (result != 39).all()
    with pytest.raises(ValueError, match=r"strength must be in \[0, 1\]"):
        img2img(pipe.transformer, pipe.text_encoder, source, "a dog", strength=1.5, **kw)


def test_super_resolve_doubles_the_grid(amused_folder):
    pipe = load_pipeline(amused_folder[0])
    sr = tiny_super_res(uvit=PIPE_UVIT)
    low = ours(pipe, ["a cat", "a dog"], seed=1)
    high = super_resolve(sr, pipe.text_encoder, low, ["a cat", "a dog"], downsample_factor=2)
    assert high.shape == (2, 16, 16) and (high != sr.mask_token_id).all()
    again = super_resolve(sr, pipe.text_encoder, low, ["a cat", "a dog"], downsample_factor=2)
    assert torch.equal(high, again)


@pytest.mark.slow
def test_real_amused_256_ids_equal_amused_pipeline(tmp_path):
    """Real amused-256 transformer config (random weights), 12 steps, guidance 10, fp32, CPU."""
    torch.manual_seed(0)
    randomize_(UVit2DModel(**AMUSED_256), std=0.02).save_pretrained(tmp_path / "transformer")
    # Only the factor (16) and codebook (8192) of the VQ matter for ids: keep it small.
    VQModel(**{**TINY_VQ, "block_out_channels": (8,) * 5, "down_block_types": ("DownEncoderBlock2D",) * 5,
               "up_block_types": ("UpDecoderBlock2D",) * 5, "num_vq_embeddings": 8192}).save_pretrained(tmp_path / "vqvae")
    text_config = transformers.CLIPTextConfig(vocab_size=64, hidden_size=768, intermediate_size=1024, num_hidden_layers=2,
                                              num_attention_heads=12, max_position_embeddings=16, projection_dim=768,
                                              bos_token_id=0, eos_token_id=1, pad_token_id=1)
    randomize_(transformers.CLIPTextModelWithProjection(text_config), std=0.05).save_pretrained(tmp_path / "text_encoder")
    write_clip_tokenizer(tmp_path / "tokenizer")
    tokenizer = transformers.CLIPTokenizerFast.from_pretrained(str(tmp_path / "tokenizer"), local_files_only=True)
    expected = reference_pipeline(tmp_path, tokenizer)(
        "a cat", generator=torch.Generator().manual_seed(0), output_type="latent").images
    pipe = load_pipeline(tmp_path)
    got = generate(pipe.transformer, pipe.text_encoder, "a cat", height=256, width=256, downsample_factor=16)
    assert got.shape == (1, 16, 16)
    assert torch.equal(got, expected)


def test_upscale_via_img2img_doubles_the_grid(amused_folder):
    pipe = load_pipeline(amused_folder[0])
    low = ours(pipe, seed=2)
    high = upscale_via_img2img(pipe.transformer, pipe.vq, pipe.vq, pipe.text_encoder, low, "a cat", strength=0.5,
                               options=SamplingOptions(steps=4))
    assert high.shape == (1, 16, 16) and (high != pipe.transformer.mask_token_id).all()
