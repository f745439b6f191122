"""ComfyUI's two workflow formats: the UI format the editor saves (nodes, links, positional
``widgets_values``) and the API format posted to ``/prompt`` (``{id: {class_type, inputs}}``).

:func:`ui_to_api` converts the first into the second the way the front-end does: widgets in INPUT_TYPES
order, required then optional, skipping the extra value of a seed's "control after generate" widget and of
LoadImage's upload button. tools/build_workflows.py writes the shipped workflows with it, and the tests
(tests/comfy_harness.py) run them through it. A plain module: it imports nothing from tests/.
"""

from __future__ import annotations

WIDGET_TYPES = ("INT", "FLOAT", "STRING", "BOOLEAN")
SEED_NAMES = ("seed", "noise_seed")  # the front-end adds a control widget to these even without the flag


def is_widget(spec) -> bool:
    kind, options = spec[0], (spec[1] if len(spec) > 1 else {})
    return (isinstance(kind, (list, tuple)) or kind in WIDGET_TYPES) and not options.get("forceInput")


def extra_widget_values(name: str, spec) -> list:
    """The values the front-end stores after a widget's own: seed control mode, image upload button."""
    options = spec[1] if len(spec) > 1 else {}
    if spec[0] == "INT" and (options.get("control_after_generate") or name in SEED_NAMES):
        return ["fixed"]
    return ["image"] if options.get("image_upload") else []


def ui_to_api(workflow: dict, mappings: dict) -> dict:
    links = {link[0]: link for link in workflow["links"]}
    api = {}
    for node in sorted(workflow["nodes"], key=lambda n: n["id"]):
        if node.get("mode", 0) != 0:
            raise ValueError(f"node {node['id']} is muted or bypassed; the shipped workflows use neither.")
        cls = mappings[node["type"]]
        specs = cls.INPUT_TYPES()
        ordered = {**specs.get("required", {}), **specs.get("optional", {})}
        linked = {}
        for entry in node.get("inputs", []):
            if entry.get("link") is not None:
                _, origin, slot, *_ = links[entry["link"]]
                linked[entry["name"]] = [str(origin), slot]
        values = list(node.get("widgets_values", []))
        inputs = {}
        for name, spec in ordered.items():
            if is_widget(spec):
                if not values:
                    raise ValueError(f"node {node['id']} ({node['type']}): widgets_values ends before {name!r}.")
                inputs[name] = values.pop(0)
                del values[:len(extra_widget_values(name, spec))]
            if name in linked:
                inputs[name] = linked[name]
        if values:
            raise ValueError(f"node {node['id']} ({node['type']}): {len(values)} widget values left over: {values}.")
        api[str(node["id"])] = {"class_type": node["type"], "inputs": inputs, "_meta": {"title": node.get("title", node["type"])}}
    return api
