"""LoRA files in diffusers' aMUSEd format: our weight patches compute what diffusers' PEFT layers compute."""

import copy

import pytest
import torch
from safetensors.torch import load_file, save_file

from muse_core import CheckpointError, load_pipeline
from muse_core.loading.lora import apply_lora

from .helpers import PIPE_UVIT, uvit_inputs
from .reference import clip_reference, relative_max_diff

peft = pytest.importorskip("peft")
diffusers = pytest.importorskip("diffusers")
from diffusers.loaders import AmusedLoraLoaderMixin  # noqa: E402
from peft.tuners.tuners_utils import BaseTunerLayer  # noqa: E402

UVIT_TARGETS = ["to_q", "to_k", "to_v", "to_out.0", "linear_1", "linear_2", "encoder_proj"]
CLIP_TARGETS = ["q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2"]
# Fused W + BA is rounded once per weight while PEFT adds B(Ax) as a separate branch; through 2 text and
# 2+4 U-ViT layers of std-0.2 random weights that is ~2e-5 absolute on logits of size ~10, so relative.
RTOL = 1e-5


def _with_adapter(model, targets, seed):
    model.add_adapter(peft.LoraConfig(r=4, lora_alpha=4, target_modules=targets, init_lora_weights=False))
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:  # PEFT starts B at zero; random B makes the LoRA matter
                p.copy_(torch.randn(p.shape, generator=g) * 0.1)
    return peft.utils.get_peft_model_state_dict(model)


@pytest.fixture
def lora_setup(amused_folder, tmp_path):
    """(our pipeline, (diffusers UVit2DModel, CLIP model) with the LoRA loaded by diffusers, tokenizer, file)."""
    folder, transformer, clip_model, tokenizer = amused_folder
    ours = load_pipeline(folder)
    trained_t, trained_c = copy.deepcopy(transformer), copy.deepcopy(clip_model)
    layers_t = _with_adapter(trained_t, UVIT_TARGETS, 1)
    layers_c = _with_adapter(trained_c, CLIP_TARGETS, 2)
    AmusedLoraLoaderMixin.save_lora_weights(tmp_path / "lora", text_encoder_lora_layers=layers_c,
                                               transformer_lora_layers=layers_t)
    path = tmp_path / "lora" / "pytorch_lora_weights.safetensors"
    # AmusedPipeline does not mix AmusedLoraLoaderMixin in (diffusers 0.42), and the mixin's inherited
    # load_lora_weights looks for a unet: load through its two classmethods, as that method would.
    state_dict, alphas = AmusedLoraLoaderMixin.lora_state_dict(str(path.parent))
    AmusedLoraLoaderMixin.load_lora_into_transformer(state_dict, alphas, transformer)
    # The text side is compared with the trained PEFT model itself: diffusers 0.42's text-encoder path
    # misses transformers 5's CLIP names (its load report lists every LoRA key MISSING).
    return ours, (transformer, trained_c), tokenizer, path


def _set_strength(models, strength):
    """PEFT's own scale knob: scaling = strength * lora_alpha / r, what set_adapters weights do."""
    for model in models:
        for module in model.modules():
            if isinstance(module, BaseTunerLayer):
                for adapter in module.active_adapters:
                    module.set_scale(adapter, strength)


def _logits(pipe, prompts, micro, ids):
    cond = pipe.text_encoder.encode(prompts)
    with torch.no_grad():
        return pipe.transformer(ids, cond.hidden_states, cond.pooled, micro, cond.attention_mask)


def test_file_format_is_diffusers_amused(lora_setup):
    keys = load_file(lora_setup[3]).keys()
    assert any(k.startswith("transformer.") and k.endswith(".lora_A.weight") for k in keys)
    assert any(k.startswith("text_encoder.") and k.endswith(".lora_B.weight") for k in keys)


@pytest.mark.parametrize("strength", [1.0, 0.5])
def test_matches_diffusers(lora_setup, strength):
    ours, ref, tokenizer, path = lora_setup
    prompts = ["a cat", ""]
    ids, _, _, micro = uvit_inputs(PIPE_UVIT)
    _set_strength(ref, strength)
    hidden, pooled = clip_reference(ref[1], tokenizer, prompts)
    with torch.no_grad():
        theirs = ref[0](ids, hidden, pooled, micro)
    base = _logits(ours, prompts, micro, ids)
    apply_lora(ours, path, strength)
    patched = _logits(ours, prompts, micro, ids)
    assert relative_max_diff(base, theirs) > 100 * RTOL  # the LoRA changes the outputs
    assert relative_max_diff(patched, theirs) <= RTOL


def test_strength_zero_and_remove_are_bitwise(lora_setup):
    ours, _, _, path = lora_setup
    before = {k: v.clone() for k, v in ours.transformer.state_dict().items()}
    before_text = {k: v.clone() for k, v in ours.text_encoder.model.state_dict().items()}
    apply_lora(ours, path, 0.0)
    assert all(torch.equal(v, before[k]) for k, v in ours.transformer.state_dict().items())
    first, second = apply_lora(ours, path, 0.7), apply_lora(ours, path, -0.3)  # chained
    assert not all(torch.equal(v, before[k]) for k, v in ours.transformer.state_dict().items())
    second.remove()
    first.remove()
    assert all(torch.equal(v, before[k]) for k, v in ours.transformer.state_dict().items())
    assert all(torch.equal(v, before_text[k]) for k, v in ours.text_encoder.model.state_dict().items())


@pytest.mark.parametrize("damage", ["unknown", "shape"])
def test_bad_keys_are_refused_before_any_change(lora_setup, tmp_path, damage):
    ours, _, _, path = lora_setup
    tensors = load_file(path)
    if damage == "unknown":
        tensors["transformer.no_such_layer.lora_A.weight"] = torch.ones(4, 8)
        tensors["transformer.no_such_layer.lora_B.weight"] = torch.ones(8, 4)
        expected = "transformer.no_such_layer"
    else:
        key = next(k for k in tensors if k.startswith("transformer.") and k.endswith("lora_B.weight"))
        tensors[key] = torch.ones(tensors[key].shape[0] + 1, tensors[key].shape[1])
        expected = key.removesuffix(".lora_B.weight")
    bad = tmp_path / "bad.safetensors"
    save_file(tensors, bad)
    before = {k: v.clone() for k, v in ours.transformer.state_dict().items()}
    with pytest.raises(CheckpointError, match=expected.replace(".", r"\.")):
        apply_lora(ours, bad)
    assert all(torch.equal(v, before[k]) for k, v in ours.transformer.state_dict().items())


@pytest.mark.parametrize("strength", [float("nan"), float("inf")])
def test_non_finite_strength_is_refused(lora_setup, strength):
    with pytest.raises(ValueError, match="finite"):
        apply_lora(lora_setup[0], lora_setup[3], strength)
