"""Muse LoRA Loader on the embedded model: it patches, leaves its inputs untouched, chains, and refuses bad files."""

from __future__ import annotations

import copy
import json
import shutil
from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from muse_core.loading import CheckpointError
from muse_core.loading.lora import apply_lora
from muse_core.pipeline import DEFAULT_MODEL_DIR

from .comfy_harness import ROOT, decoding, pack_module, run_api

EXAMPLE_LORA = "example/muse_example_lora.safetensors"  # the pack's own, from example_inputs/


def write_lora(path, parts: dict[str, nn.Module], seed: int = 0, rank: int = 2) -> None:
    """A LoRA in diffusers' aMUSEd key layout with random A and B for every other Linear layer of each part
    (``{"transformer": model, "text_encoder": hf_model}``): big enough to change every output, while the
    layers it leaves alone show that a patched copy shares them."""
    generator = torch.Generator().manual_seed(seed)
    tensors = {}
    for prefix, model in parts.items():
        linears = [(name, module) for name, module in model.named_modules() if isinstance(module, nn.Linear)]
        for name, module in linears[::2]:
            tensors[f"{prefix}.{name}.lora_A.weight"] = torch.randn(rank, module.in_features, generator=generator)
            tensors[f"{prefix}.{name}.lora_B.weight"] = torch.randn(module.out_features, rank, generator=generator) * 0.2
    save_file(tensors, str(path))


@pytest.fixture(scope="module")
def embedded(nodes):
    """(transformer, vq, text_encoder) of the embedded model, loaded once."""
    return nodes["MuseModelLoader"]().load("embedded", "auto", "cpu", "auto")[:3]


@pytest.fixture(scope="module")
def loras(embedded, tmp_path_factory):
    """A models/loras folder: style (transformer and text encoder), other (transformer), text_only."""
    folder = tmp_path_factory.mktemp("loras")
    transformer, text_encoder = embedded[0].model, embedded[2].model.model
    write_lora(folder / "style.safetensors", {"transformer": transformer, "text_encoder": text_encoder})
    write_lora(folder / "other.safetensors", {"transformer": transformer}, seed=1)
    write_lora(folder / "text_only.safetensors", {"text_encoder": text_encoder}, seed=2)
    return folder


@pytest.fixture(autouse=True)
def lora_folders(monkeypatch, loras):
    """ComfyUI's folder_paths as the pack sees it inside ComfyUI, models/loras being the folder above; a test
    may add its own folder to the list."""
    comfy_env = pack_module("comfy_env")
    folders = {"loras": [str(loras)]}
    monkeypatch.setattr(comfy_env, "folder_paths", SimpleNamespace(get_folder_paths=lambda kind: folders[kind]))
    return folders["loras"]


def load_lora(nodes, transformer, text_encoder, name, strength):
    return nodes["MuseLoraLoader"]().load(transformer, name, strength, text_encoder)


def weights(loaded) -> dict[str, torch.Tensor]:
    return {name: tensor.clone() for name, tensor in loaded.module.state_dict().items()}


def same_weights(loaded, expected: dict[str, torch.Tensor]) -> bool:
    state = loaded.module.state_dict()
    return state.keys() == expected.keys() and all(torch.equal(state[name], expected[name]) for name in expected)


