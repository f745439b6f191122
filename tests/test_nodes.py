"""The ComfyUI node pack: node definitions, the shipped workflows run headlessly, error paths,
device handling, progress and previews."""

from __future__ import annotations

import inspect
import json
import shutil

import numpy as np
import pytest
import torch
from PIL import ImageOps
from safetensors.torch import load_file, save_file

from muse_core.data.shapes import PALETTE
from muse_core.editing.maskfree import PAPER_SETTINGS
from muse_core.loading import CheckpointError
from muse_core.pipeline import DEFAULT_MODEL_DIR, mask_free_over

from .comfy_harness import ROOT, core_nodes, decoding, load_pack, pack_module, run_api, ui_to_api, validate_api

WORKFLOWS = sorted((ROOT / "workflows").glob("*.json"))


@pytest.fixture(scope="module")
def embedded(nodes):
    """(transformer, vq, text_encoder, super_res, super_res_vq) of the embedded model, loaded once."""
    return nodes["MuseModelLoader"]().load("embedded", "auto", "auto", "auto")


@pytest.fixture(scope="module")
def conditioning(nodes, embedded):
    return nodes["MuseTextEncode"]().encode(embedded[2], "two red circles on a blue background", "")[0]


def sample(nodes, embedded, conditioning, batch_size=1, strength=1.0, tokens=None, size=64, **changes):
    return nodes["MuseSampler"]().sample(*embedded[:2], conditioning, size, 64, batch_size, strength, tokens,
                                         **decoding(**changes))


# ---- node definitions ------------------------------------------------------------------------------

def test_pack_exports_what_comfyui_reads(pack):
    assert set(pack.NODE_CLASS_MAPPINGS) == set(pack.NODE_DISPLAY_NAME_MAPPINGS)
    assert len(pack.NODE_CLASS_MAPPINGS) == 17
    assert (ROOT / pack.WEB_DIRECTORY).is_dir()


@pytest.mark.parametrize("name", sorted(load_pack().NODE_CLASS_MAPPINGS))
def test_node_is_well_formed(nodes, name):
    cls = nodes[name]
    assert cls.CATEGORY.startswith("Muse/")
    assert isinstance(cls.DESCRIPTION, str) and len(cls.DESCRIPTION) > 40
    assert isinstance(cls.RETURN_TYPES, tuple) and cls.RETURN_TYPES
    assert len(cls.RETURN_NAMES) == len(cls.RETURN_TYPES) == len(cls.OUTPUT_TOOLTIPS)
    function = getattr(cls, cls.FUNCTION)
    specs = cls.INPUT_TYPES()
    assert set(specs) <= {"required", "optional", "hidden"} and specs["required"]
    parameters = inspect.signature(function).parameters
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values())
    for section in ("required", "optional"):
        for input_name, spec in specs.get(section, {}).items():
            assert isinstance(spec, tuple) and 1 <= len(spec) <= 2, input_name
            kind, options = spec[0], spec[1]
            assert options.get("tooltip"), f"{name}.{input_name} has no tooltip"
            assert input_name in parameters or takes_any, f"{name}.{cls.FUNCTION} does not take {input_name}"
            if section == "optional":
                assert parameters[input_name].default is None
            if isinstance(kind, (list, tuple)):
                assert kind, f"{name}.{input_name}: empty choice list"
                assert options.get("default", kind[0]) in kind
            elif kind in ("INT", "FLOAT"):
                assert options["min"] <= options["default"] <= options["max"], f"{name}.{input_name}"
                assert isinstance(options["default"], int if kind == "INT" else float)
            elif kind == "BOOLEAN":
                assert isinstance(options["default"], bool)
            else:
                assert kind == "STRING" or kind.isupper(), f"{name}.{input_name}: socket types are upper case"


