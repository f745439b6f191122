"""Loading steps shared by the T5 and CLIP loaders.

Finding weights, config and tokenizer for a model folder, a diffusers pipeline folder or a single
``.safetensors`` file, and filling a transformers model built on the meta device (never
``from_pretrained``, which could unpickle). transformers is imported inside functions only, so
``import muse_core`` stays fast.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from ..loading.dtypes import check_dtype
from ..loading.errors import CheckpointError
from ..loading.files import find_weight_files, read_config, read_state_dict
from ..loading.fill import fill_model
from ..loading.kinds import check_kind


def locate_text_model(path, tokenizer_path, variant: str | None):
    """Weight files, config dict (or None: infer from shapes), tokenizer folder and a source name.

    ``path``: a model folder (config.json + weights), a diffusers pipeline folder (text_encoder/ +
    tokenizer/), or a single .safetensors file. The tokenizer is ``tokenizer_path`` if given, else
    looked for beside the weights and in a sibling ``tokenizer/`` folder.
    """
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path}: no such file or folder.")
    model_dir = _model_dir(path)
    if path.is_dir():
        files, config = find_weight_files(model_dir, variant), read_config(model_dir)
    else:
        files, config = [path], None
    search = _own_tokenizer_dirs(model_dir)
    if tokenizer_path is not None:
        tokenizer_path = Path(tokenizer_path)
        search = [tokenizer_path.parent if tokenizer_path.is_file() else tokenizer_path]
    tokenizer_dir = next((d for d in search if _has_tokenizer_files(d)), None)
    if tokenizer_dir is None:
        raise CheckpointError(
            f"{path}: no tokenizer found (looked in {', '.join(str(d) for d in search)} for "
            f"{', '.join(TOKENIZER_FILES)}). Pass tokenizer_path= a folder holding the model's tokenizer files."
        )
    source = str(files[0] if len(files) == 1 else path)
    return files, config, tokenizer_dir, source

def _model_dir(path: Path) -> Path:
    if path.is_dir():
        return path / "text_encoder" if (path / "text_encoder").is_dir() else path
    return path.parent


def _own_tokenizer_dirs(model_dir: Path) -> list[Path]:
    return [model_dir, model_dir / "tokenizer", model_dir.parent / "tokenizer"]


def has_own_tokenizer(path) -> bool:
    """Whether ``locate_text_model`` finds a tokenizer for ``path`` without being given one."""
    return any(_has_tokenizer_files(d) for d in _own_tokenizer_dirs(_model_dir(Path(path))))


def fill_text_model(model: nn.Module, state_dict: dict[str, torch.Tensor], source: str, dtype, device) -> nn.Module:
    """Cast (honouring transformers' ``_keep_in_fp32_modules`` in fp16, as from_pretrained does) and fill.
    ``dtype`` None keeps the file's dtype."""
    # Checked here too because the text loaders reach this first use of dtype without checking it.
    dtype = check_dtype(dtype)
    keep_fp32 = set(getattr(model, "_keep_in_fp32_modules", None) or ())
    for key, tensor in state_dict.items():
        if tensor.is_floating_point():
            target = dtype or tensor.dtype
            keep = target == torch.float16 and not keep_fp32.isdisjoint(key.split("."))
            state_dict[key] = tensor.to(torch.float32 if keep else target)
    return fill_model(model, state_dict, source, dtype=None, device=device)


def read_text_weights(files: list[Path]) -> dict[str, torch.Tensor]:
    """The weights of a text model; a Muse model file (a VQ, a transformer) is refused by its tensor names."""
    state_dict = read_state_dict(files)
    source = str(files[0] if len(files) == 1 else files[0].parent)
    check_kind(state_dict, ("t5", "clip"), "a text encoder", source)
    return _dequantize_comfy_fp8(state_dict)


TOKENIZER_FILES = ("tokenizer.json", "vocab.json", "spiece.model", "tokenizer.model")


def _has_tokenizer_files(folder: Path) -> bool:
    return folder.is_dir() and any((folder / name).is_file() for name in TOKENIZER_FILES)


def load_tokenizer(folder: Path, tokenizer_class=None):
    """A tokenizer from local files only (``tokenizer_class`` defaults to AutoTokenizer)."""
    if tokenizer_class is None:
        from transformers import AutoTokenizer  # noqa: PLC0415

        tokenizer_class = AutoTokenizer
    try:
        return tokenizer_class.from_pretrained(str(folder), local_files_only=True)
    except Exception as exc:  # transformers raises OSError, ValueError, ImportError... depending on the files
        raise CheckpointError(
            f"{folder}: the tokenizer cannot be loaded ({exc}). Point tokenizer_path at a folder with a "
            "tokenizer.json (or vocab.json + merges.txt for CLIP) and its tokenizer_config.json."
        ) from exc


def check_vocab(tokenizer, vocab_size: int, tokenizer_dir, source: str) -> None:
    """Refuse a tokenizer whose ids would index past the model's embedding table."""
    if len(tokenizer) > vocab_size:
        raise CheckpointError(
            f"{tokenizer_dir}: the tokenizer has {len(tokenizer)} tokens but the model in {source} only "
            f"{vocab_size}; this tokenizer belongs to another model. Pass the model's own tokenizer."
        )


def _dequantize_comfy_fp8(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """ComfyUI "scaled fp8" files store fp8 weights plus a float32 ``<name>.scale_weight``; undo the scale."""
    state_dict.pop("scaled_fp8", None)
    for key in [k for k in state_dict if k.endswith((".scale_weight", ".scale_input"))]:
        scale = state_dict.pop(key)
        if key.endswith(".scale_weight"):
            weight_key = key.removesuffix(".scale_weight") + ".weight"
            state_dict[weight_key] = state_dict[weight_key].to(torch.float32) * scale.to(torch.float32)
    return state_dict