def logits(transformer, text_encoder, prompt="two red circles on a blue background"):
    model = transformer.model
    cond = text_encoder.model.encode([prompt])
    ids = torch.randint(0, model.mask_token_id + 1, (1, 16, 16), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        return model(ids, cond.hidden_states, cond.pooled, model.default_micro_conds(64, 64, 1), cond.attention_mask)


def test_the_lists_offer_the_files_of_models_loras(nodes):
    names = nodes["MuseLoraLoader"].INPUT_TYPES()["required"]["lora_name"][0]
    assert names == [EXAMPLE_LORA, "other.safetensors", "style.safetensors", "text_only.safetensors"]


def test_an_empty_loras_folder_is_one_entry_that_says_what_to_install(nodes, embedded, lora_folders, monkeypatch,
                                                                      tmp_path):
    lora_folders.clear()
    assert nodes["MuseLoraLoader"].INPUT_TYPES()["required"]["lora_name"][0] == [EXAMPLE_LORA]
    lora_module = pack_module("lora")
    monkeypatch.setattr(lora_module, "EXAMPLE_INPUTS", tmp_path)  # a pack without its example LoRA
    (name,) = nodes["MuseLoraLoader"].INPUT_TYPES()["required"]["lora_name"][0]
    assert "models/loras" in name
    with pytest.raises(FileNotFoundError, match=r"no LoRA is installed. Put .* in ComfyUI/models/loras.*press R"):
        load_lora(nodes, embedded[0], embedded[2], name, 1.0)


def test_patches_a_copy_and_leaves_the_input_models_unchanged(nodes, embedded, loras):
    transformer, _, text_encoder = embedded
    before = weights(transformer), weights(text_encoder)
    base = logits(transformer, text_encoder)
    patched = load_lora(nodes, transformer, text_encoder, "style.safetensors", 1.0)
    assert patched[0] is not transformer and patched[1] is not text_encoder
    in_file = {key.removeprefix("transformer.").removesuffix(".lora_A.weight")
               for key in load_file(loras / "style.safetensors") if key.startswith("transformer.") and "lora_A" in key}
    copied = {name for name, module in transformer.model.named_modules() if isinstance(module, nn.Linear)
              and module.weight.data_ptr() != patched[0].model.get_submodule(name).weight.data_ptr()}
    assert copied == in_file, "the copy holds new tensors for the patched weights and shares all others"
    assert not torch.equal(logits(*patched), base)
    assert not torch.equal(logits(patched[0], text_encoder), base)  # the transformer's part alone matters
    assert not torch.equal(logits(transformer, patched[1]), base)  # and the text encoder's
    assert same_weights(transformer, before[0]) and same_weights(text_encoder, before[1])
    assert torch.equal(logits(transformer, text_encoder), base)


def test_strength_zero_samples_bitwise_what_the_base_model_samples(nodes, embedded):
    transformer, vq, text_encoder = embedded

    def sample(transformer, text_encoder):
        conditioning = nodes["MuseTextEncode"]().encode(text_encoder, "a red circle", "")[0]
        return nodes["MuseSampler"]().sample(transformer, vq, conditioning, 64, 64, 1, 1.0, **decoding(steps=3))

    base_tokens, base_images = sample(transformer, text_encoder)
    tokens, images = sample(*load_lora(nodes, transformer, text_encoder, "style.safetensors", 0.0))
    assert torch.equal(tokens.ids, base_tokens.ids) and torch.equal(images, base_images)


def test_chained_loaders_apply_both_loras(nodes, embedded, loras):
    transformer, _, text_encoder = embedded
    first = load_lora(nodes, transformer, text_encoder, "style.safetensors", 0.7)
    second = load_lora(nodes, *first, "other.safetensors", -0.4)
    expected = SimpleNamespace(transformer=copy.deepcopy(transformer.model), text_encoder=copy.deepcopy(text_encoder.model))
    apply_lora(expected, loras / "style.safetensors", 0.7)
    apply_lora(expected, loras / "other.safetensors", -0.4)
    assert same_weights(second[0], expected.transformer.state_dict())
    assert same_weights(second[1], expected.text_encoder.state_dict())
    assert not same_weights(second[0], first[0].module.state_dict())


def test_a_lora_that_does_not_fit_is_refused_before_any_copy(nodes, embedded, lora_folders, tmp_path):
    transformer, _, text_encoder = embedded
    lora_folders.append(str(tmp_path))
    write_lora(tmp_path / "wrong.safetensors", {"transformer": nn.Sequential(nn.Linear(3, 5), nn.Linear(5, 3))})
    before = weights(transformer)
    with pytest.raises(CheckpointError, match=r"not a LoRA for this model.*transformer\.0"):
        load_lora(nodes, transformer, text_encoder, "wrong.safetensors", 1.0)
    assert same_weights(transformer, before)


def test_a_file_that_is_no_lora_names_the_problem(nodes, embedded, lora_folders, tmp_path):
    lora_folders.append(str(tmp_path))
    shutil.copy(DEFAULT_MODEL_DIR / "vqvae.safetensors", tmp_path / "my_vq.safetensors")
    with pytest.raises(CheckpointError, match="holds no LoRA weights"):
        load_lora(nodes, embedded[0], embedded[2], "my_vq.safetensors", 1.0)
    (tmp_path / "broken.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(CheckpointError, match="not a readable safetensors file"):
        load_lora(nodes, embedded[0], embedded[2], "broken.safetensors", 1.0)
    with pytest.raises(FileNotFoundError, match="gone.safetensors: model not found"):
        load_lora(nodes, embedded[0], embedded[2], "gone.safetensors", 1.0)


def test_a_text_encoder_lora_asks_for_the_text_encoder(nodes, embedded):
    with pytest.raises(ValueError, match="also patches the text encoder. Connect the text encoder"):
        load_lora(nodes, embedded[0], None, "style.safetensors", 1.0)
    transformer, text_encoder = load_lora(nodes, embedded[0], embedded[2], "text_only.safetensors", 1.0)
    assert same_weights(transformer, embedded[0].module.state_dict())
    assert not same_weights(text_encoder, embedded[2].module.state_dict())


def test_in_a_headless_graph_between_loader_and_sampler(nodes, embedded):
    class CachedLoader(nodes["MuseModelLoader"]):  # the embedded model once, as ComfyUI's cache would give it
        def load(self, **widgets):
            return (*embedded, None, None)

    graph = json.loads((ROOT / "workflows" / "api" / "muse_text_to_image.json").read_text())
    del graph["4"]  # Save Image
    graph["3"]["inputs"].update(decoding(steps=3), batch_size=1, sampling_from="widgets")
    graph["5"] = {"class_type": "MuseLoraLoader", "inputs": {
        "transformer": ["1", 0], "text_encoder": ["1", 2], "lora_name": "style.safetensors", "strength": 1.0}}
    mappings = {**nodes, "MuseModelLoader": CachedLoader}
    base = run_api(graph, mappings)["3"]["result"][0].ids
    graph["2"]["inputs"]["text_encoder"], graph["3"]["inputs"]["transformer"] = ["5", 1], ["5", 0]
    assert not torch.equal(run_api(graph, mappings)["3"]["result"][0].ids, base)
    graph["5"]["inputs"]["strength"] = 11.0
    with pytest.raises(ValueError, match="strength.*outside"):
        run_api(graph, mappings)
