"""Node inputs that must be refused with a clear message: model names leaving the model folders, empty
IMAGE / MASK batches, and model folders whose symlinks loop."""

from __future__ import annotations

import os
import shutil
import threading

import pytest
import torch

from muse_core.pipeline import DEFAULT_MODEL_DIR

from .comfy_harness import decoding, pack_module

OUTSIDE = "inside the model folders"


@pytest.fixture(scope="module")
def model_files():
    return pack_module("model_files")


# ---- 8a: model names stay inside the model folders ---------------------------------------------------

LOADS = {  # loader -> its load() arguments after the model name
    "MuseModelLoader": ("auto", "auto", "auto"),
    "MuseTransformerLoader": ("auto", "auto", "auto"),
    "MuseSuperResLoader": ("auto", "auto", "auto"),
    "MuseVQLoader": ("auto", "auto", "auto"),
    "MuseT5Loader": ("auto", "auto"),
    "MuseCLIPTextLoader": ("auto", "auto"),
    "MuseRerankerLoader": ("auto", "auto"),
}


@pytest.mark.parametrize("loader", sorted(LOADS))
def test_embedded_prefix_cannot_climb_out(nodes, loader, tmp_path):
    outside = shutil.copy(DEFAULT_MODEL_DIR / "vqvae.safetensors", tmp_path / "outside.safetensors")
    climb = os.path.relpath(outside, DEFAULT_MODEL_DIR).replace(os.sep, "/")
    assert climb.startswith("../")
    for name in (f"embedded/{climb}", "embedded\\" + climb.replace("/", "\\")):
        with pytest.raises(ValueError, match=OUTSIDE):
            nodes[loader]().load(name, *LOADS[loader])


@pytest.mark.parametrize("name", ["/etc/passwd", "\\etc\\passwd", "C:\\models\\x.safetensors", "C:x.safetensors",
                                  "//server/share/x.safetensors", "sub/../../x.safetensors",
                                  "sub\\..\\..\\x.safetensors", "a/../b.safetensors", "embedded/../embedded", "", "./"])
def test_absolute_and_dotdot_names_are_refused(model_files, monkeypatch, tmp_path, name):
    monkeypatch.setenv("MUSE_MODELS_DIR", str(tmp_path / "models"))
    with pytest.raises(ValueError, match=OUTSIDE):
        model_files.resolve(name)


def test_symlink_inside_a_model_folder_is_followed(model_files, monkeypatch, tmp_path):
    """Linking a model folder in from another disk is ordinary ComfyUI practice: allowed."""
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "elsewhere" / "vq.safetensors").write_bytes(b"x")
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "linked").symlink_to(tmp_path / "elsewhere", target_is_directory=True)
    monkeypatch.setenv("MUSE_MODELS_DIR", str(tmp_path / "models"))
    assert model_files.resolve("linked/vq.safetensors") == tmp_path / "models" / "linked" / "vq.safetensors"
    assert model_files.resolve("linked\\vq.safetensors") == tmp_path / "models" / "linked" / "vq.safetensors"


def test_embedded_name_must_resolve_inside_the_embedded_folder(model_files, monkeypatch, tmp_path):
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "elsewhere" / "vq.safetensors").write_bytes(b"x")
    (tmp_path / "default_model").mkdir()
    (tmp_path / "default_model" / "escape").symlink_to(tmp_path / "elsewhere", target_is_directory=True)
    (tmp_path / "default_model" / "vqvae.safetensors").write_bytes(b"x")
    monkeypatch.setattr(model_files, "DEFAULT_MODEL_DIR", tmp_path / "default_model")
    assert model_files.resolve("embedded/vqvae.safetensors") == tmp_path / "default_model" / "vqvae.safetensors"
    with pytest.raises(ValueError, match=OUTSIDE):
        model_files.resolve("embedded/escape/vq.safetensors")


# ---- 8b: empty IMAGE and MASK batches ----------------------------------------------------------------

@pytest.fixture(scope="module")
def embedded(nodes):
    return nodes["MuseModelLoader"]().load("embedded", "auto", "cpu", "auto")


@pytest.fixture(scope="module")
def conditioning(nodes, embedded):
    return nodes["MuseTextEncode"]().encode(embedded[2], "a red circle", "")[0]


NO_IMAGES = torch.zeros(0, 64, 64, 3)
NO_MASKS = torch.zeros(0, 64, 64)
IMAGE = torch.rand(1, 64, 64, 3)


IMAGE_NODES = {  # node -> its call with an IMAGE input of 0 images
    "MuseVQEncode": lambda n, t, vq, c, r: n["MuseVQEncode"]().encode(vq, NO_IMAGES),
    "MuseInpaint": lambda n, t, vq, c, r: n["MuseInpaint"]().inpaint(
        t, vq, c, NO_IMAGES, torch.ones(1, 64, 64), "any", True, **decoding()),
    "MuseOutpaint": lambda n, t, vq, c, r: n["MuseOutpaint"]().outpaint(t, vq, c, NO_IMAGES, 0, 0, 16, 0, **decoding()),
    "MuseMaskFreeEdit": lambda n, t, vq, c, r: n["MuseMaskFreeEdit"]().edit(t, vq, c, NO_IMAGES, 0, 2, 0.1, 4.0, 3),
    "MuseCLIPRerank": lambda n, t, vq, c, r: n["MuseCLIPRerank"]().rerank(r, NO_IMAGES, "a red circle"),
}


