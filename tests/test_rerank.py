"""CLIP reranker against transformers' CLIPModel run directly, and preprocessing against PIL.

A tiny seeded CLIPModel (both towers) and the tiny CLIP tokenizer (conftest.clip_reranker_setup) are saved
offline as a model folder and as a single .safetensors file, then loaded through load_clip_scorer.
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from muse_core.loading import CheckpointError
from muse_core.rerank import CLIP_MEAN, CLIP_STD, load_clip_scorer

from .comfy_harness import load_pack
from .helpers import CLIP_LENGTH, RERANKER_IMAGE_SIZE

pytest.importorskip("transformers")  # the reference CLIPModel

IMAGE_SIZE = RERANKER_IMAGE_SIZE
TOLERANCE = 1e-5
PROMPTS = ["a cat", "", "zebra crossing at night"]  # the last is truncated to CLIP_LENGTH tokens


@pytest.fixture(scope="module")
def scorer(clip_reranker_setup):
    return load_clip_scorer(clip_reranker_setup[2])


def random_images(batch, height, width, seed=0):
    return torch.rand(batch, 3, height, width, generator=torch.Generator().manual_seed(seed))


def reference_scores(model, tokenizer, pixel_values, prompt):
    """transformers' own features; padding="longest" (as CLIPProcessor does): EOS pooling ignores padding."""
    tokens = tokenizer([prompt], padding=True, truncation=True, max_length=CLIP_LENGTH, return_tensors="pt")
    with torch.no_grad():
        image = model.get_image_features(pixel_values=pixel_values).pooler_output
        text = model.get_text_features(**tokens).pooler_output
    image, text = image / image.norm(dim=-1, keepdim=True), text / text.norm(dim=-1, keepdim=True)
    return (image @ text.T)[:, 0]


def normalise(images):
    return (images - torch.tensor(CLIP_MEAN).view(1, 3, 1, 1)) / torch.tensor(CLIP_STD).view(1, 3, 1, 1)


