"""Finding and reading weight files. Safetensors only: pickle formats can run code when loaded."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from .errors import CheckpointError

PICKLE_SUFFIXES = {".bin", ".pt", ".pth", ".ckpt", ".pkl"}
# Standard weight-file stems of diffusers and transformers folders.
WEIGHT_STEMS = ("diffusion_pytorch_model", "model")


def refuse_pickle(path: Path) -> None:
    if path.suffix.lower() in PICKLE_SUFFIXES:
        raise CheckpointError(
            f"{path}: {path.suffix} files are Python pickles, which can run arbitrary code when loaded, "
            "so this pack does not open them. Convert the file once in an environment you trust, e.g. "
            "`python -c \"import torch, safetensors.torch as st; "
            "st.save_file(torch.load('IN', weights_only=True), 'OUT.safetensors')\"`, "
            "or download the .safetensors variant of the model."
        )


def _safe_open(path: Path):
    from safetensors import SafetensorError, safe_open  # noqa: PLC0415

    try:
        return safe_open(str(path), framework="pt", device="cpu")
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(
            f"{path}: not a readable safetensors file ({exc}). The file may be truncated or corrupt "
            "(an interrupted download?): download or export it again."
        ) from exc


def read_metadata(path: Path) -> dict[str, str]:
    refuse_pickle(path)
    with _safe_open(path) as handle:
        return dict(handle.metadata() or {})


def tensor_names(path: Path) -> list[str]:
    """The tensor names of a safetensors file, without reading the tensors."""
    refuse_pickle(path)
    with _safe_open(path) as handle:
        return list(handle.keys())


def read_state_dict(paths: Path | list[Path]) -> dict[str, torch.Tensor]:
    """Read one or several (sharded) safetensors files into one dict of CPU tensors."""
    paths = [paths] if isinstance(paths, (str, Path)) else paths
    state: dict[str, torch.Tensor] = {}
    for path in map(Path, paths):
        refuse_pickle(path)
        if not path.is_file():
            raise CheckpointError(f"{path}: file not found.")
        with _safe_open(path) as handle:
            for key in handle.keys():
                try:
                    state[key] = handle.get_tensor(key)
                except Exception as exc:  # truncated data surfaces only when a tensor is read
                    raise CheckpointError(
                        f"{path}: tensor {key!r} cannot be read ({exc}); the file is truncated or corrupt: "
                        "download or export it again."
                    ) from exc
    return state


def find_weight_files(folder: Path, variant: str | None = None) -> list[Path]:
    """The safetensors file(s) of a diffusers/transformers model folder.

    Looks for ``<stem>[.variant].safetensors`` and sharded ``<stem>[.variant].safetensors.index.json``.
    With ``variant=None`` the full-precision file is preferred and a ``.fp16`` variant is the fallback,
    so a folder holding only the fp16 files (as many hub downloads do) still loads.
    """
    folder = Path(folder)
    variants = [variant] if variant else [None, "fp16"]
    for candidate in variants:
        suffix = f".{candidate}.safetensors" if candidate else ".safetensors"
        for stem in WEIGHT_STEMS:
            single = folder / f"{stem}{suffix}"
            if single.is_file():
                return [single]
            index = folder / f"{stem}{suffix}.index.json"
            if index.is_file():
                return _shards_from_index(index)
    pickles = sorted(p.name for p in folder.glob("*") if p.suffix.lower() in PICKLE_SUFFIXES)
    if pickles:
        refuse_pickle(folder / pickles[0])
    wanted = f"variant {variant!r}" if variant else "full-precision or fp16"
    raise CheckpointError(
        f"{folder}: no {wanted} safetensors weights found (looked for "
        f"{', '.join(s + '*.safetensors' for s in WEIGHT_STEMS)} and their .index.json shards). "
        "Point the loader at the model's folder or at a .safetensors file."
    )


def _shards_from_index(index: Path) -> list[Path]:
    try:
        weight_map = read_json(index, fix="Export the model again.")["weight_map"]
    except (KeyError, TypeError) as exc:
        raise CheckpointError(f"{index}: not a valid shard index ({exc}); export the model again.") from exc
    shards = [index.parent / name for name in dict.fromkeys(weight_map.values())]
    missing = [p.name for p in shards if not p.is_file()]
    if missing:
        raise CheckpointError(f"{index}: shard files missing: {', '.join(missing[:5])}; download them too.")
    return shards


def read_config(folder: Path) -> dict | None:
    path = Path(folder) / "config.json"
    if not path.is_file():
        return None
    return read_json(path)


def read_json(path: Path, fix: str | None = None) -> dict:
    """The JSON object in ``path``. Every model config, index and settings file is read here, so that a
    broken one is a CheckpointError naming the file and the fix (json's own message names neither)."""
    path = Path(path)
    fix = fix or f"Fix the file, or replace it with the model's original {path.name} (download or export it again)."
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise CheckpointError(f"{path}: not valid JSON (not UTF-8 text: {exc}). {fix}") from exc
    except OSError as exc:
        raise CheckpointError(f"{path}: cannot be read ({exc}).") from exc
    return parse_json(text, str(path), fix)


_JSON_TYPES = {list: "list", str: "string", int: "number", float: "number", bool: "boolean", type(None): "null"}


def parse_json(text: str, where: str, fix: str) -> dict:
    """The JSON object in ``text``; ``where`` starts the error message (a file, or a file's metadata)."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{where}: not valid JSON ({exc}). {fix}") from exc
    if not isinstance(value, dict):
        raise CheckpointError(f"{where}: holds a JSON {_JSON_TYPES[type(value)]}, not a JSON object. {fix}")
    return value

