"""The model names a loader's list offers, and the path each name stands for.

Names are paths relative to a model folder (``models/muse`` or ``models/text_encoders``), with ``/``
separators on every OS so that shared workflows load anywhere. The embedded default model is offered
as ``embedded`` (the whole folder) and ``embedded/<component>``. Listed entries:

- single ``.safetensors`` files (our self-describing files, ComfyUI-style t5xxl / clip_l files, ...);
- component folders holding a ``config.json`` (diffusers' ``transformer/``, ``vqvae/`` ...), whose own
  weight files are then not listed again;
- for the whole-model loader: folders holding ``transformer/`` or ``transformer.safetensors``.

The lists follow symlinks (linking models in from another disk is common ComfyUI practice) but walk
each real folder once, so a link loop cannot make them endless.
"""

from __future__ import annotations

import os
from pathlib import Path, PureWindowsPath

from muse_core.pipeline import DEFAULT_MODEL_DIR

from .comfy_env import MUSE_FOLDER, model_roots

EMBEDDED = "embedded"


def _folders(root: Path):
    """os.walk(root) following symlinks, hidden folders skipped, each real folder once (the first name it
    is reached by): two links to a parent folder would otherwise make the walk exponential and endless.
    Callers may prune the yielded ``dirs`` in place, as with os.walk."""
    seen = set()
    for folder, dirs, files in os.walk(root, followlinks=True):
        real = os.path.realpath(folder)
        if real in seen:
            dirs[:] = []
            continue
        seen.add(real)
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        yield Path(folder), dirs, files


def _walk(root: Path):
    """(relative name, path, is_dir) of the listable entries under ``root``, sorted."""
    entries = []
    for here, dirs, files in _folders(root):
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
        for here, dirs, _ in _folders(root):
            if here != root and ((here / "transformer").is_dir() or (here / "transformer.safetensors").is_file()):
                names.append(here.relative_to(root).as_posix())
                dirs[:] = []
    return names


def _name_parts(name: str) -> tuple[str, ...]:
    """The components of a listed name, refusing any that could lead out of the model folders."""
    normal = name.replace("\\", "/")  # a workflow saved on Windows may use backslashes
    parts = tuple(part for part in normal.split("/") if part not in ("", "."))
    if not parts or normal.startswith("/") or PureWindowsPath(normal).drive or ".." in parts:
        raise ValueError(
            f"{name}: model names are paths inside the model folders (or 'embedded/...'), not absolute or '..' "
            "paths. Pick an entry of the list."
        )
    return parts


def resolve(name: str, folders: tuple[str, ...] = (MUSE_FOLDER,)) -> Path:
    """The path a listed name stands for; a clear error when it is gone.

    The guard: a name is refused if it is absolute (``/x``, ``C:\\x``, ``//server/x``) or has a ``..``
    component, backslashes counting as separators. So it can leave a model folder only through a symlink
    the user placed inside that folder, which is allowed on purpose (models linked in from another disk).
    ``embedded/...`` names must also resolve, links followed, inside the embedded model's folder, which
    holds no links of its own.
    """
    parts = _name_parts(name)
    if parts[:1] == (EMBEDDED,):
        path = DEFAULT_MODEL_DIR.joinpath(*parts[1:])
        if not path.resolve().is_relative_to(DEFAULT_MODEL_DIR.resolve()):
            raise ValueError(f"{name}: resolves to {path.resolve()}, outside the embedded model: model names are "
                             "paths inside the model folders.")
        if path.exists():
            return path
        raise FileNotFoundError(
            f"{name}: the embedded model is missing from {DEFAULT_MODEL_DIR}; reinstall the pack "
            "(or retrain it with `muse train -o muse_core/default_model`)."
        )
    roots = [root for kind in folders for root in model_roots(kind)]
    for root in roots:
        if root.joinpath(*parts).exists():
            return root.joinpath(*parts)
    looked = ", ".join(str(r) for r in roots) or "no model folder is registered (set MUSE_MODELS_DIR outside ComfyUI)"
    raise FileNotFoundError(
        f"{name}: model not found (looked in {looked}). Put the file or folder there and refresh the node "
        "list (press R in ComfyUI), or pick another entry."
    )
