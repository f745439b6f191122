"""Loading and saving Muse models (transformers, super-res, VQ) from safetensors.

Accepted sources:
- a diffusers-layout component folder: ``config.json`` + ``diffusion_pytorch_model[.fp16].safetensors``
  (or sharded with an ``.index.json``);
- a single ``.safetensors`` file written by :func:`save_model` (its metadata carries kind and config);
- a single ``.safetensors`` file with a ``config.json`` beside it, or with no config at all (then the
  config is inferred from the tensor shapes by the model class);
- open-muse key and config names in any of these (renamed on load, see ``convert.py``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TypeVar

import torch

from ..models.base import MuseModel
from ..models.layers import set_attention_backend
from ..output import atomic_output
from .convert import convert_config, convert_state_dict
from .dtypes import check_dtype
from .errors import CheckpointError
from .files import find_weight_files, parse_json, read_config, read_metadata, read_state_dict
from .fill import fill_model
from .kinds import DESCRIPTIONS, check_kind

KIND_KEY = "muse_kind"
CONFIG_KEY = "muse_config"

M = TypeVar("M", bound=MuseModel)


def load_model(
    model_cls: type[M],
    path: str | Path,
    dtype: torch.dtype | None = torch.float32,
    device: torch.device | str = "cpu",
    variant: str | None = None,
    attention: str = "auto",
) -> M:
    """Build ``model_cls`` on the meta device from the checkpoint's config, then fill it from the file.

    ``dtype`` None keeps the file's dtype; ``variant`` picks e.g. the ``fp16`` files of a folder;
    ``attention`` is the backend of every attention layer (see ``muse_core.attention``).
    """
    dtype = check_dtype(dtype)
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path}: no such file or folder.")
    if path.is_dir():
        files, config_dict = find_weight_files(path, variant), read_config(path)
    else:
        files, config_dict = [path], _config_of_single_file(path, model_cls)
    source = str(files[0] if len(files) == 1 else path)
    state_dict = read_state_dict(files)
    check_kind(state_dict, (model_cls.kind,), DESCRIPTIONS.get(model_cls.kind, model_cls.__name__), source)
    state_dict = convert_state_dict(model_cls.kind, state_dict)
    if config_dict is None:
        config = _infer_config(model_cls, state_dict, source)
    else:
        try:
            config = model_cls.config_class.from_dict(convert_config(model_cls.kind, config_dict))
        except (TypeError, ValueError) as exc:
            raise CheckpointError(f"{source}: config does not describe a {model_cls.__name__} ({exc}).") from exc
    with torch.device("meta"):
        model = model_cls(config)
    fill_model(model, state_dict, source, dtype=dtype, device=device)
    return set_attention_backend(model, attention)


def _infer_config(model_cls: type[MuseModel], state_dict: dict[str, torch.Tensor], source: str):
    try:
        return model_cls.infer_config({k: v.shape for k, v in state_dict.items()})
    except (KeyError, ValueError) as exc:
        detail = f"no tensor {exc}" if isinstance(exc, KeyError) else str(exc)
        raise CheckpointError(
            f"{source}: a {model_cls.__name__} config cannot be inferred from the tensors ({detail}). "
            "Put the model's config.json beside the file, or load a file saved by muse_core.loading.save_model."
        ) from exc


def _config_of_single_file(path: Path, model_cls: type[MuseModel]) -> dict | None:
    metadata = read_metadata(path)
    kind = metadata.get(KIND_KEY)
    if kind is not None and kind != model_cls.kind:
        raise CheckpointError(
            f"{path}: this file holds a {kind!r} model, not a {model_cls.kind!r} model; "
            f"load it with the {kind} loader."
        )
    if CONFIG_KEY in metadata:
        return parse_json(metadata[CONFIG_KEY], f"{path} (the config in its metadata)",
                          "Save the model again with muse_core.loading.save_model.")
    return read_config(path.parent) if (path.parent / "config.json").is_file() else None


def save_model(model: MuseModel, path: str | Path, dtype: torch.dtype | None = None) -> Path:
    """Write one self-describing ``.safetensors`` file (kind and config in its metadata), whole or not at all:
    a failed write keeps the file it would replace (muse_core.output)."""
    from safetensors.torch import save_file  # noqa: PLC0415

    path = Path(path)
    if path.suffix != ".safetensors":
        raise ValueError(f"{path}: model files are saved as .safetensors; use that suffix.")
    tensors = {
        k: (v.to(dtype) if dtype is not None and v.is_floating_point() else v).detach().cpu().contiguous()
        for k, v in model.state_dict().items()
    }
    metadata = {KIND_KEY: model.kind, CONFIG_KEY: json.dumps(model.config.to_dict())}
    with atomic_output(path, overwrite=True) as temporary:
        save_file(tensors, str(temporary), metadata=metadata)
    return path
