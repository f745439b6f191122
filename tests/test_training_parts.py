"""Word-level tokenizers, the VQ objective (quantisation as encode, restarts, export) and the CLIP objective."""

from __future__ import annotations

import json

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from einops import rearrange

from muse_core.loading import load_model
from muse_core.models.vq import VQTokenizer
from muse_core.text.loading import load_tokenizer
from muse_core.text.t5 import T5TextEncoder
from muse_core.training.tokenizer import build_word_tokenizer, save_tokenizer
from muse_core.training.vq import (
    VQObjective,
    boundary_patches,
    kmeans_plus_plus_seeds,
    patch_consistency_loss,
    small_vq_config,
)

transformers = pytest.importorskip("transformers")

from muse_core.rerank import ClipScorer, load_clip_scorer  # noqa: E402
from muse_core.training.clip import ClipObjective, new_clip_model, paste_specks, small_clip_config  # noqa: E402

CAPTIONS = ["A red circle.", "two BLUE squares, left of a green triangle", "a red square", "a blue circle"]
PROMPTS = ["a red circle", "a purple zebra!", "", "two blue squares left of a green triangle " * 4]


# ---- tokenizers ----


@pytest.mark.parametrize("style", ["t5", "clip"])
def test_tokenizer_round_trips_through_the_loader(style, tmp_path):
    tokenizer = build_word_tokenizer(CAPTIONS, style, max_length=12)
    save_tokenizer(tokenizer, tmp_path)
    # a class name transformers 4 knows too (transformers 5 would write TokenizersBackend)
    assert json.loads((tmp_path / "tokenizer_config.json").read_text())["tokenizer_class"] == "PreTrainedTokenizerFast"
    loaded = load_tokenizer(tmp_path)
    for padding in ("max_length", "longest"):
        options = dict(padding=padding, max_length=12, truncation=True)
        assert loaded(PROMPTS, **options).input_ids == tokenizer(PROMPTS, **options).input_ids
    assert len(loaded) == len(tokenizer)
    for name in ("pad_token_id", "eos_token_id", "unk_token_id"):
        assert getattr(loaded, name) == getattr(tokenizer, name)


def test_vocabulary_is_lowercased_split_at_punctuation_and_order_independent():
    tokenizer = build_word_tokenizer(CAPTIONS, "t5", max_length=16)
    assert tokenizer.get_vocab() == build_word_tokenizer(CAPTIONS[::-1], "t5", max_length=16).get_vocab()
    words = set(tokenizer.get_vocab()) - {"<pad>", "</s>", "<unk>"}
    assert words == {"a", "red", "circle", ".", "two", "blue", "squares", ",", "left", "of", "green", "triangle", "square"}


def test_t5_style_appends_eos_and_maps_unknown_words_to_unk():
    tokenizer = build_word_tokenizer(CAPTIONS, "t5", max_length=6)
    assert (tokenizer.pad_token_id, tokenizer.eos_token_id, tokenizer.unk_token_id) == (0, 1, 2)
    ids = tokenizer(["Red ZEBRA circle", ""]).input_ids
    assert ids[0] == [tokenizer.convert_tokens_to_ids("red"), 2, tokenizer.convert_tokens_to_ids("circle"), 1]
    assert ids[1] == [1]  # T5TextEncoder needs a token even for the empty (unconditional) prompt
    truncated = tokenizer([PROMPTS[-1]], truncation=True, max_length=6).input_ids[0]
    assert len(truncated) == 6 and truncated[-1] == 1


def test_t5_style_drives_the_t5_text_encoder():
    tokenizer = build_word_tokenizer(CAPTIONS, "t5", max_length=8)
    config = transformers.T5Config(vocab_size=len(tokenizer), d_model=16, d_kv=8, d_ff=32, num_layers=1, num_heads=2)
    encoder = T5TextEncoder(transformers.T5EncoderModel(config), tokenizer, max_length=8)
    ids, mask = encoder.tokenize(["a red circle", ""])
    assert mask.sum(1).tolist() == [4, 1]
    assert encoder.encode(["a red circle", ""]).hidden_states.shape == (2, 4, 16)


def test_clip_style_wraps_in_start_end_and_pads_with_end():
    tokenizer = build_word_tokenizer(CAPTIONS, "clip", max_length=8)
    assert (tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id, tokenizer.unk_token_id) == (0, 1, 1, 2)
    ids = tokenizer(["a red zebra", PROMPTS[-1]], padding="max_length", max_length=8, truncation=True).input_ids
    red, a = tokenizer.convert_tokens_to_ids("red"), tokenizer.convert_tokens_to_ids("a")
    assert ids[0] == [0, a, red, 2, 1, 1, 1, 1]
    assert ids[1][0] == 0 and ids[1][-1] == 1 and 1 not in ids[1][:-1]  # truncated, still ends with its end token


