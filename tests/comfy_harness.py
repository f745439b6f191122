"""Run ComfyUI workflows headlessly against the pack's NODE_CLASS_MAPPINGS, without ComfyUI.

- :func:`load_pack` (tools/comfy_offline.py) imports the repository root the way ComfyUI imports a custom
  node folder; :class:`CoreNodes` (same module) doubles the few core nodes the shipped workflows use (same
  INPUT_TYPES, same tensors out): LoadImage, SaveImage, PreviewImage, ImageScaleBy; and
  :class:`ModelManagementDouble` stands in for ComfyUI's model management, recording loads and unloads.
- :func:`ui_to_api` (tools/workflow_format.py) turns a UI-format workflow (what the editor saves: nodes,
  links, positional ``widgets_values``) into the API format posted to ``/prompt`` (``{id: {class_type,
  inputs}}``), the way the front-end does. tools/build_workflows.py writes the shipped workflows with the
  same two modules, so they live in tools/ and this module re-exports them.
- :func:`validate_api` and :func:`run_api` (tools/comfy_offline.py, which tools/make_figures.py uses too):
  the first checks a prompt as ComfyUI's ``/prompt`` does (execution.py ``validate_inputs``:
  required inputs, socket types, numeric ranges, and combo values, which ComfyUI checks only when the
  choices are a list), every node before any runs; :func:`run_api` validates, then runs the nodes in
  dependency order; given a cache, it keeps outputs between prompts as ComfyUI's executor does.
- :func:`decoding` gives the seed and decoding widgets of the sampler and editing nodes; :func:`pack_module`
  one of the pack's node modules; :func:`core_nodes` the core-node doubles over folders set up as the pack
  sets up ComfyUI's.
"""

from __future__ import annotations

import importlib
import json
from pathlib import Path

from tools.comfy_offline import ROOT, CoreNodes, ModelManagementDouble, load_pack, run_api, validate_api
from tools.workflow_format import ui_to_api

__all__ = ["ROOT", "CoreNodes", "ModelManagementDouble", "core_nodes", "decoding", "load_pack", "load_workflow",
           "pack_module", "run_api", "ui_to_api", "validate_api"]


def decoding(**changes) -> dict:
    """The seed and decoding widgets of sampler and editing nodes (few steps: these tests check plumbing)."""
    return {"seed": 0, "steps": 4, "guidance": 3.0, "guidance_schedule": "constant", "temperature_start": 2.0,
            "temperature_end": 0.0, "mask_schedule": "cosine", "token_temperature": 1.0, **changes}


def load_workflow(path: Path) -> dict:
    return json.loads(Path(path).read_text())


def pack_module(name: str):
    """The pack's ``nodes/<name>.py`` module, as imported under ComfyUI's package name for it (load_pack)."""
    return importlib.import_module(f"{load_pack().__name__}.nodes.{name}")


def core_nodes(root: Path) -> CoreNodes:
    """Core-node doubles over ``root/input`` and ``root/output``, the input folder holding the pack's example
    inputs, as the pack installs them into ComfyUI's."""
    pack_module("comfy_env").install_example_inputs(Path(root) / "input")
    return CoreNodes(Path(root) / "input", Path(root) / "output")