def test_combo_choices_are_lists(nodes):
    """ComfyUI's /prompt checks a combo value only when the choices are a list (execution.py validate_inputs):
    tuple choices let a bad value such as dtype "fp64" through to run time."""
    not_lists = [f"{name}.{input_name}" for name, cls in nodes.items()
                 for section in ("required", "optional") for input_name, spec in cls.INPUT_TYPES().get(section, {}).items()
                 if not isinstance(spec[0], (str, list))]
    assert not not_lists, f"combo choices declared as a tuple, so ComfyUI does not validate them: {not_lists}"


def test_every_node_has_a_help_page(nodes):
    """The front end's help panel asks for docs/<NodeName>/<locale>.md first, then docs/<NodeName>.md."""
    docs = ROOT / "web" / "docs"
    missing = [name for name in nodes if not (docs / name / "en.md").is_file()]
    assert not missing, f"no web/docs/<NodeName>/en.md page for {missing}"
    pages = sorted(path.relative_to(docs).as_posix() for path in docs.rglob("*.md"))
    assert pages == sorted(f"{name}/en.md" for name in nodes), "web/docs holds pages of no node, or in another layout"


# ---- workflows ---------------------------------------------------------------------------------------

@pytest.fixture
def core(tmp_path):
    return core_nodes(tmp_path)


def test_workflows_cover_the_issue():
    names = {path.stem for path in WORKFLOWS}
    assert names == {"muse_text_to_image", "muse_super_res_cascade", "muse_inpaint_upscale", "muse_outpaint",
                     "muse_mask_free_edit", "muse_best_of_n_rerank", "muse_img2img", "muse_lora",
                     "meissonic_text_to_image", "meissonic_inpaint"}


def test_every_workflow_has_a_template_thumbnail():
    """ComfyUI's template browser shows workflows/<name>.jpg on the card of <name>.json."""
    for path in WORKFLOWS:
        thumbnail = path.with_suffix(".jpg")
        assert thumbnail.is_file(), f"{thumbnail.name} is missing: run python tools/make_figures.py --thumbnails"
        assert thumbnail.stat().st_size < 30 * 1024


def slow_if_meissonic(path):
    """Meissonic workflows run 48 steps at 1024 px (on the tiny stand-in: about 20 s each)."""
    return pytest.param(path, id=path.stem, marks=[pytest.mark.slow] if path.stem.startswith("meissonic") else [])


@pytest.mark.parametrize("path", [slow_if_meissonic(path) for path in WORKFLOWS])
def test_workflow_runs_headless(path, nodes, core, monkeypatch, tmp_path):
    if path.stem.startswith("meissonic"):  # they load models/muse/Meissonic: the tiny reference model stands in
        shutil.copytree(ROOT / "tests" / "fixtures" / "meissonic" / "meissonic_tiny", tmp_path / "models" / "Meissonic")
        monkeypatch.setenv("MUSE_MODELS_DIR", str(tmp_path / "models"))
    mappings = {**core.mappings, **nodes}
    workflow = json.loads(path.read_text())
    assert workflow["version"] == 0.4
    api = ui_to_api(workflow, mappings)
    assert api == json.loads((path.parent / "api" / path.name).read_text()), "API copy out of date: run tools/build_workflows.py"
    results = run_api(api, mappings)
    saved = [image for result in results.values() if result["ui"] for image in result["ui"].get("images", [])]
    assert saved, "the workflow saved no image"
    for entry in saved:
        assert (core.output_dir / entry["filename"]).stat().st_size > 0


def api_workflow(name: str) -> dict:
    return json.loads((ROOT / "workflows" / "api" / f"{name}.json").read_text())


