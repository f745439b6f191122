"""Inpainting, outpainting and mask-free editing on tiny random models."""

import pytest
import torch

from muse_core import load_pipeline
from muse_core.editing import edit_tokens, inpaint, mask_to_token_grid, outpaint, outpaint_canvas
from muse_core.models.vq import VQConfig, VQTokenizer
from muse_core.sampling import SamplingOptions


@pytest.fixture
def pipe(amused_folder):
    return load_pipeline(amused_folder[0])


def images(batch=2, size=16, seed=0):
    return torch.rand(batch, 3, size, size, generator=torch.Generator().manual_seed(seed))


def test_token_grid_rules():
    mask = torch.zeros(1, 8, 8)
    mask[0, 0, 0] = 1  # one pixel of the top-left 4x4 cell
    mask[0, 4:8, 4:7] = 1  # 12 of 16 pixels of the bottom-right cell
    assert mask_to_token_grid(mask, 4, "any").tolist() == [[[True, False], [False, True]]]
    assert mask_to_token_grid(mask, 4, "majority").tolist() == [[[False, False], [False, True]]]


def test_inpaint_keeps_unmasked_tokens_and_pixels(pipe):
    source = images()
    mask = torch.zeros(16, 16)
    mask[4:10, 2:9] = 1
    result = inpaint(pipe.transformer, pipe.vq, pipe.text_encoder, source, mask, "a cat", options=SamplingOptions(steps=4))
    original = pipe.vq.encode(source)
    kept = ~result.token_mask
    assert result.token_mask.sum(dim=(1, 2)).tolist() == [3 * 4] * 2  # token rows 2..4, cols 1..4 of the 8x8 grid
    assert torch.equal(result.ids[kept], original[kept])
    assert (result.ids != pipe.transformer.mask_token_id).all()
    outside = mask < 0.5
    assert torch.equal(result.images[:, :, outside], source[:, :, outside])  # blended back: identical
    unblended = inpaint(pipe.transformer, pipe.vq, pipe.text_encoder, source, mask, "a cat",
                        options=SamplingOptions(steps=4), blend=False)
    assert torch.equal(unblended.images, pipe.vq.decode(unblended.ids))


def test_inpaint_bad_input_is_refused_before_work(pipe):
    source = images()
    run = lambda m, imgs=source, **kw: inpaint(pipe.transformer, pipe.vq, pipe.text_encoder, imgs, m, "x", **kw)  # noqa: E731
    with pytest.raises(ValueError, match="mask is 8x8 but the image is 16x16"):
        run(torch.ones(8, 8))
    with pytest.raises(ValueError, match="marks no pixel"):
        run(torch.zeros(16, 16))
    with pytest.raises(ValueError, match="3 masks for 2 images"):
        run(torch.ones(3, 16, 16))
    with pytest.raises(ValueError, match="not a multiple of the VQ factor 2"):
        run(torch.ones(15, 15), images(size=15))


def test_outpaint_canvas_sizes(pipe):
    source = images(batch=1)
    canvas, mask = outpaint_canvas(source, 2, left=3, bottom=4)
    assert canvas.shape == (1, 3, 16 + 4, 16 + 4)  # 3 -> 4: margins round up to the VQ factor
    assert torch.equal(canvas[:, :, :16, 4:], source) and mask[:, :16, 4:].sum() == 0 and mask.sum() == 20 * 20 - 256
    result = outpaint(pipe.transformer, pipe.vq, pipe.text_encoder, source, "a cat", left=3, bottom=4,
                      options=SamplingOptions(steps=3))
    assert result.images.shape == (1, 3, 20, 20) and result.ids.shape == (1, 10, 10)
    assert torch.equal(result.images[:, :, :16, 4:], source)
    with pytest.raises(ValueError, match="at least one > 0"):
        outpaint_canvas(source, 2)


def test_mask_free_editing(pipe):
    ids = pipe.vq.encode(images())
    kw = dict(height=16, width=16, iterations=6, seed=1)
    assert torch.equal(edit_tokens(pipe.transformer, pipe.text_encoder, ids, "a dog", fraction=0.0, **kw), ids)
    edited = edit_tokens(pipe.transformer, pipe.text_encoder, ids, "a dog", fraction=0.25, **kw)
    assert (edited != ids).any() and (edited < pipe.vq.codebook_size).all()
    assert torch.equal(edited, edit_tokens(pipe.transformer, pipe.text_encoder, ids, "a dog", fraction=0.25, **kw))
    region = torch.zeros(2, 8, 8, dtype=torch.bool)
    region[:, :3, :3] = True
    confined = edit_tokens(pipe.transformer, pipe.text_encoder, ids, "a dog", fraction=0.5, mask=region, **kw)
    assert torch.equal(confined[~region], ids[~region]) and (confined[region] != ids[region]).any()
    with pytest.raises(ValueError, match="top_k must be an integer from 1 to 32"):
        edit_tokens(pipe.transformer, pipe.text_encoder, ids, "a dog", top_k=0, **kw)


def test_transformer_and_vq_of_different_codebooks_are_refused(pipe):
    other = VQTokenizer(VQConfig.from_dict({**pipe.vq.config.to_dict(), "num_vq_embeddings": 48}))
    with pytest.raises(ValueError, match="predicts 32 codes but the VQ has a codebook of 48"):
        inpaint(pipe.transformer, other, pipe.text_encoder, images(), torch.ones(16, 16), "x")
