"""Run ComfyUI workflows headlessly against the pack's NODE_CLASS_MAPPINGS, without ComfyUI.

- :func:`load_pack` (tools/comfy_offline.py) imports the repository root the way ComfyUI imports a custom
  node folder; :class:`CoreNodes` (same module) doubles the few core nodes the shipped workflows use (same
  INPUT_TYPES, same tensors out): LoadImage, SaveImage, PreviewImage, ImageScaleBy; and
  :class:`ModelManagementDouble` stands in for ComfyUI's model management, recording loads and unloads.
- :func:`ui_to_api` (tools/workflow_format.py) turns a UI-format workflow (what the editor saves: nodes,
  links, positional ``widgets_values``) into the API format posted to ``/prompt`` (``{id: {class_type,
  inputs}}``), the way the front-end does. tools/build_workflows.py writes the shipped workflows with the
  same two modules, so they live in tools/ and this module re-exports them.
- :func:`validate_api` checks a prompt as ComfyUI's ``/prompt`` does (execution.py ``validate_inputs``:
  required inputs, socket types, numeric ranges, and combo values, which ComfyUI checks only when the
  choices are a list), every node before any runs; :func:`run_api` validates, then runs the nodes in
  dependency order; given a cache, it keeps outputs between prompts as ComfyUI's executor does.
- :func:`decoding` gives the seed and decoding widgets of the sampler and editing nodes.
"""

from __future__ import annotations

import json
from pathlib import Path

from tools.comfy_offline import ROOT, CoreNodes, ModelManagementDouble, load_pack
from tools.workflow_format import ui_to_api

__all__ = ["ROOT", "CoreNodes", "ModelManagementDouble", "decoding", "load_pack", "load_workflow", "run_api",
           "ui_to_api", "validate_api"]


def decoding(**changes) -> dict:
    """The seed and decoding widgets of sampler and editing nodes (few steps: these tests check plumbing)."""
    return {"seed": 0, "steps": 4, "guidance": 3.0, "guidance_schedule": "constant", "temperature_start": 2.0,
            "temperature_end": 0.0, "mask_schedule": "cosine", "token_temperature": 1.0, **changes}


# ---- validation and execution -------------------------------------------------------------------------

def _check_value(node_id: str, name: str, spec, value) -> None:
    kind, options = spec[0], (spec[1] if len(spec) > 1 else {})
    where = f"node {node_id}, input {name!r}"
    if isinstance(kind, list):  # ComfyUI's rule: choices given as a tuple are not checked
        if value not in kind:
            choices = kind if len(kind) <= 20 else f"(list of length {len(kind)})"
            raise ValueError(f"{where}: Value not in list: {name}: {value!r} not in {choices}")
    elif kind in ("INT", "FLOAT"):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or (kind == "INT" and not isinstance(value, int)):
            raise ValueError(f"{where}: {value!r} is not a {kind}.")
        if value < options.get("min", -float("inf")) or value > options.get("max", float("inf")):
            raise ValueError(f"{where}: {value} is outside [{options.get('min')}, {options.get('max')}].")
    elif kind == "STRING" and not isinstance(value, str):
        raise ValueError(f"{where}: {value!r} is not a STRING.")
    elif kind == "BOOLEAN" and not isinstance(value, bool):
        raise ValueError(f"{where}: {value!r} is not a BOOLEAN.")


def validate_api(prompt: dict, mappings: dict) -> None:
    """Refuse the prompt, as ComfyUI's /prompt does before anything runs, if any node's inputs are invalid."""
    for node_id, node in prompt.items():
        specs = mappings[node["class_type"]].INPUT_TYPES()
        required, optional = specs.get("required", {}), specs.get("optional", {})
        missing = [name for name in required if name not in node["inputs"]]
        if missing:
            raise ValueError(f"node {node_id} ({node['class_type']}): required inputs {missing} are missing.")
        for name, value in node["inputs"].items():
            spec = required.get(name) or optional.get(name)
            if spec is None:
                raise ValueError(f"node {node_id} ({node['class_type']}): unknown input {name!r}.")
            if isinstance(value, list):  # a link: [origin node id, output slot]
                origin, slot = value
                produced = mappings[prompt[origin]["class_type"]].RETURN_TYPES[slot]
                if produced != spec[0]:
                    raise ValueError(f"node {node_id}: input {name!r} wants {spec[0]}, the link brings {produced}.")
            else:
                _check_value(node_id, name, spec, value)


def run_api(prompt: dict, mappings: dict, cache: dict | None = None) -> dict:
    """Validate, then run every node; returns {node id: {"result": outputs tuple, "ui": ui dict or None}}.

    ``cache``: a dict kept from prompt to prompt, as ComfyUI's (classic) cache: a node whose inputs, and its
    upstream nodes' inputs, are those of a node run before is not run again; its outputs are reused."""
    validate_api(prompt, mappings)
    done: dict[str, dict] = {}

    def signature(node_id: str) -> str:
        node = prompt[node_id]
        inputs = {name: [signature(value[0]), value[1]] if isinstance(value, list) else value
                  for name, value in node["inputs"].items()}
        return json.dumps([node["class_type"], inputs], sort_keys=True)

    def run(node_id: str):
        if node_id in done:
            return done[node_id]
        if cache is not None and signature(node_id) in cache:
            done[node_id] = cache[signature(node_id)]
            return done[node_id]
        node = prompt[node_id]
        cls = mappings[node["class_type"]]
        kwargs = {name: run(value[0])["result"][value[1]] if isinstance(value, list) else value
                  for name, value in node["inputs"].items()}
        returned = getattr(cls(), cls.FUNCTION)(**kwargs)
        if isinstance(returned, dict):
            done[node_id] = {"result": tuple(returned.get("result", ())), "ui": returned.get("ui")}
        else:
            done[node_id] = {"result": tuple(returned), "ui": None}
        if cache is not None:
            cache[signature(node_id)] = done[node_id]
        return done[node_id]

    for node_id in prompt:
        run(node_id)
    return done


def load_workflow(path: Path) -> dict:
    return json.loads(Path(path).read_text())