def test_lora_workflow_paints_the_example_loras_navy_backgrounds(nodes, core):
    """The example LoRA (tools/make_example_lora.py) learnt navy backgrounds; the workflow's prompt names none:
    every image of the workflow has navy corners; at strength 0 (the base model's own choice of background, navy
    being one of the neutral five and of any colour the shapes leave free) at most one of the four has."""
    navy = torch.tensor(PALETTE["navy"]) / 255
    prompt = api_workflow("muse_lora")
    del prompt["5"]  # Save Image
    cache, mappings, share = {}, {**core.mappings, **nodes}, {}
    for strength in (1.0, 0.0):
        prompt["2"]["inputs"]["strength"] = strength
        images = run_api(prompt, mappings, cache)["4"]["result"][1]  # [B, H, W, 3]
        corners = torch.cat([images[:, :6, :6].flatten(1, 2), images[:, -6:, -6:].flatten(1, 2)], 1).mean(1)
        share[strength] = ((corners - navy).norm(dim=1) < 0.15).float().mean().item()
    assert share[1.0] == 1.0 and share[0.0] <= 0.25, share


@pytest.mark.parametrize("workflow, node, name, value", [
    ("muse_text_to_image", "1", "dtype", "fp64"),
    ("muse_text_to_image", "1", "device", "cuda:1"),
    ("muse_text_to_image", "1", "attention", "flash"),
    ("muse_text_to_image", "3", "guidance_schedule", "cosine"),
    ("muse_text_to_image", "3", "mask_schedule", "cosin"),
    ("muse_text_to_image", "3", "sampling_from", "both"),
    ("muse_inpaint_upscale", "4", "token_rule", "all"),
    ("muse_best_of_n_rerank", "4", "dtype", "fp64"),
])
def test_a_bad_choice_is_refused_before_any_node_runs(nodes, core, workflow, node, name, value):
    class LoaderThatMustNotRun(nodes["MuseModelLoader"]):
        def load(self, *args, **kwargs):
            raise AssertionError("a node ran although the prompt is invalid")

    mappings = {**core.mappings, **nodes, "MuseModelLoader": LoaderThatMustNotRun}
    prompt = api_workflow(workflow)
    validate_api(prompt, mappings)  # the shipped workflow itself is valid
    prompt[node]["inputs"][name] = value
    with pytest.raises(ValueError, match=rf"node {node}, input '{name}': Value not in list: {name}: '{value}' not in \["):
        run_api(prompt, mappings)


def test_only_list_choices_are_validated_as_comfyui_does():
    class TupleChoices:
        RETURN_TYPES = ()
        FUNCTION = "run"

        @classmethod
        def INPUT_TYPES(cls):
            return {"required": {"dtype": (("auto", "fp32"), {})}}

        def run(self, dtype):
            return ()

    prompt = {"1": {"class_type": "TupleChoices", "inputs": {"dtype": "fp64"}}}
    validate_api(prompt, {"TupleChoices": TupleChoices})  # accepted: why test_combo_choices_are_lists exists


def test_a_size_beyond_the_models_limit_fails_naming_it(nodes, core):
    """The widget allows 4096 px (aMUSEd's limit); the embedded model's VQ (factor 4) takes at most 1024 px."""
    mappings = {**core.mappings, **nodes}
    prompt = api_workflow("muse_text_to_image")
    prompt["3"]["inputs"] |= {"width": 4096, "batch_size": 1}
    validate_api(prompt, mappings)
    with pytest.raises(ValueError, match=r"width=4096 is 1024 tokens per side; at most 256 \(1024 px with this VQ\)"):
        run_api(prompt, mappings)
    sampler = nodes["MuseSampler"].INPUT_TYPES()["required"]
    assert all("depends on the loaded model" in sampler[side][1]["tooltip"] for side in ("width", "height"))


def test_inpaint_workflow_keeps_unmasked_pixels(nodes, core, embedded, conditioning):
    image, mask = core.mappings["LoadImage"]().load_image("muse_example_inpaint.png")
    assert mask.shape == (1, 64, 64) and 0 < mask.mean() < 1
    result, tokens = nodes["MuseInpaint"]().inpaint(*embedded[:2], conditioning, image, mask, "any", True,
                                                    **decoding(mask_schedule="linear"))
    keep = mask[0] < 0.5
    assert torch.equal(result[0][keep], image[0][keep])
    assert not torch.equal(result[0][~keep], image[0][~keep])
    assert tokens.ids.shape == (1, 16, 16)