@pytest.fixture(scope="module")
def reranker(nodes):
    return nodes["MuseRerankerLoader"]().load("embedded/reranker", "auto", "cpu")[0]


@pytest.mark.parametrize("node", sorted(IMAGE_NODES))
def test_empty_image_batch_is_refused(nodes, embedded, conditioning, reranker, node):
    with pytest.raises(ValueError, match=r"the IMAGE input holds no images \(shape \[0, 64, 64, 3\]\)"):
        IMAGE_NODES[node](nodes, *embedded[:2], conditioning, reranker)


def test_empty_mask_batch_is_refused(nodes, embedded, conditioning):
    transformer, vq = embedded[:2]
    message = r"the MASK input holds no masks \(shape \[0, 64, 64\]\)"
    with pytest.raises(ValueError, match=message):
        nodes["MuseInpaint"]().inpaint(transformer, vq, conditioning, IMAGE, NO_MASKS, "any", True, **decoding())
    with pytest.raises(ValueError, match=message):
        nodes["MuseMaskFreeEdit"]().edit(transformer, vq, conditioning, IMAGE, 0, 2, 0.1, 4.0, 3, mask=NO_MASKS)


# ---- 8c: model lists survive looping symlinks --------------------------------------------------------

def _finishes(function, seconds=30.0):
    """function()'s value, or a failure if it runs longer than ``seconds`` (an endless walk)."""
    result = []
    worker = threading.Thread(target=lambda: result.append(function()), daemon=True)
    worker.start()
    worker.join(seconds)
    assert not worker.is_alive(), f"{function.__name__} did not finish in {seconds} s: a symlink loop is walked"
    return result[0]


def test_model_lists_survive_looping_symlinks(nodes, monkeypatch, tmp_path):
    root = tmp_path / "models"
    (root / "loose").mkdir(parents=True)
    (root / "loose" / "vq.safetensors").write_bytes(b"x")
    (root / "family" / "transformer").mkdir(parents=True)
    (root / "family" / "transformer" / "config.json").write_text("{}")
    (root / "loose" / "back").symlink_to(root, target_is_directory=True)  # two loops: 2^depth paths
    (root / "loose" / "again").symlink_to(root / "loose", target_is_directory=True)
    monkeypatch.setenv("MUSE_MODELS_DIR", str(root))

    component = _finishes(nodes["MuseVQLoader"].INPUT_TYPES)["required"]["model_name"][0]
    listed = [name for name in component if not name.startswith("embedded/")]
    assert sorted(listed) == ["family/transformer", "loose/vq.safetensors"]
    folders = _finishes(nodes["MuseModelLoader"].INPUT_TYPES)["required"]["model"][0]
    assert folders == ["embedded", "family"]


def test_super_res_refuses_tokens_of_its_super_res_vq(nodes, embedded):
    """The embedded cascade's two VQs both have 256 codes: only the tokens' VQ fingerprint tells them apart."""
    transformer, vq, text_encoder, super_res, super_res_vq = embedded
    conditioning = nodes["MuseTextEncode"]().encode(text_encoder, "a red circle", "")[0]
    image = torch.rand(1, 64, 64, 3)
    (wrong,) = nodes["MuseVQEncode"]().encode(super_res_vq, image)
    with pytest.raises(ValueError, match="not made by the base VQ of this super-res model's cascade"):
        nodes["MuseSuperResSampler"]().sample(super_res, super_res_vq, conditioning, wrong, 2, **decoding(steps=1))
    (right,) = nodes["MuseVQEncode"]().encode(vq, image)
    tokens, _ = nodes["MuseSuperResSampler"]().sample(super_res, super_res_vq, conditioning, right, 2, **decoding(steps=1))
    assert tokens.vq_fingerprint == super_res_vq.model.fingerprint


def test_vq_decode_refuses_tokens_of_another_vq_of_the_same_size(nodes, embedded):
    vq = embedded[1]
    (tokens,) = nodes["MuseVQEncode"]().encode(vq, torch.rand(1, 64, 64, 3))
    (other,) = nodes["MuseVQLoader"]().load("embedded/vqvae.safetensors", "auto", "auto", "auto")
    nodes["MuseVQDecode"]().decode(other, tokens)  # the same weights from another load: accepted
    with torch.no_grad():
        other.model.quantize.embedding.weight[0] += 1  # now a different codebook of the same size
    with pytest.raises(ValueError, match="another VQ of the same size"):
        nodes["MuseVQDecode"]().decode(other, tokens)
