"""Training and evaluation data: the procedural shapes domain (``muse_core.data.shapes``).

Names are imported on first use so ``python -m muse_core.data.shapes`` runs without a double import.
"""

import importlib

_EXPORTS = ("CATEGORIES", "Scene", "Shape", "describe", "eval_scenes", "negative_scenes", "render", "sample_scene",
            "training_scenes", "write_dataset")

__all__ = list(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'muse_core.data' has no attribute {name!r}")
    value = getattr(importlib.import_module("muse_core.data.shapes"), name)
    globals()[name] = value
    return value