def test_rerank_sorts_and_reports_scores(nodes, embedded, conditioning):
    _, images = sample(nodes, embedded, conditioning, batch_size=3, seed=5)
    (reranker,) = nodes["MuseRerankerLoader"]().load("embedded/reranker", "auto", "auto")
    out = nodes["MuseCLIPRerank"]().rerank(reranker, images, "", conditioning)
    scores, order = out["ui"]["muse_scores"], out["ui"]["muse_order"]
    assert sorted(order) == [0, 1, 2] and scores == sorted(scores, reverse=True)
    sorted_images, best, text = out["result"]
    assert torch.equal(sorted_images, images[order]) and torch.equal(best, images[order[0]][None])
    assert text.splitlines()[0].startswith(f"#1: image {order[0]}")


def test_sampler_image_k_is_reproduced_alone(nodes, embedded, conditioning):
    batch, _ = sample(nodes, embedded, conditioning, batch_size=3, seed=7)
    alone, _ = sample(nodes, embedded, conditioning, seed=9)
    assert torch.equal(batch.ids[2:], alone.ids)


def test_img2img_strength_zero_returns_the_input_tokens(nodes, embedded, conditioning, core):
    image, _ = core.mappings["LoadImage"]().load_image("muse_example_shapes.png")
    (tokens,) = nodes["MuseVQEncode"]().encode(embedded[1], image)
    out, _ = sample(nodes, embedded, conditioning, strength=0.0, tokens=tokens)
    assert torch.equal(out.ids, tokens.ids)


# ---- error paths -------------------------------------------------------------------------------------

def test_missing_model_file_says_where_it_looked(nodes, monkeypatch, tmp_path):
    monkeypatch.setenv("MUSE_MODELS_DIR", str(tmp_path))
    with pytest.raises(FileNotFoundError, match=f"looked in {tmp_path}.*refresh"):
        nodes["MuseTransformerLoader"]().load("gone.safetensors", "auto", "auto", "auto")
    with pytest.raises(ValueError, match="inside the model folders"):
        nodes["MuseVQLoader"]().load("../secret.safetensors", "auto", "auto", "auto")


@pytest.mark.parametrize("loader, name, message", [
    ("MuseTransformerLoader", "embedded/vqvae.safetensors", "holds a 'vq' model.*vq loader"),
    ("MuseVQLoader", "embedded/transformer.safetensors", "holds a 'uvit' model"),
    ("MuseSuperResLoader", "embedded/transformer.safetensors", "holds a 'uvit' model"),
])
def test_wrong_model_kind_in_a_loader(nodes, loader, name, message):
    with pytest.raises(CheckpointError, match=message):
        nodes[loader]().load(name, "auto", "auto", "auto")


def test_clip_loader_refuses_a_t5_folder(nodes):
    with pytest.raises(CheckpointError, match="not"):
        nodes["MuseCLIPTextLoader"]().load("embedded/text_encoder", "auto", "auto")


def test_mask_of_another_size(nodes, embedded, conditioning):
    image = torch.rand(1, 64, 64, 3)
    with pytest.raises(ValueError, match="mask is 32x32 but the image is 64x64"):
        nodes["MuseInpaint"]().inpaint(*embedded[:2], conditioning, image, torch.ones(1, 32, 32), "any", True,
                                       **decoding())


def test_image_without_alpha_gives_an_actionable_inpaint_error(nodes, embedded, conditioning):
    image = torch.rand(1, 128, 128, 3)
    with pytest.raises(ValueError, match="MaskEditor"):
        nodes["MuseInpaint"]().inpaint(*embedded[:2], conditioning, image, torch.zeros(1, 64, 64), "any", True,
                                       **decoding())


def test_size_not_a_multiple_of_the_vq_factor(nodes, embedded):
    with pytest.raises(ValueError, match="not a multiple of the VQ factor 4.*64x64"):
        nodes["MuseVQEncode"]().encode(embedded[1], torch.rand(1, 64, 62, 3))