def pil_resize_crop(images, size):
    """Independent reference: PIL's bicubic (antialiased) on float32 channels, short side -> size, center crop."""
    _, _, height, width = images.shape
    new_h, new_w = (size, size * width // height) if height <= width else (size * height // width, size)
    out = []
    for image in images:
        channels = [Image.fromarray(c.numpy(), mode="F").resize((new_w, new_h), Image.BICUBIC) for c in image]
        resized = np.stack([np.asarray(c) for c in channels]).clip(0, 1)
        top, left = (new_h - size) // 2, (new_w - size) // 2
        out.append(torch.from_numpy(resized[:, top : top + size, left : left + size].copy()))
    return torch.stack(out)


# ---- preprocessing ----


def test_preprocess_at_model_size_is_only_normalisation(scorer):
    images = random_images(2, IMAGE_SIZE, IMAGE_SIZE)
    # Bitwise on purpose: the same two elementwise float32 ops (subtract, divide; IEEE-exact whatever the
    # threads or vector width) on the same input; any resampling, even an identity one, would show.
    assert torch.equal(scorer.preprocess(images), normalise(images))


@pytest.mark.parametrize("shape", [(45, 61), (70, 40), (20, 24)])  # landscape, portrait, upscaled
def test_preprocess_resize_and_crop_match_pil(scorer, shape):
    images = random_images(2, *shape)
    expected = normalise(pil_resize_crop(images, IMAGE_SIZE))
    # In [0,1] pixel units (x std): PIL's and torch's float32 bicubic kernels differ by ~2e-6.
    diff = ((scorer.preprocess(images) - expected) * torch.tensor(CLIP_STD).view(1, 3, 1, 1)).abs().max().item()
    assert diff < TOLERANCE, diff


def test_preprocessor_config_sets_mean_and_std(clip_reranker_setup, tmp_path):
    folder = shutil.copytree(clip_reranker_setup[2], tmp_path / "clip")
    mean, std = [0.5, 0.25, 0.125], [0.5, 0.5, 0.25]
    (folder / "preprocessor_config.json").write_text(json.dumps({"image_mean": mean, "image_std": std}))
    images = random_images(1, IMAGE_SIZE, IMAGE_SIZE)
    expected = (images - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    # Bitwise on purpose: the same elementwise subtract and divide, with the file's mean/std.
    assert torch.equal(load_clip_scorer(folder).preprocess(images), expected)


# ---- scores and ranking ----


@pytest.mark.parametrize("prompt", PROMPTS)
def test_scores_match_transformers_cosine_similarity(clip_reranker_setup, scorer, prompt):
    model, tokenizer, _, _ = clip_reranker_setup
    images = random_images(4, 48, 40, seed=1)
    expected = reference_scores(model, tokenizer, scorer.preprocess(images), prompt)
    scores = scorer.score(images, prompt)
    assert scores.shape == (4,) and scores.dtype == torch.float32
    assert (scores - expected).abs().max().item() < TOLERANCE


def test_rerank_orders_by_descending_score(clip_reranker_setup, scorer):
    model, tokenizer, _, _ = clip_reranker_setup
    images = random_images(6, IMAGE_SIZE, IMAGE_SIZE, seed=2)
    expected = reference_scores(model, tokenizer, normalise(images), "a cat")
    result = scorer.rerank(images, "a cat")
    # The reference scores come through another code path (agreeing to TOLERANCE, not bitwise). These seeded
    # scores are >= 1e-3 apart, so no order can flip within the tolerance and the orders must be equal.
    gaps = -expected.sort(descending=True).values.diff()
    assert gaps.min() > 2 * TOLERANCE, "near-tied reference scores: pick another seed"
    assert torch.equal(result.order, torch.argsort(expected, descending=True))
    assert result.best_index == int(expected.argmax())
    assert result.order.dtype == torch.long and result.best_index == int(result.order[0])
    assert (result.scores - expected).abs().max().item() < TOLERANCE


def test_rerank_breaks_ties_by_lower_index(scorer, monkeypatch):
    monkeypatch.setattr(scorer, "score", lambda images, prompt: torch.tensor([0.1, 0.3, 0.3, -0.2, 0.3]))
    result = scorer.rerank(None, "x")
    assert result.order.tolist() == [1, 2, 4, 0, 3] and result.best_index == 1


def test_per_image_prompts_and_comfy_layout(scorer):
    images = random_images(2, 40, 40, seed=3)
    per_image = scorer.score(images, ["a cat", "zebra"])
    one_by_one = torch.cat([scorer.score(images[:1], "a cat"), scorer.score(images[1:], "zebra")])
    assert (per_image - one_by_one).abs().max().item() < TOLERANCE
    channels_last = images.movedim(1, -1)  # ComfyUI IMAGE layout
    from_comfy = load_pack().nodes.types.image_from_comfy(channels_last)  # as the rerank node converts it
    assert torch.equal(from_comfy, images)  # the same pixels (a strided view: an exact permutation)
    # Not bitwise: the view keeps channels-last strides, for which resize and the patch convolution may take other
    # kernels (other summation orders, last-bit differences). TOLERANCE: as against transformers above.
    torch.testing.assert_close(scorer.score(from_comfy, "a cat"), scorer.score(images, "a cat"), rtol=0, atol=TOLERANCE)


# ---- loading ----


def test_single_file_with_config_beside_or_given(clip_reranker_setup, scorer, tmp_path):
    model, _, folder, tokenizer_dir = clip_reranker_setup
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    # Older exports store both towers' position_ids buffers; they must be accepted and ignored.
    state["text_model.embeddings.position_ids"] = torch.arange(CLIP_LENGTH)[None]
    state["vision_model.embeddings.position_ids"] = torch.arange((IMAGE_SIZE // 8) ** 2 + 1)[None]
    single = tmp_path / "clip.safetensors"
    save_file(state, str(single))
    images = random_images(3, 36, 50, seed=4)
    expected = scorer.score(images, "a cat")
    reference = model.state_dict()

    def same_model(loaded):
        # Loading copies bytes: the weights are bitwise the reference's. The scores are not promised bitwise: each
        # tensor stays where safetensors read it, at its file offset (not 64-byte aligned as torch's own
        # allocations are, and different from file to file), and CPU GEMM kernels may sum in another order for
        # another alignment or layout (seen: last-bit differences, folder vs single file, on a busy machine).
        # TOLERANCE: as against transformers above.
        state = loaded.model.state_dict()
        assert state.keys() == reference.keys()
        assert all(torch.equal(state[k], reference[k]) for k in reference)
        torch.testing.assert_close(loaded.score(images, "a cat"), expected, rtol=0, atol=TOLERANCE)

    same_model(load_clip_scorer(single, tokenizer_path=tokenizer_dir, config_path=folder / "config.json"))
    shutil.copy(folder / "config.json", tmp_path / "config.json")
    same_model(load_clip_scorer(single, tokenizer_path=tokenizer_dir))


def test_refuses_pickles_and_configs_that_are_not_full_clip(clip_reranker_setup, tmp_path):
    _, _, folder, tokenizer_dir = clip_reranker_setup
    pickle = tmp_path / "pytorch_model.bin"
    pickle.write_bytes(b"not opened")
    with pytest.raises(CheckpointError, match="pickle"):
        load_clip_scorer(pickle, tokenizer_path=tokenizer_dir)
    single = tmp_path / "weights" / "clip.safetensors"
    single.parent.mkdir()
    shutil.copy(folder / "model.safetensors", single)
    with pytest.raises(CheckpointError, match="no config.json"):
        load_clip_scorer(single, tokenizer_path=tokenizer_dir)
    (single.parent / "config.json").write_text(json.dumps({"model_type": "clip_text_model"}))
    with pytest.raises(CheckpointError, match="full CLIP model"):
        load_clip_scorer(single, tokenizer_path=tokenizer_dir)


@pytest.mark.parametrize(
    ("images", "message"),
    [
        (torch.rand(0, 3, 32, 32), "empty"),
        (torch.rand(2, 32, 32, 3), "channels-last ComfyUI IMAGE"),
        (torch.rand(2, 1, 32, 32), r"\[B,3,H,W\]"),
        (torch.rand(3, 32, 32), r"\[B,3,H,W\]"),
        (torch.rand(1, 3, 32, 32) * 2 - 1, r"\[0, 1\]"),
        (torch.rand(1, 3, 32, 32) * 255, r"\[0, 1\]"),
        (torch.full((1, 3, 32, 32), float("nan")), "NaN"),
        (torch.zeros(1, 3, 32, 32, dtype=torch.uint8), "float tensor"),
    ],
)
def test_bad_images_raise_clear_errors(scorer, images, message):
    with pytest.raises(ValueError, match=message):
        scorer.score(images, "a cat")


def test_prompt_checks(scorer):
    images = random_images(2, IMAGE_SIZE, IMAGE_SIZE)
    with pytest.raises(ValueError, match="non-empty list"):
        scorer.score(images, [])
    with pytest.raises(ValueError, match="3 prompts for 2 images"):
        scorer.score(images, ["a", "b", "c"])
    assert scorer.score(images, "").shape == (2,)  # the empty prompt is a valid prompt
    slightly_out = images.clamp(1e-4, 1 - 1e-4) + 5e-4  # within the [0,1] tolerance
    assert scorer.score(slightly_out, "a cat").shape == (2,)
