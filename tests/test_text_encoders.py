"""Text encoders against transformers run directly on the same token ids.

Tiny seeded CLIPTextModelWithProjection / T5EncoderModel and tiny tokenizers are built offline, saved
as a model folder, a diffusers pipeline folder and a single ComfyUI-style .safetensors file, then
loaded through our loaders. The CLIP reference is diffusers' AmusedPipeline call:
``text_encoder(ids, return_dict=True, output_hidden_states=True)`` -> ``hidden_states[-2]``, ``text_embeds``.
"""

from __future__ import annotations

import json
import logging
import shutil

import pytest
import torch
from safetensors.torch import save_file

from muse_core.loading import CheckpointError
from muse_core.pipeline import DEFAULT_MODEL_DIR
from muse_core.text import TextConditioning, load_clip_encoder, load_t5_encoder

from .helpers import CLIP_LENGTH, write_text_encoder_layouts
from .reference import clip_reference, randomize_

transformers = pytest.importorskip("transformers")

from tokenizers import Tokenizer, models, pre_tokenizers, processors  # noqa: E402  (after importorskip)

PROMPTS = ["a red cat on the mat", "", "dog"]  # different lengths; "" is CFG's unconditional prompt
TOLERANCE = 1e-5


# ---- tiny CLIP (conftest.clip_text_setup) ----


@pytest.mark.parametrize("layout", ["folder", "pipeline", "single_file"])
def test_clip_matches_transformers(clip_text_setup, layout):
    model, tokenizer, layouts = clip_text_setup
    path, tokenizer_path = layouts[layout]
    encoder = load_clip_encoder(path, tokenizer_path=tokenizer_path)
    cond = encoder.encode(PROMPTS)
    hidden, pooled = clip_reference(model, tokenizer, PROMPTS)

    assert (encoder.hidden_size, encoder.pooled_size, encoder.max_length) == (128, 48, CLIP_LENGTH)
    assert cond.hidden_states.shape == (3, CLIP_LENGTH, 128) and cond.pooled.shape == (3, 48)
    assert cond.attention_mask.all()  # aMUSEd attends to padding too
    assert (cond.hidden_states - hidden).abs().max() <= TOLERANCE
    assert (cond.pooled - pooled).abs().max() <= TOLERANCE
    positions = encoder.model.text_model.embeddings.position_ids
    assert torch.equal(positions, torch.arange(CLIP_LENGTH)[None])


def test_clip_missing_projection_is_identity(clip_text_setup, tmp_path, caplog):
    model, tokenizer, layouts = clip_text_setup
    state = {k: v for k, v in model.state_dict().items() if k != "text_projection.weight"}
    save_file(state, str(tmp_path / "clip_no_proj.safetensors"))
    with caplog.at_level(logging.WARNING, logger="muse_core"):
        encoder = load_clip_encoder(tmp_path / "clip_no_proj.safetensors", tokenizer_path=layouts["single_file"][1])
    assert "text_projection" in caplog.text and encoder.pooled_size == 128
    ids = tokenizer(["a cat"], padding="max_length", max_length=CLIP_LENGTH, return_tensors="pt").input_ids
    with torch.no_grad():
        expected = model.text_model(ids).pooler_output
    assert (encoder.encode(["a cat"]).pooled - expected).abs().max() <= TOLERANCE


# ---- tiny T5 ----

T5_WORDS = ["<pad>", "</s>", "<unk>", "a", "red", "cat", "on", "the", "mat", "dog", "blue", "sky"]


def write_t5_tokenizer(folder):
    """A word-level tokenizer.json that appends </s>, like the project's future small T5."""
    backend = Tokenizer(models.WordLevel({w: i for i, w in enumerate(T5_WORDS)}, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    backend.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    tokenizer = transformers.PreTrainedTokenizerFast(
        tokenizer_object=backend, pad_token="<pad>", eos_token="</s>", unk_token="<unk>"
    )
    tokenizer.save_pretrained(str(folder))
    return folder


def tiny_t5(feed_forward_proj="gated-gelu", seed=0):
    config = transformers.T5Config(
        vocab_size=16, d_model=32, d_kv=8, num_heads=4, d_ff=64, num_layers=2, dropout_rate=0.0,
        feed_forward_proj=feed_forward_proj,
    )
    torch.manual_seed(seed)
    return randomize_(transformers.T5EncoderModel(config), seed=seed).eval()


def t5_file_state(model):
    """HF key layout as ComfyUI's t5xxl files have it: shared.weight and encoder.* (tied copy included)."""
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    state["encoder.embed_tokens.weight"] = state["shared.weight"].clone()
    return state


@pytest.fixture(scope="module")
def t5_setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("t5")
    model = tiny_t5()
    tokenizer_dir = write_t5_tokenizer(root / "t5_tokenizer")
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(tokenizer_dir), local_files_only=True)
    layouts = write_text_encoder_layouts(root, model, tokenizer_dir, "t5_tiny.safetensors", t5_file_state(model))
    return model, tokenizer, layouts


def t5_reference(model, tokenizer, prompts):
    batch = tokenizer(prompts, padding="longest", return_tensors="pt")
    with torch.no_grad():
        hidden = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).last_hidden_state
    return hidden, batch.attention_mask.bool()