def test_tokens_of_another_vq_are_refused(nodes, embedded, conditioning):
    tokens, _ = sample(nodes, embedded, conditioning, steps=2)
    with pytest.raises(ValueError, match="Connect the VQ that belongs"):
        nodes["MuseVQDecode"]().decode(embedded[4], tokens)
    with pytest.raises(ValueError, match="pick an upscale"):
        nodes["MuseSuperResSampler"]().sample(*embedded[3:], conditioning, tokens, 3, **decoding())


def test_empty_prompt_is_refused(nodes, embedded):
    with pytest.raises(ValueError, match="prompt is empty"):
        nodes["MuseTextEncode"]().encode(embedded[2], "  ", "")


def test_bad_sizes_and_margins(nodes, embedded, conditioning):
    with pytest.raises(ValueError, match="multiples of the VQ downsampling factor"):
        sample(nodes, embedded, conditioning, size=66)
    with pytest.raises(ValueError, match="at least one > 0"):
        nodes["MuseOutpaint"]().outpaint(*embedded[:2], conditioning, torch.rand(1, 64, 64, 3), 0, 0, 0, 0, **decoding())


# ---- model lists, tokenizers, devices, progress ------------------------------------------------------

def test_model_lists_show_files_and_component_folders(pack, monkeypatch, tmp_path):
    model_files = pack_module("model_files")
    shutil.copytree(DEFAULT_MODEL_DIR, tmp_path / "shapes")
    (tmp_path / "loose").mkdir()
    shutil.copy(DEFAULT_MODEL_DIR / "vqvae.safetensors", tmp_path / "loose" / "my_vq.safetensors")
    monkeypatch.setenv("MUSE_MODELS_DIR", str(tmp_path))
    assert model_files.model_folder_names() == ["embedded", "shapes"]
    names = model_files.component_names(["vqvae.safetensors"])
    assert names[0] == "embedded/vqvae.safetensors"
    assert {"loose/my_vq.safetensors", "shapes/text_encoder", "shapes/reranker", "shapes/transformer.safetensors"} <= set(names)
    assert not any(name.startswith("shapes/text_encoder/") for name in names), "a component folder's files are its own"
    assert model_files.resolve("loose/my_vq.safetensors") == tmp_path / "loose" / "my_vq.safetensors"


def test_clip_list_says_what_to_install_when_there_is_none(pack, nodes, monkeypatch, tmp_path):
    loader = nodes["MuseCLIPTextLoader"]
    monkeypatch.setenv("MUSE_MODELS_DIR", str(tmp_path))
    names = loader.INPUT_TYPES()["required"]["model_name"][0]
    assert names == [pack_module("loaders").NO_CLIP_TEXT_ENCODER]
    assert "clip_l.safetensors" in names[0] and "models/text_encoders" in names[0]
    with pytest.raises(FileNotFoundError, match="no CLIP text encoder is installed. Put clip_l.safetensors .* in "
                                                "ComfyUI/models/text_encoders.*press R"):
        loader().load(names[0], "auto", "auto")

    (tmp_path / "clip_l.safetensors").write_bytes(b"")  # once there is a file, the list offers it alone
    assert loader.INPUT_TYPES()["required"]["model_name"][0] == ["clip_l.safetensors"]


def test_bare_text_encoder_file_uses_comfyuis_tokenizer(pack, nodes, monkeypatch, tmp_path):
    comfy_env = pack_module("comfy_env")
    weights = load_file(DEFAULT_MODEL_DIR / "text_encoder" / "model.safetensors")
    save_file(weights, tmp_path / "t5_small.safetensors")  # like a t5xxl file: weights only, no tokenizer
    (tmp_path / "config.json").write_text((DEFAULT_MODEL_DIR / "text_encoder" / "config.json").read_text())
    monkeypatch.setenv("MUSE_MODELS_DIR", str(tmp_path))
    with pytest.raises(CheckpointError, match="no tokenizer found"):
        nodes["MuseT5Loader"]().load("t5_small.safetensors", "auto", "auto")
    monkeypatch.setattr(comfy_env, "comfy_tokenizer_dir", lambda name: DEFAULT_MODEL_DIR / "tokenizer")
    (loaded,) = nodes["MuseT5Loader"]().load("t5_small.safetensors", "auto", "auto")
    assert loaded.model.encode("a red circle").hidden_states.shape[-1] == 192


