"""Write the example workflows: workflows/*.json (ComfyUI's UI format) and workflows/api/*.json.

Each graph is described below by its nodes (class and non-default widget values) and its links; the
widget order, the seed's extra "control after generate" value, socket lists and a readable layout are
derived from the node classes, so the files stay right when a node gains a widget. Run after changing
a node's inputs:  python tools/build_workflows.py
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # `python tools/build_workflows.py` puts only tools/ itself on sys.path

from muse_core.models.meissonic import SAMPLING_DEFAULTS as MEISSONIC_DEFAULTS  # noqa: E402  (after sys.path.insert)
from muse_core.pipeline import (  # noqa: E402  (after sys.path.insert)
    DEFAULT_MODEL_DIR,
    mask_free_over,
    read_mask_free_defaults,
    read_sampling_defaults,
)
from nodes.sampling import decoding_widget_values  # noqa: E402  (after sys.path.insert)
from tools.comfy_offline import CoreNodes, load_pack  # noqa: E402  (after sys.path.insert)
from tools.workflow_format import extra_widget_values, is_widget, ui_to_api  # noqa: E402  (after sys.path.insert)

PROMPT = "two red circles on a blue background"
# the embedded model's recommended settings come from its sampling.json (the samplers' sampling_from input)
# The widgets show the same values (read from sampling.json, not copied), so the graph does not contradict itself.
EMBEDDED_SAMPLING = {"sampling_from": "model", **decoding_widget_values(read_sampling_defaults(DEFAULT_MODEL_DIR))}
EMBEDDED_SUPER_RES_SAMPLING = {"sampling_from": "model", **{  # the super-res stage's settings; its own steps widget
    k: v for k, v in decoding_widget_values(read_sampling_defaults(DEFAULT_MODEL_DIR, "super_res")).items() if k != "steps"}}
# the Mask-Free Edit node's widgets show the model's mask-free settings too
EMBEDDED_MASK_FREE = {"sampling_from": "model", **{
    "guidance" if name == "guidance_scale" else name: value
    for name, value in mask_free_over(read_mask_free_defaults(DEFAULT_MODEL_DIR), {}).items()}}
SIZE_64 = {"width": 64, "height": 64}

CORE_TITLES = {"LoadImage": "Load Image", "SaveImage": "Save Image", "PreviewImage": "Preview Image",
               "ImageScaleBy": "Upscale Image By"}
# Room for what the front-end draws below the widgets: image previews, the extension's cost line.
EXTRA_HEIGHT = {"LoadImage": 260, "SaveImage": 240, "PreviewImage": 240, "MuseSampler": 240, "MuseSuperResSampler": 240,
                "MuseInpaint": 240, "MuseOutpaint": 240, "MuseMaskFreeEdit": 240, "MuseCLIPRerank": 180}
LOADER = ("loader", "MuseModelLoader", {"model": "embedded"})
# Meissonic workflows expect the hub folder MeissonFlow/Meissonic saved as models/muse/Meissonic (README)
MEISSONIC_LOADER = ("loader", "MuseModelLoader", {"model": "Meissonic", "dtype": "auto"})
MEISSONIC_SAMPLING = {"sampling_from": "model", **decoding_widget_values(MEISSONIC_DEFAULTS)}
MEISSONIC_PROMPT = "a red fox sitting in a snowy forest at sunrise, detailed fur, soft golden light"
# Monetico's inference script's negative prompt, which suits Meissonic too
MEISSONIC_NEGATIVE = ("worst quality, low quality, low res, blurry, distortion, watermark, logo, signature, text, "
                      "jpeg artifacts, sketch, duplicate, ugly")


def encode(prompt: str, key: str = "encode", negative: str = "") -> tuple:
    return (key, "MuseTextEncode", {"prompt": prompt, **({"negative_prompt": negative} if negative else {})})


WORKFLOWS = {
    "muse_text_to_image": {
        "nodes": [LOADER, encode(PROMPT),
                  ("sampler", "MuseSampler", {**SIZE_64, "batch_size": 4, **EMBEDDED_SAMPLING}),
                  ("save", "SaveImage", {"filename_prefix": "muse"})],
        "links": [("loader.transformer", "sampler.transformer"), ("loader.vq", "sampler.vq"),
                  ("loader.text_encoder", "encode.text_encoder"), ("encode.conditioning", "sampler.conditioning"),
                  ("sampler.images", "save.images")],
    },
    "muse_super_res_cascade": {
        "nodes": [LOADER, encode(PROMPT),
                  ("sampler", "MuseSampler", {**SIZE_64, "batch_size": 2, **EMBEDDED_SAMPLING}),
                  ("preview", "PreviewImage", {}),
                  ("super_res", "MuseSuperResSampler", EMBEDDED_SUPER_RES_SAMPLING),
                  ("save", "SaveImage", {"filename_prefix": "muse_sr"})],
        "links": [("loader.transformer", "sampler.transformer"), ("loader.vq", "sampler.vq"),
                  ("loader.text_encoder", "encode.text_encoder"), ("encode.conditioning", "sampler.conditioning"),
                  ("sampler.images", "preview.images"), ("loader.super_res", "super_res.super_res"),
                  ("loader.super_res_vq", "super_res.super_res_vq"), ("encode.conditioning", "super_res.conditioning"),
                  ("sampler.tokens", "super_res.tokens"), ("super_res.images", "save.images")],
    },
    "muse_inpaint_upscale": {
        "nodes": [LOADER, encode("a red circle left of a green triangle on a white background"),
                  ("image", "LoadImage", {"image": "muse_example_inpaint.png"}),
                  ("inpaint", "MuseInpaint", EMBEDDED_SAMPLING),
                  ("upscale", "ImageScaleBy", {"upscale_method": "bicubic", "scale_by": 2.0}),
                  ("save", "SaveImage", {"filename_prefix": "muse_inpaint"})],
        "links": [("loader.transformer", "inpaint.transformer"), ("loader.vq", "inpaint.vq"),
                  ("loader.text_encoder", "encode.text_encoder"), ("encode.conditioning", "inpaint.conditioning"),
                  ("image.IMAGE", "inpaint.image"), ("image.MASK", "inpaint.mask"),
                  ("inpaint.images", "upscale.image"), ("upscale.IMAGE", "save.images")],
    },
    "muse_outpaint": {
        "nodes": [LOADER, encode("a red circle left of a yellow square on a white background"),
                  ("image", "LoadImage", {"image": "muse_example_shapes.png"}),
                  ("outpaint", "MuseOutpaint", {"right": 32, **EMBEDDED_SAMPLING}),
                  ("save", "SaveImage", {"filename_prefix": "muse_outpaint"})],
        "links": [("loader.transformer", "outpaint.transformer"), ("loader.vq", "outpaint.vq"),
                  ("loader.text_encoder", "encode.text_encoder"), ("encode.conditioning", "outpaint.conditioning"),
                  ("image.IMAGE", "outpaint.image"), ("outpaint.images", "save.images")],
    },
    "muse_mask_free_edit": {
        "nodes": [LOADER, encode("a blue circle left of a yellow square on a white background"),
                  ("image", "LoadImage", {"image": "muse_example_shapes.png"}),
                  ("edit", "MuseMaskFreeEdit", EMBEDDED_MASK_FREE),
                  ("save", "SaveImage", {"filename_prefix": "muse_edit"})],
        "links": [("loader.transformer", "edit.transformer"), ("loader.vq", "edit.vq"),
                  ("loader.text_encoder", "encode.text_encoder"), ("encode.conditioning", "edit.conditioning"),
                  ("image.IMAGE", "edit.image"), ("edit.images", "save.images")],
    },
    "muse_best_of_n_rerank": {
        "nodes": [LOADER, encode(PROMPT),
                  ("sampler", "MuseSampler", {**SIZE_64, "batch_size": 8, **EMBEDDED_SAMPLING}),
                  ("reranker", "MuseRerankerLoader", {"model_name": "embedded/reranker"}),
                  ("rerank", "MuseCLIPRerank", {}),
                  ("preview", "PreviewImage", {}),
                  ("save", "SaveImage", {"filename_prefix": "muse_best"})],
        "links": [("loader.transformer", "sampler.transformer"), ("loader.vq", "sampler.vq"),
                  ("loader.text_encoder", "encode.text_encoder"), ("encode.conditioning", "sampler.conditioning"),
                  ("reranker.reranker", "rerank.reranker"), ("sampler.images", "rerank.images"),
                  ("encode.conditioning", "rerank.conditioning"), ("rerank.sorted_images", "preview.images"),
                  ("rerank.best_image", "save.images")],
    },
    "muse_img2img": {
        "nodes": [LOADER, encode("a red circle left of a yellow square on a navy background"),
                  ("image", "LoadImage", {"image": "muse_example_shapes.png"}),
                  ("vq_encode", "MuseVQEncode", {}),
                  ("sampler", "MuseSampler", {**SIZE_64, "strength": 0.6, **EMBEDDED_SAMPLING}),
                  ("save", "SaveImage", {"filename_prefix": "muse_img2img"})],
        "links": [("loader.transformer", "sampler.transformer"), ("loader.vq", "sampler.vq"),
                  ("loader.vq", "vq_encode.vq"), ("image.IMAGE", "vq_encode.images"),
                  ("loader.text_encoder", "encode.text_encoder"), ("encode.conditioning", "sampler.conditioning"),
                  ("vq_encode.tokens", "sampler.tokens"), ("sampler.images", "save.images")],
    },
    "muse_lora": {  # the example LoRA: a navy-background style (tools/make_example_lora.py)
        "nodes": [LOADER,
                  ("lora", "MuseLoraLoader", {"lora_name": "example/muse_example_lora.safetensors", "strength": 1.0}),
                  encode("two red circles"),
                  ("sampler", "MuseSampler", {**SIZE_64, "batch_size": 4, **EMBEDDED_SAMPLING}),
                  ("save", "SaveImage", {"filename_prefix": "muse_lora"})],
        "links": [("loader.transformer", "lora.transformer"), ("loader.text_encoder", "lora.text_encoder"),
                  ("lora.transformer", "sampler.transformer"), ("loader.vq", "sampler.vq"),
                  ("lora.text_encoder", "encode.text_encoder"), ("encode.conditioning", "sampler.conditioning"),
                  ("sampler.images", "save.images")],
    },
    "meissonic_text_to_image": {
        "nodes": [MEISSONIC_LOADER, encode(MEISSONIC_PROMPT, negative=MEISSONIC_NEGATIVE),
                  ("sampler", "MuseSampler", {"width": 1024, "height": 1024, **MEISSONIC_SAMPLING}),
                  ("save", "SaveImage", {"filename_prefix": "meissonic"})],
        "links": [("loader.transformer", "sampler.transformer"), ("loader.vq", "sampler.vq"),
                  ("loader.text_encoder", "encode.text_encoder"), ("encode.conditioning", "sampler.conditioning"),
                  ("sampler.images", "save.images")],
    },
    "meissonic_inpaint": {
        "nodes": [MEISSONIC_LOADER, encode("a green triangle", negative=MEISSONIC_NEGATIVE),
                  ("image", "LoadImage", {"image": "meissonic_example_inpaint.png"}),
                  ("inpaint", "MuseInpaint", MEISSONIC_SAMPLING),
                  ("save", "SaveImage", {"filename_prefix": "meissonic_inpaint"})],
        "links": [("loader.transformer", "inpaint.transformer"), ("loader.vq", "inpaint.vq"),
                  ("loader.text_encoder", "encode.text_encoder"), ("encode.conditioning", "inpaint.conditioning"),
                  ("image.IMAGE", "inpaint.image"), ("image.MASK", "inpaint.mask"),
                  ("inpaint.images", "save.images")],
    },
}


def _default(spec):
    kind, options = spec[0], (spec[1] if len(spec) > 1 else {})
    if "default" in options:
        return options["default"]
    return kind[0] if isinstance(kind, (list, tuple)) else {"STRING": "", "BOOLEAN": False}.get(kind, 0)


def _output_names(cls) -> list[str]:
    return list(getattr(cls, "RETURN_NAMES", None) or cls.RETURN_TYPES)


def build_ui(graph: dict, mappings: dict, titles: dict) -> dict:
    keys = [key for key, _, _ in graph["nodes"]]
    ids = {key: index + 1 for index, key in enumerate(keys)}
    classes = {key: mappings[cls_name] for key, cls_name, _ in graph["nodes"]}
    links, outgoing, incoming = [], {}, {}
    for link_id, (source, target) in enumerate(graph["links"], start=1):
        (src, out_name), (dst, in_name) = source.split("."), target.split(".")
        slot = _output_names(classes[src]).index(out_name)
        links.append([link_id, ids[src], slot, ids[dst], None, classes[src].RETURN_TYPES[slot]])
        outgoing.setdefault((src, slot), []).append(link_id)
        incoming[(dst, in_name)] = link_id

    depth = {}
    for key in keys:  # nodes are listed so that every source comes before its targets
        sources = [s.split(".")[0] for s, t in graph["links"] if t.split(".")[0] == key]
        depth[key] = 1 + max((depth[s] for s in sources), default=-1)
    column_height = {}
    nodes = []
    for order, (key, cls_name, values) in enumerate(graph["nodes"]):
        cls = classes[key]
        specs = cls.INPUT_TYPES()
        inputs, widgets_values = [], []
        for name, spec in {**specs.get("required", {}), **specs.get("optional", {})}.items():
            if is_widget(spec):
                widgets_values += [values.get(name, _default(spec)), *extra_widget_values(name, spec)]
            else:
                link = incoming.get((key, name))
                inputs.append({"name": name, "type": spec[0], "link": link})
                if link is not None:
                    links[link - 1][4] = len(inputs) - 1
        unknown = set(values) - {name for name in {**specs.get("required", {}), **specs.get("optional", {})}}
        if unknown:
            raise ValueError(f"{key}: no widgets named {sorted(unknown)}")
        outputs = [{"name": name, "type": kind, "links": outgoing.get((key, slot), []), "slot_index": slot}
                   for slot, (name, kind) in enumerate(zip(_output_names(cls), cls.RETURN_TYPES))]
        multiline = sum(1 for spec in specs.get("required", {}).values() if len(spec) > 1 and spec[1].get("multiline"))
        height = (30 + 20 * max(len(inputs), len(outputs)) + 24 * (len(widgets_values) - multiline) + 70 * multiline
                  + EXTRA_HEIGHT.get(cls_name, 0))
        column = depth[key]
        y = column_height.get(column, 60)
        column_height[column] = y + height + 40
        nodes.append({
            "id": ids[key], "type": cls_name, "pos": [40 + 380 * column, y], "size": [340, height],
            "flags": {}, "order": order, "mode": 0, "inputs": inputs, "outputs": outputs,
            "properties": {"Node name for S&R": cls_name}, "widgets_values": widgets_values,
            "title": titles.get(cls_name, cls_name),
        })
    return {
        "last_node_id": len(nodes), "last_link_id": len(links), "nodes": nodes, "links": links,
        "groups": [], "config": {}, "extra": {"ds": {"scale": 1.0, "offset": [0, 0]}}, "version": 0.4,
    }


def main() -> None:
    pack = load_pack()
    with tempfile.TemporaryDirectory() as scratch:
        core = CoreNodes(ROOT / "example_inputs", Path(scratch))
        mappings = {**core.mappings, **pack.NODE_CLASS_MAPPINGS}
        titles = {**CORE_TITLES, **pack.NODE_DISPLAY_NAME_MAPPINGS}
        api_dir = ROOT / "workflows" / "api"
        api_dir.mkdir(parents=True, exist_ok=True)
        for name, graph in WORKFLOWS.items():
            ui = build_ui(graph, mappings, titles)
            (ROOT / "workflows" / f"{name}.json").write_text(json.dumps(ui, indent=2) + "\n")
            (api_dir / f"{name}.json").write_text(json.dumps(ui_to_api(ui, mappings), indent=2) + "\n")
            print(f"wrote workflows/{name}.json and workflows/api/{name}.json")


if __name__ == "__main__":
    main()
