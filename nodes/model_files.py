"""The model names a loader's list offers, and the path each name stands for.

Names are paths relative to a model folder (``models/muse`` or ``models/text_encoders``), with ``/``
separators on every OS so that shared workflows load anywhere. The embedded default model is offered
as ``embedded`` (the whole folder) and ``embedded/<component>``. Listed entries:

- single ``.safetensors`` files (our self-describing files, ComfyUI-style t5xxl / clip_l files, ...);
- component folders holding a ``config.json`` (diffusers' ``transformer/``, ``vqvae/`` ...), whose own
  weight files are then not listed again;
- for the whole-model loader: folders holding ``transformer/`` or ``transformer.safetensors``.
"""

from __future__ import annotations

import os
from pathlib import Path

from muse_core.pipeline import DEFAULT_MODEL_DIR

from .comfy_env import MUSE_FOLDER, model_roots

EMBEDDED = "embedded"


def _walk(root: Path):
    """(relative name, path, is_dir) of the listable entries under ``root``, sorted."""
    entries = []
    for folder, dirs, files in os.walk(root, followlinks=True):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        here = Path(folder)
        if here != root and (here / "config.json").is_file():
            entries.append((here.relative_to(root).as_posix(), here, True))
            dirs[:] = [d for d in dirs if d == "tokenizer"]  # a component's files are its own
            continue
        entries += [((here / f).relative_to(root).as_posix(), here / f, False) for f in sorted(files)
                    if f.endswith(".safetensors")]
    return entries


def component_names(embedded: list[str], folders: tuple[str, ...] = (MUSE_FOLDER,)) -> list[str]:
    """The list for a component loader: the embedded components named, then every file and component folder."""
    names = [f"{EMBEDDED}/{name}" for name in embedded]
    for kind in folders:
        for root in model_roots(kind):
            names += [name for name, _, _ in _walk(root) if name not in names]
    return names


def model_folder_names() -> list[str]:
    """The list for the whole-model loader."""
    names = [EMBEDDED]
    for root in model_roots(MUSE_FOLDER):
        for folder, dirs, _ in os.walk(root, followlinks=True):
            dirs[:] = sorted(d for d in dirs if not d.startswith("."))
            here = Path(folder)
            if here != root and ((here / "transformer").is_dir() or (here / "transformer.safetensors").is_file()):
                names.append(here.relative_to(root).as_posix())
                dirs[:] = []
    return names


def resolve(name: str, folders: tuple[str, ...] = (MUSE_FOLDER,)) -> Path:
    """The path a listed name stands for; a clear error when it is gone."""
    if name == EMBEDDED or name.startswith(f"{EMBEDDED}/"):
        path = DEFAULT_MODEL_DIR / name.removeprefix(EMBEDDED).lstrip("/")
        if path.exists():
            return path
        raise FileNotFoundError(
            f"{name}: the embedded model is missing from {DEFAULT_MODEL_DIR}; reinstall the pack "
            "(or retrain it with `muse train -o muse_core/default_model`)."
        )
    parts = Path(*name.split("/"))
    if parts.is_absolute() or ".." in parts.parts:
        raise ValueError(f"{name}: model names are paths inside the model folders, not absolute or '..' paths.")
    roots = [root for kind in folders for root in model_roots(kind)]
    for root in roots:
        if (root / parts).exists():
            return root / parts
    looked = ", ".join(str(r) for r in roots) or "no model folder is registered (set MUSE_MODELS_DIR outside ComfyUI)"
    raise FileNotFoundError(
        f"{name}: model not found (looked in {looked}). Put the file or folder there and refresh the node "
        "list (press R in ComfyUI), or pick another entry."
    )