def assert_t5_matches(cond, model, tokenizer, prompts):
    hidden, mask = t5_reference(model, tokenizer, prompts)
    assert torch.equal(cond.attention_mask, mask)
    assert (cond.hidden_states - hidden)[mask].abs().max() <= TOLERANCE
    assert (cond.hidden_states[~mask] == 0).all()
    mean = (hidden * mask[..., None]).sum(1) / mask.sum(1, keepdim=True)
    assert (cond.pooled - mean).abs().max() <= TOLERANCE


@pytest.mark.parametrize("layout", ["folder", "pipeline", "single_file"])
def test_t5_matches_transformers(t5_setup, layout):
    model, tokenizer, layouts = t5_setup
    path, tokenizer_path = layouts[layout]
    encoder = load_t5_encoder(path, tokenizer_path=tokenizer_path)
    cond = encoder.encode(PROMPTS)
    assert cond.hidden_states.shape == (3, 7, 32)  # padded to the longest prompt: 6 words + </s>
    assert cond.attention_mask.sum(1).tolist() == [7, 1, 2]  # "" is just </s>
    assert_t5_matches(cond, model, tokenizer, PROMPTS)
    assert encoder.model.encoder.embed_tokens.weight is encoder.model.shared.weight  # still tied


def test_t5_relu_single_file(t5_setup, tmp_path):
    """Original-T5 ("relu", single wi) feed-forward is inferred from the keys."""
    _, tokenizer, layouts = t5_setup
    model = tiny_t5("relu", seed=1)
    save_file(t5_file_state(model), str(tmp_path / "t5_relu.safetensors"))
    encoder = load_t5_encoder(tmp_path / "t5_relu.safetensors", tokenizer_path=layouts["single_file"][1])
    assert encoder.model.config.feed_forward_proj == "relu"
    assert_t5_matches(encoder.encode(PROMPTS), model, tokenizer, PROMPTS)


def test_t5_truncates_with_warning(t5_setup, caplog):
    _, _, layouts = t5_setup
    encoder = load_t5_encoder(*layouts["folder"][:1], max_length=4)
    with caplog.at_level(logging.WARNING, logger="muse_core"):
        cond = encoder.encode(["a red cat on the mat", "dog"])
    assert "only the first 4" in caplog.text
    assert cond.hidden_states.shape[1] == 4
    ids, _ = encoder.tokenize(["a red cat on the mat"])
    assert ids[0, -1].item() == 1  # truncation keeps the closing </s>


def test_t5_fp16_keeps_wo_in_fp32(t5_setup):
    """As transformers' from_pretrained does (T5's _keep_in_fp32_modules)."""
    _, _, layouts = t5_setup
    encoder = load_t5_encoder(layouts["folder"][0], dtype=torch.float16)
    ff = encoder.model.encoder.block[0].layer[1].DenseReluDense
    assert ff.wo.weight.dtype == torch.float32 and ff.wi_0.weight.dtype == torch.float16


def test_t5_comfy_scaled_fp8(t5_setup, tmp_path):
    """ComfyUI "scaled fp8" files: fp8 weights times a float32 scale_weight."""
    model, tokenizer, layouts = t5_setup
    state, dequantized = t5_file_state(model), {}
    for key in [k for k in state if k.endswith(("q.weight", "wi_0.weight"))]:
        scale = state[key].abs().max() / 448
        state[key] = (state[key] / scale).to(torch.float8_e4m3fn)
        state[key.removesuffix("weight") + "scale_weight"] = scale
        dequantized[key] = state[key].float() * scale
    state["scaled_fp8"] = torch.empty(0, dtype=torch.float8_e4m3fn)
    save_file(state, str(tmp_path / "t5_fp8_scaled.safetensors"))
    encoder = load_t5_encoder(tmp_path / "t5_fp8_scaled.safetensors", tokenizer_path=layouts["single_file"][1])
    reference = tiny_t5()
    reference.load_state_dict(dequantized, strict=False)
    assert_t5_matches(encoder.encode(PROMPTS), reference, tokenizer, PROMPTS)