class FakeProgressBar:
    def __init__(self, total):
        self.total, self.updates = total, []

    def update_absolute(self, value, total=None, preview=None):
        self.updates.append((value, total, preview))


@pytest.fixture
def progress_bars(pack, monkeypatch):
    """The progress bars the nodes open, recorded (comfy.utils stood in for)."""
    bars = []

    class Utils:
        @staticmethod
        def ProgressBar(total):
            bars.append(FakeProgressBar(total))
            return bars[-1]

    monkeypatch.setattr(pack_module("comfy_env"), "comfy_utils", Utils)
    return bars


def test_progress_bar_gets_a_preview_every_step(nodes, embedded, conditioning, progress_bars):
    sample(nodes, embedded, conditioning, batch_size=2, steps=6)
    (bar,) = progress_bars
    assert [value for value, _, _ in bar.updates] == list(range(1, 7)) and bar.total == 6
    kinds, images, _ = zip(*[preview for _, _, preview in bar.updates])
    assert set(kinds) == {"JPEG"} and all(image.size == (64, 64) for image in images)
    first, last = (torch.from_numpy(np.asarray(image).reshape(-1, 3).astype(np.float32)) for image in (images[0], images[-1]))
    grey = lambda pixels: ((pixels[:, 0] == pixels[:, 1]) & (pixels[:, 1] == pixels[:, 2])).float().mean()  # noqa: E731
    assert grey(first) > grey(last), "still-masked cells are drawn as a grey checkerboard"


def test_preview_is_shown_at_its_own_size(nodes, embedded, conditioning, progress_bars):
    """ComfyUI's server fits a ("JPEG", image, bound) preview into bound x bound (ImageOps.contain, which also
    enlarges), and the node then shows that size: a 128x64 preview must reach it as 128 x 64."""
    sample(nodes, embedded, conditioning, size=128, steps=2)
    for _, _, (_, image, bound) in progress_bars[0].updates:
        shown = image if bound is None else ImageOps.contain(image, (bound, bound))  # server.send_image
        assert image.size == shown.size == (128, 64)


def test_cancel_stops_sampling(pack, nodes, embedded, conditioning, monkeypatch):
    comfy_env = pack_module("comfy_env")
    calls = []

    class Interrupted(Exception):
        pass

    class ModelManagement:
        @staticmethod
        def throw_exception_if_processing_interrupted():
            calls.append(1)
            if len(calls) == 3:
                raise Interrupted

        @staticmethod
        def soft_empty_cache():
            pass

    monkeypatch.setattr(comfy_env, "model_management", ModelManagement)
    with pytest.raises(Interrupted):
        sample(nodes, embedded, conditioning, steps=12)
    assert len(calls) == 3


def test_models_return_to_rest_device_and_oom_names_the_model(pack):
    runtime = pack_module("runtime")
    layer = torch.nn.Linear(2, 2)
    loaded = runtime.LoadedModel(layer, "transformer 'big.safetensors'", torch.device("cpu"))
    with pytest.raises(RuntimeError, match="Out of GPU memory while running transformer 'big.safetensors'.*fp16"):
        with runtime.running(loaded):
            raise torch.cuda.OutOfMemoryError("CUDA out of memory")
    assert layer.weight.device.type == "cpu"