def test_unknown_style_is_refused():
    with pytest.raises(ValueError, match="style"):
        build_word_tokenizer(CAPTIONS, "bert", max_length=8)


# ---- VQ ----


def square_images(count: int = 8, size: int = 16, seed: int = 0) -> torch.Tensor:
    """Flat-coloured squares on flat backgrounds, in [0, 1]."""
    g = torch.Generator().manual_seed(seed)
    images = torch.rand(count, 3, 1, 1, generator=g).round().expand(count, 3, size, size).clone()
    for image in images:
        top, left = torch.randint(0, size // 2, (2,), generator=g).tolist()
        image[:, top : top + size // 2, left : left + size // 2] = torch.rand(3, 1, 1, generator=g)
    return images


def distance_to_nearest(codes: torch.Tensor, vectors: torch.Tensor) -> torch.Tensor:
    """Exact euclidean distance of each code to its nearest vector (cdist's matmul form is not exact near 0)."""
    return (codes[:, None] - vectors[None]).norm(dim=-1).amin(dim=1)


def encoder_outputs(objective, images) -> torch.Tensor:
    with torch.no_grad():
        z = objective.vq.quant_conv(objective.vq.encoder(images))
    return z.permute(0, 2, 3, 1).reshape(-1, z.shape[1])


def assert_nearest_codes(objective, images, got: torch.Tensor, expected: torch.Tensor, tolerance: float = 1e-3) -> None:
    """``got`` ids equal ``expected`` except at near ties: where they differ, both codes must be (within
    ``tolerance``, in latent units) equally near the trained model's latent, since last-bit differences of another
    computation path may break a tie either way. 1e-3: about the worst rounding of cdist's matmul form near 0
    (sqrt(eps) * |z|, |z| <= 2.2 here); in this test every latent's two nearest codes are >= 3e-3 apart."""
    differ = (got != expected).flatten()
    if not differ.any():
        return
    distances = torch.cdist(encoder_outputs(objective, images), objective.vq.quantize.embedding.weight.detach())
    rows = torch.arange(len(distances))
    gap = (distances[rows, got.flatten()] - distances[rows, expected.flatten()])[differ]
    worst = gap.abs().max()
    assert worst <= tolerance, f"{int(differ.sum())} ids differ by more than a tie (distance gap {worst:.3g})"


def tiny_vq(codebook_size: int = 32) -> VQTokenizer:
    torch.manual_seed(0)
    return VQTokenizer(small_vq_config(4, codebook_size, base_channels=16, embed_dim=4))


def train_steps(objective, batch, steps: int, lr: float = 3e-3) -> list[float]:
    optimizer = torch.optim.AdamW(objective.parameters(), lr=lr)
    losses = []
    for _ in range(steps):
        with torch.autocast("cpu", torch.bfloat16):
            loss, logs = objective(batch)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    return losses


def test_small_vq_config_layout():
    f4, f8 = small_vq_config(4, 512, 32), small_vq_config(8, 512, 32)
    assert f4.block_out_channels == (32, 64, 64) and f8.block_out_channels == (32, 64, 64, 64)
    assert VQTokenizer(f8).downsample_factor == 8 and not f8.mid_block_add_attention
    with pytest.raises(ValueError, match="power of two"):
        small_vq_config(6, 512, 32)


def test_vq_objective_learns_and_exports_the_trained_model(tmp_path):
    objective = VQObjective(tiny_vq())
    images = square_images()
    losses = train_steps(objective, {"images": images}, 40)
    assert sum(losses[-5:]) < 0.6 * sum(losses[:5])

    objective.eval()
    with torch.no_grad():
        _, logs = objective({"images": images})
        z = objective.vq.quant_conv(objective.vq.encoder(images))
        _, ids, _, _ = objective.quantize(z)
    assert set(logs) == {"rec", "commit", "consistency", "invariance", "perplexity", "codes_used"}
    # training quantises as encode does; bitwise: the same model, latents and cdist/argmin, in one process
    assert torch.equal(ids, objective.vq.encode(images))

    path = objective.export(tmp_path, "vqvae", dtype=torch.float32)
    assert path == tmp_path / "vqvae.safetensors"
    loaded = load_model(VQTokenizer, path)
    # Loading copies bytes: the weights are bitwise the trained ones. What is computed from them is not promised
    # bitwise: the loaded tensors sit at their file offsets (other alignments than torch's allocations), for which
    # CPU convolution/GEMM kernels may sum in another order (last-bit differences).
    trained, state = objective.vq.state_dict(), loaded.state_dict()
    assert state.keys() == trained.keys() and all(torch.equal(state[k], v) for k, v in trained.items())
    assert_nearest_codes(objective, images, loaded.encode(images), ids)
    # 1e-5: pixels in [0, 1]; fp32 rounding through the small decoder leaves ~1e-6.
    torch.testing.assert_close(loaded.decode(ids), objective.vq.decode(ids), rtol=0, atol=1e-5)

    half = load_model(VQTokenizer, objective.export(tmp_path, "vqvae_fp16"), dtype=None)
    assert half.dtype == torch.float16
    assert torch.allclose(half.decode(ids), objective.vq.decode(ids), atol=2e-2)


def test_vq_objective_refuses_images_outside_0_1():
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        VQObjective(tiny_vq())({"images": square_images() * 255})


def test_first_step_initialises_the_codebook_from_encoder_outputs():
    objective = VQObjective(tiny_vq())
    images = square_images()
    objective({"images": images})
    codebook = objective.vq.quantize.embedding.weight.detach()
    assert distance_to_nearest(codebook, encoder_outputs(objective, images)).max() < 1e-6  # each code is an output
    assert torch.allclose(objective.code_usage.sum(), torch.tensor(1.0), atol=1e-6)


def test_dead_codes_are_restarted_on_encoder_outputs():
    objective = VQObjective(tiny_vq(), restart_every=5)
    images = square_images()
    train_steps(objective, {"images": images}, 5)
    dead = torch.arange(0, 32, 2)
    with torch.no_grad():  # send half of the codebook far away: the encoder never picks those codes
        objective.vq.quantize.embedding.weight[dead] = 100.0
        objective.code_usage[dead] = 0.0
    objective({"images": images})  # step 5: a restart step
    codebook = objective.vq.quantize.embedding.weight.detach()
    assert distance_to_nearest(codebook[dead], encoder_outputs(objective, images)).max() < 1e-6
    assert (objective.code_usage[dead] > 0).all()


def test_restarts_seed_codes_where_the_codebook_is_poor():
    # 1000 outputs of one flat colour and 10 rare ones: uniform picks would put most codes on the flat
    # colour; k-means++ seeding gives each distinct output one code.
    rare = torch.randn(10, 8) * 5
    z = torch.cat([torch.zeros(1000, 8), rare])
    codebook = torch.full((16, 8), 100.0)
    dead = torch.arange(5, 16)  # 11 dead codes for 11 distinct outputs; codes 0-4 sit far away
    seeds = kmeans_plus_plus_seeds(z, codebook, dead)
    assert distance_to_nearest(torch.cat([torch.zeros(1, 8), rare]), seeds).max() < 1e-6


def test_patch_consistency_is_the_spread_of_latents_over_identical_patches():
    images = torch.zeros(2, 3, 8, 8)  # 2x2 patches of 4x4 pixels per image: 7 black, 1 white
    images[1, :, 4:, 4:] = 1.0
    z = torch.zeros(2, 2, 2, 2)
    assert patch_consistency_loss(images, z) == 0
    z[1, :, 1, 1] = 5.0  # the only white patch: all the spread is between groups
    assert patch_consistency_loss(images, z) == 0
    z[0, 0, 0, 0] = 7.0  # one black patch off
    black = z.permute(0, 2, 3, 1).reshape(8, 2)[:7]
    within = (black - black.mean(0)).square().sum()
    total = (z.permute(0, 2, 3, 1).reshape(8, 2) - z.permute(0, 2, 3, 1).reshape(8, 2).mean(0)).square().sum()
    assert torch.allclose(patch_consistency_loss(images, z), within / total)
    assert torch.allclose(patch_consistency_loss(images, 3 * z), within / total)  # a share: scale-free


def test_patch_consistency_gives_identical_patches_one_code():
    images = square_images(16)
    same_as_corner = (images == images[:, :, :1, :1]).all(dim=1)
    background = rearrange(same_as_corner, "b (h p) (w q) -> b h w (p q)", p=4, q=4).all(-1)  # flat background tokens
    codes_per_background = {}
    for weight in (0.0, 1.0):
        objective = VQObjective(tiny_vq(), patch_consistency=weight)
        train_steps(objective, {"images": images}, 60)
        ids = objective.vq.encode(images)
        codes_per_background[weight] = sum(len(i[b].unique()) for i, b in zip(ids, background)) / len(images)
    assert codes_per_background[1.0] < codes_per_background[0.0]


def test_boundary_patches_are_those_an_edge_crosses():
    images = torch.zeros(1, 3, 8, 8)
    images[0, 0, 2:, 4:] = 1.0  # a red block from row 2 on: its top edge crosses the top-right patch only
    assert boundary_patches(images, 4).tolist() == [[[False, True], [False, False]]]


def test_boundary_invariance_makes_boundary_latents_colour_blind():
    images = square_images(16)
    assert boundary_patches(images, 4).any()
    distances = {}
    for weight in (0.0, 1.0):
        objective = VQObjective(tiny_vq(), boundary_invariance=weight)
        train_steps(objective, {"images": images}, 60)
        torch.manual_seed(1)  # the same recolouring for both
        with torch.no_grad():
            z = objective.vq.quant_conv(objective.vq.encoder(images))
            distances[weight] = objective._boundary_invariance_loss(images, z).item()
    assert distances[1.0] < 0.5 * distances[0.0]


def _restart_on_two_ranks(rank: int, init_file: str, results: dict) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    torch.manual_seed(rank)  # different random picks on each rank: rank 0's must win
    objective = VQObjective(tiny_vq())
    objective({"images": square_images(seed=rank)})  # different data on each rank
    results[rank] = (objective.vq.quantize.embedding.weight.detach().clone(), objective.code_usage.clone())
    dist.destroy_process_group()


def test_restarts_are_identical_across_ranks(tmp_path):
    results = mp.Manager().dict()
    mp.spawn(_restart_on_two_ranks, args=(str(tmp_path / "init"), results), nprocs=2)
    (codebook0, usage0), (codebook1, usage1) = results[0], results[1]
    assert torch.equal(codebook0, codebook1) and torch.equal(usage0, usage1)


# ---- CLIP ----

IMAGE_SIZE = 32


@pytest.fixture
def clip_parts():
    tokenizer = build_word_tokenizer(CAPTIONS, "clip", max_length=16)
    torch.manual_seed(0)
    model = new_clip_model(tokenizer, IMAGE_SIZE, width=64, layers=2, heads=2, projection_dim=32)
    return model, tokenizer


def clip_batch(negatives=True) -> dict:
    captions = ["a red circle", "two blue squares", "a green triangle", "a red square"]
    own_negatives = [["a blue circle", "a red square"], [], ["two green triangles"], ["a red circle"]]
    images = torch.rand(4, 3, 40, 40, generator=torch.Generator().manual_seed(0))  # resized to 32 by the scorer
    return {"images": images, "captions": captions, "negatives": own_negatives if negatives else [[]] * 4}


def reference_loss(model, tokenizer, batch) -> torch.Tensor:
    """Per image: cross-entropy over [batch captions + own negatives]; per caption: over the images.
    Captions equal to the image's own caption count as neither right nor wrong (left out)."""
    scorer = ClipScorer(model, tokenizer)

    def text_features(texts):
        tokens = tokenizer(texts, padding="max_length", max_length=scorer.max_length, truncation=True, return_tensors="pt")
        return torch.nn.functional.normalize(model.text_projection(model.text_model(**tokens).pooler_output), dim=-1)

    pixels = scorer.preprocess(batch["images"])
    images = torch.nn.functional.normalize(model.visual_projection(model.vision_model(pixel_values=pixels).pooler_output), dim=-1)
    captions, scale = batch["captions"], model.logit_scale.exp()
    image_terms, text_terms = [], []
    for i, caption in enumerate(captions):
        texts = [caption] + [t for j, t in enumerate(captions) if t != caption] + [t for t in batch["negatives"][i] if t != caption]
        logits = scale * images[i] @ text_features(texts).T
        image_terms.append(-logits.log_softmax(0)[0])
        same = [j for j, other in enumerate(captions) if other == caption and j != i]
        others = [j for j in range(len(captions)) if j != i and j not in same]
        logits = scale * images[[i] + others] @ text_features([caption])[0]
        text_terms.append(-logits.log_softmax(0)[0])
    return (torch.stack(image_terms).mean() + torch.stack(text_terms).mean()) / 2


def test_clip_loss_uses_each_images_own_hard_negatives(clip_parts):
    model, tokenizer = clip_parts
    objective = ClipObjective(model, tokenizer)
    batch = clip_batch()
    loss, logs = objective(batch)
    assert loss.item() == pytest.approx(reference_loss(model, tokenizer, batch).item(), rel=1e-4)
    plain, _ = objective(clip_batch(negatives=False))
    assert plain.item() == pytest.approx(reference_loss(model, tokenizer, clip_batch(negatives=False)).item(), rel=1e-4)
    assert loss.item() > plain.item()  # more candidates per image
    assert set(logs) == {"loss", "i2t_acc", "logit_scale"}


def test_paste_specks_changes_one_small_square_per_image_and_skips_invisible_ones():
    images = torch.zeros(4, 3, 40, 40)
    images[1::2] = 1.0  # black, white, black, white: every pasted block is fully visible
    torch.manual_seed(0)
    specked, owners = paste_specks(images)
    assert owners.tolist() == [0, 1, 2, 3]
    for copy, owner in zip(specked, owners):
        rows, cols = (copy != images[owner]).any(0).nonzero(as_tuple=True)
        height, width = rows.max() - rows.min() + 1, cols.max() - cols.min() + 1
        assert height == width and 2 <= height <= 5  # 5% to 12.5% of a 40 px side
        assert len(rows) == height * width  # one solid square, nothing else touched
        assert (copy[:, rows, cols] == images[owner - 1][:, rows, cols]).all()  # pasted from the previous image
    assert len(paste_specks(torch.zeros(4, 3, 40, 40))[0]) == 0  # a block of the same colour changes nothing


def test_clip_speck_negatives_ask_each_caption_to_prefer_its_clean_image(clip_parts):
    model, tokenizer = clip_parts
    batch = clip_batch()
    torch.manual_seed(0)
    loss, logs = ClipObjective(model, tokenizer, speck_negatives=True)(batch)

    torch.manual_seed(0)  # the same blocks as the objective drew
    specked, owners = paste_specks(batch["images"])
    scorer = ClipScorer(model, tokenizer)
    clean = scorer.score(batch["images"][owners], [batch["captions"][i] for i in owners])
    spoiled = scorer.score(specked, [batch["captions"][i] for i in owners])
    speck_term = torch.nn.functional.softplus(model.logit_scale.exp() * (spoiled - clean)).mean()
    assert len(owners) == 4 and logs["speck"] == pytest.approx(speck_term.item(), rel=1e-4)
    assert loss.item() == pytest.approx(reference_loss(model, tokenizer, batch).item() + speck_term.item(), rel=1e-4)
    loss.backward()  # the term trains both towers
    assert model.vision_model.embeddings.patch_embedding.weight.grad.abs().sum() > 0


def test_clip_objective_learns_and_exports_for_the_reranker(clip_parts, tmp_path):
    model, tokenizer = clip_parts
    objective = ClipObjective(model, tokenizer)
    batch = clip_batch()
    losses = train_steps(objective, batch, 25, lr=1e-3)
    assert losses[-1] < 0.3 * losses[0]

    objective.eval()
    folder = objective.export(tmp_path / "reranker", dtype=torch.float32)
    assert sorted(p.name for p in folder.iterdir()) == ["config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"]
    saved = json.loads((folder / "tokenizer.json").read_text())  # the scorer's fixed length, not training's
    assert saved["padding"]["strategy"] == {"Fixed": 16} and saved["truncation"]["max_length"] == 16
    scorer = load_clip_scorer(folder)
    expected = ClipScorer(model, tokenizer).score(batch["images"], batch["captions"])
    assert torch.allclose(scorer.score(batch["images"], batch["captions"]), expected, atol=1e-6)
    assert scorer.rerank(batch["images"], "a red circle").best_index == 0  # learned: image 0 is the red circle

    half = load_clip_scorer(objective.export(tmp_path / "fp16"), dtype=torch.float16)
    assert torch.allclose(half.score(batch["images"], batch["captions"]), expected, atol=2e-2)


def test_clip_config_must_agree_with_the_tokenizer(clip_parts):
    _, tokenizer = clip_parts
    wrong_eos = small_clip_config(len(tokenizer), IMAGE_SIZE, 0, 3, 3, width=64, layers=1, heads=2)
    with pytest.raises(ValueError, match="eos_token_id=3"):
        ClipObjective(transformers.CLIPModel(wrong_eos), tokenizer)
    with pytest.raises(ValueError, match="pool at the highest token id"):
        small_clip_config(len(tokenizer), IMAGE_SIZE, 0, 2, 2)
    small = small_clip_config(4, IMAGE_SIZE, 0, 1, 1, width=64, layers=1, heads=2)
    with pytest.raises(ValueError, match="vocab_size"):
        ClipObjective(transformers.CLIPModel(small), tokenizer)