# ---- errors ----


def test_bad_prompts_raise(t5_setup):
    encoder = load_t5_encoder(t5_setup[2]["folder"][0])
    for bad in ([], None, ["a cat", 3], [None]):
        with pytest.raises(ValueError, match="prompt"):
            encoder.encode(bad)
    assert len(encoder.encode("a cat")) == 1  # a lone string is a batch of one


def test_missing_tokenizer_raises(t5_setup, clip_text_setup, tmp_path):
    single = t5_setup[2]["single_file"][0]
    with pytest.raises(CheckpointError, match="no tokenizer found.*tokenizer_path"):
        load_t5_encoder(single)
    with pytest.raises(CheckpointError, match="no tokenizer found"):
        load_clip_encoder(clip_text_setup[2]["single_file"][0], tokenizer_path=tmp_path)


def test_pickle_files_refused(t5_setup, tmp_path):
    (tmp_path / "t5.bin").write_bytes(b"not opened")
    with pytest.raises(CheckpointError, match="pickle"):
        load_t5_encoder(tmp_path / "t5.bin", tokenizer_path=t5_setup[2]["single_file"][1])
    folder = tmp_path / "hf"
    shutil.copytree(t5_setup[2]["folder"][0], folder)
    (folder / "model.safetensors").unlink()
    (folder / "pytorch_model.bin").write_bytes(b"not opened")
    with pytest.raises(CheckpointError, match="pickle"):
        load_t5_encoder(folder)


def test_wrong_model_or_tokenizer_raises(t5_setup, clip_text_setup):
    with pytest.raises(CheckpointError, match="not a CLIP text encoder"):
        load_clip_encoder(t5_setup[2]["single_file"][0], tokenizer_path=clip_text_setup[2]["single_file"][1])
    with pytest.raises(CheckpointError, match="not T5"):
        load_t5_encoder(clip_text_setup[2]["folder"][0])
    with pytest.raises(CheckpointError, match="tokenizer has"):  # 56-token CLIP vocabulary, 16-token T5
        load_t5_encoder(t5_setup[2]["single_file"][0], tokenizer_path=clip_text_setup[2]["single_file"][1])


# ---- TextConditioning ----


def make_conditioning(batch, length, seed=0):
    g = torch.Generator().manual_seed(seed)
    mask = torch.ones(batch, length, dtype=torch.bool)
    return TextConditioning(torch.randn(batch, length, 4, generator=g), mask, torch.randn(batch, 3, generator=g))


def test_conditioning_helpers():
    a, b = make_conditioning(2, 5), make_conditioning(1, 3, seed=1)
    both = TextConditioning.cat([a, b])
    assert len(both) == 3 and both.hidden_states.shape == (3, 5, 4)
    assert both.attention_mask.sum(1).tolist() == [5, 5, 3]
    assert (both.hidden_states[2, 3:] == 0).all() and torch.equal(both[2].hidden_states[:, :3], b.hidden_states)
    assert torch.equal(both[0:2].pooled, a.pooled) and torch.equal(both[-1].pooled, b.pooled)

    repeated = a.repeat_interleave(2)
    assert len(repeated) == 4 and torch.equal(repeated.pooled[1], a.pooled[0])
    half = a.to(dtype=torch.float16)
    assert half.hidden_states.dtype == torch.float16 and half.attention_mask.dtype == torch.bool

    with pytest.raises(ValueError, match="attention_mask"):
        TextConditioning(a.hidden_states, a.attention_mask.long(), a.pooled)
    with pytest.raises(ValueError, match="at least one"):
        TextConditioning.cat([])


def test_full_clip_folder_as_text_encoder_uses_the_top_level_projection():
    """A full CLIP model's config.json may carry CLIPTextConfig's default projection_dim (512) in its
    text_config beside the real top-level one; CLIPModel builds its text projection from the top level."""
    folder = DEFAULT_MODEL_DIR / "reranker"
    config = json.loads((folder / "config.json").read_text())
    assert config["text_config"]["projection_dim"] != config["projection_dim"]  # the case this test is about
    encoder = load_clip_encoder(folder, tokenizer_path=folder)
    reference = transformers.CLIPModel.from_pretrained(folder).float().eval()
    ids = encoder.tokenize(["a red circle"])
    with torch.no_grad():
        expected = reference.text_projection(reference.text_model(input_ids=ids).pooler_output)
    assert torch.allclose(encoder.encode(["a red circle"]).pooled, expected, atol=1e-5)