def test_missing_super_res_stage_and_foreign_text_encoder(nodes, embedded, conditioning):
    tokens, _ = sample(nodes, embedded, conditioning, steps=2)
    with pytest.raises(ValueError, match="no super-res model is connected.*Super-Res Loader"):
        nodes["MuseSuperResSampler"]().sample(None, None, conditioning, tokens, 2, **decoding())
    narrow = conditioning.to(dtype=torch.float32)
    narrow.positive.hidden_states = narrow.positive.hidden_states[..., :96]
    narrow.negative.hidden_states = narrow.negative.hidden_states[..., :96]
    with pytest.raises(ValueError, match="96-wide token states.*expects 192.*trained with"):
        sample(nodes, embedded, narrow, steps=2)


# ---- the model's recommended settings, and mask-free editing ----------------------------------------

def test_sampling_from_model_uses_the_loaded_models_sampling_json(nodes, embedded, conditioning):
    recommended = json.loads((DEFAULT_MODEL_DIR / "sampling.json").read_text())
    recommended["temperature"] = tuple(recommended["temperature"])  # as SamplingOptions takes it
    mask_free = recommended.pop("mask_free")  # mask-free editing's, not a sampler's
    super_res = recommended | recommended.pop("super_res")  # the super-res stage's settings over the others
    assert embedded[0].sampling == recommended and embedded[3].sampling == super_res
    assert embedded[0].mask_free == mask_free
    (single_super_res,) = nodes["MuseSuperResLoader"]().load("embedded/super_res.safetensors", "auto", "auto", "auto")
    assert single_super_res.sampling == super_res
    from_model, _ = sample(nodes, embedded, conditioning, sampling_from="model", seed=3)  # widgets: aMUSEd's
    by_hand, _ = sample(nodes, embedded, conditioning, seed=3, steps=recommended["steps"],
                        guidance=recommended["guidance_scale"], temperature_start=recommended["temperature"][0],
                        temperature_end=recommended["temperature"][1],
                        token_temperature=recommended["token_temperature"])
    widgets, _ = sample(nodes, embedded, conditioning, seed=3)
    assert torch.equal(from_model.ids, by_hand.ids) and not torch.equal(from_model.ids, widgets.ids)
    (single,) = nodes["MuseTransformerLoader"]().load("embedded/transformer.safetensors", "auto", "auto", "auto")
    assert single.sampling == recommended  # a component file gets its model folder's sampling.json too
    assert single.mask_free == mask_free


def test_mask_free_edit_from_model_uses_the_models_mask_free_settings(nodes, embedded, conditioning, core):
    image, _ = core.mappings["LoadImage"]().load_image("muse_example_shapes.png")
    settings = mask_free_over(embedded[0].mask_free, {})
    assert embedded[0].mask_free and settings != PAPER_SETTINGS  # the embedded model recommends its own
    edit = nodes["MuseMaskFreeEdit"]().edit
    paper = [PAPER_SETTINGS[k] for k in ("iterations", "fraction", "guidance_scale", "top_k")]
    from_model, _ = edit(*embedded[:2], conditioning, image, 5, *paper, sampling_from="model")
    by_hand, _ = edit(*embedded[:2], conditioning, image, 5, settings["iterations"], settings["fraction"],
                      settings["guidance_scale"], settings["top_k"])
    widgets, _ = edit(*embedded[:2], conditioning, image, 5, *paper, sampling_from="widgets")
    assert torch.equal(from_model, by_hand) and not torch.equal(from_model, widgets)


def test_mask_free_edit_keeps_the_input_pixels_outside_the_mask(nodes, embedded, conditioning, core):
    image, _ = core.mappings["LoadImage"]().load_image("muse_example_shapes.png")
    mask = torch.zeros(1, 64, 64)
    mask[:, 16:40, 8:32] = 1.0
    edited, tokens = nodes["MuseMaskFreeEdit"]().edit(*embedded[:2], conditioning, image, 0, 3, 0.5, 4.0, 3, mask)
    keep = mask[0] < 0.5
    assert torch.equal(edited[0][keep], image[0][keep])  # copied from the input, not its VQ reconstruction
    assert not torch.equal(edited[0][~keep], image[0][~keep])
