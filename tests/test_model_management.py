"""Models under ComfyUI's model management (a ModelPatcher each, loaded with load_models_gpu and left loaded),
checked against tools/comfy_offline.ModelManagementDouble; outside ComfyUI, the stand-in that moves a model for
each node's work and back."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from .comfy_harness import ROOT, ModelManagementDouble, core_nodes, decoding, load_workflow, pack_module, run_api
from .test_lora_nodes import write_lora

TEXT_ENCODER, TRANSFORMER, VQ = "text encoder of 'embedded'", "transformer of 'embedded'", "VQ of 'embedded'"


@pytest.fixture
def install_comfy(pack, monkeypatch):
    """Puts a ModelManagementDouble where the pack finds comfy.model_management and comfy.model_patcher."""
    comfy_env = pack_module("comfy_env")

    def install(double: ModelManagementDouble) -> ModelManagementDouble:
        monkeypatch.setattr(comfy_env, "model_management", double)
        monkeypatch.setattr(comfy_env, "model_patcher", double.model_patcher)
        return double

    return install


@pytest.fixture
def comfy(install_comfy):
    return install_comfy(ModelManagementDouble())


@pytest.fixture
def mappings(nodes, tmp_path):
    return {**core_nodes(tmp_path).mappings, **nodes}


def workflow(name: str) -> dict:
    return load_workflow(ROOT / "workflows" / "api" / f"{name}.json")


def sample(nodes, transformer, vq, conditioning, seed=0):
    return nodes["MuseSampler"]().sample(transformer, vq, conditioning, 64, 64, 1, 1.0, **decoding(steps=2, seed=seed))


def test_a_second_run_loads_and_moves_no_model_again(comfy, mappings):
    prompt, cache = workflow("muse_text_to_image"), {}
    first = run_api(prompt, mappings, cache)
    assert sorted(comfy.events) == sorted([("load", TEXT_ENCODER), ("load", TRANSFORMER), ("load", VQ)])

    prompt["3"]["inputs"]["seed"] = 1  # the sampler runs again; the loader and the text encoder are cached
    second = run_api(prompt, mappings, cache)
    assert second["1"] is first["1"] and second["2"] is first["2"]
    assert not torch.equal(second["3"]["result"][1], first["3"]["result"][1])
    assert len(comfy.events) == 3, f"the second run loaded or unloaded models: {comfy.events[3:]}"
    assert {patcher.model.name for patcher in comfy.current_loaded_models} == {TEXT_ENCODER, TRANSFORMER, VQ}
    # ComfyUI logs "Requested to load <class of patcher.model>": the model's own class, not the holder's
    assert {type(patcher.model).__name__ for patcher in comfy.current_loaded_models} == {
        type(patcher.model.inner).__name__ for patcher in comfy.current_loaded_models} >= {"MaskedTokenUViT", "VQTokenizer"}
    assert all(patcher.loaded_size() == patcher.model_size() for patcher in comfy.current_loaded_models)


def test_unload_models_unloads_ours_and_the_next_run_loads_them_again(comfy, mappings):
    prompt, cache = workflow("muse_text_to_image"), {}
    transformer, vq, text_encoder = run_api(prompt, mappings, cache)["1"]["result"][:3]
    comfy.unload_all_models()
    assert sorted(comfy.events[3:]) == sorted([("unload", TEXT_ENCODER), ("unload", TRANSFORMER), ("unload", VQ)])
    assert comfy.current_loaded_models == []
    for loaded in (transformer, vq, text_encoder):
        assert loaded.patcher.loaded_size() == 0 and loaded.patcher.model.device == loaded.offload_device

    prompt["3"]["inputs"]["seed"] = 1
    run_api(prompt, mappings, cache)
    assert sorted(comfy.events[6:]) == sorted([("load", TRANSFORMER), ("load", VQ)])  # the text encode is cached


def test_a_model_two_nodes_use_is_loaded_once(comfy, mappings):
    run_api(workflow("muse_img2img"), mappings)  # VQ Encode and the sampler both use the VQ
    assert sorted(comfy.events) == sorted([("load", TEXT_ENCODER), ("load", VQ), ("load", TRANSFORMER)])


def test_comfyui_unloads_our_models_when_it_needs_the_room(nodes, comfy):
    transformer, vq, text_encoder = nodes["MuseModelLoader"]().load("embedded", "auto", "auto", "auto")[:3]
    sizes = {loaded.name: loaded.patcher.model_size() for loaded in (transformer, vq, text_encoder)}
    # room for the sampler's two models and half the text encoder
    comfy.vram_bytes = int(1.1 * (sizes[TRANSFORMER] + sizes[VQ]) + sizes[TEXT_ENCODER] / 2)
    (conditioning,) = nodes["MuseTextEncode"]().encode(text_encoder, "two red circles on a blue background", "")
    sample(nodes, transformer, vq, conditioning)
    assert comfy.events == [("load", TEXT_ENCODER), ("unload", TEXT_ENCODER), ("load", TRANSFORMER), ("load", VQ)]


def test_novram_still_loads_a_model_whole(nodes, install_comfy):
    """Under --novram ComfyUI loads 0.1 bytes of weights and leaves the rest to comfy.ops layers; plain torch
    layers left on the offload device would meet their inputs on another device."""
    install_comfy(ModelManagementDouble(novram=True))
    text_encoder = nodes["MuseModelLoader"]().load("embedded", "auto", "auto", "auto")[2]
    nodes["MuseTextEncode"]().encode(text_encoder, "a red circle", "")
    assert text_encoder.patcher.loaded_size() == text_encoder.patcher.model_size()


def test_a_lora_copy_has_its_own_patcher(pack, nodes, comfy, monkeypatch, tmp_path):
    transformer, vq, text_encoder = nodes["MuseModelLoader"]().load("embedded", "auto", "auto", "auto")[:3]
    write_lora(tmp_path / "style.safetensors", {"transformer": transformer.model})
    monkeypatch.setattr(pack_module("comfy_env"), "folder_paths",
                        SimpleNamespace(get_folder_paths={"loras": [str(tmp_path)]}.__getitem__))
    patched, _ = nodes["MuseLoraLoader"]().load(transformer, "style.safetensors", 1.0)
    assert patched.patcher is not transformer.patcher and patched.patcher.model.inner is patched.model

    (conditioning,) = nodes["MuseTextEncode"]().encode(text_encoder, "two red circles on a blue background", "")
    with_lora, _ = sample(nodes, patched, vq, conditioning)
    assert ("load", patched.name) in comfy.events and ("load", TRANSFORMER) not in comfy.events
    without, _ = sample(nodes, transformer, vq, conditioning)
    assert not torch.equal(with_lora.ids, without.ids)

    # ComfyUI offloads the base model (and with it the weights the copy shares); the copy still samples as before
    comfy.free_memory(1e30, comfy.device, keep_loaded=[patched.patcher, vq.patcher, text_encoder.patcher])
    assert comfy.events[-1] == ("unload", TRANSFORMER)
    again, _ = sample(nodes, patched, vq, conditioning)
    assert torch.equal(again.ids, with_lora.ids)


def test_outside_comfyui_a_model_moves_for_each_node_and_back(pack):
    runtime, comfy_env = pack_module("runtime"), pack_module("comfy_env")
    moves = []

    class Layer(torch.nn.Linear):
        def _apply(self, fn, recurse=True):
            moves.append("moved")
            return super()._apply(fn, recurse)

    loaded = runtime.LoadedModel(Layer(2, 2), "layer", torch.device("cpu"))
    assert isinstance(loaded.patcher, comfy_env.NodeScopedModel)
    with pytest.raises(ValueError), runtime.running(loaded):
        assert moves == ["moved"]  # to the compute device
        raise ValueError
    assert moves == ["moved", "moved"]  # and back to the offload device, also on errors
