"""Foreign checkpoint layouts -> ours, applied by the loader (``load_model``) before a model is built.

Our U-ViT uses diffusers' ``UVit2DModel`` names. open-muse (the ``MaskGiTUViT`` reproduction that aMUSEd
was trained with) names its config fields and tensors differently; :func:`convert_config` and
:func:`convert_state_dict` rename them, by model kind (``CONVERSIONS``). Checkpoints already in our
names pass through unchanged.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import torch

StateDict = dict[str, torch.Tensor]


class Conversion(NamedTuple):
    config: Callable[[Mapping[str, Any]], dict[str, Any]]  # config.json dict -> our field names
    state_dict: Callable[[StateDict], StateDict]  # tensors -> our names


def convert_config(kind: str, config: Mapping[str, Any]) -> dict[str, Any]:
    """``config`` (a config.json dict) with foreign field names renamed to those of model ``kind``."""
    conversion = CONVERSIONS.get(kind)
    return dict(config) if conversion is None else conversion.config(config)


def convert_state_dict(kind: str, state_dict: StateDict) -> StateDict:
    """``state_dict`` with foreign tensor names renamed to those of model ``kind``."""
    conversion = CONVERSIONS.get(kind)
    return state_dict if conversion is None else conversion.state_dict(state_dict)


# --- open-muse MaskGiTUViT -> diffusers UVit2DModel --------------------------------------------------------


def convert_open_muse_config(config: Mapping[str, Any]) -> dict[str, Any]:
    """Rename an open-muse ``MaskGiTUViT`` config to ``UViTConfig`` fields (a diffusers config is unchanged)."""
    config = dict(config)
    if "force_down_up_sample" in config:
        config["downsample"] = config["upsample"] = config.pop("force_down_up_sample")
    if isinstance(config.get("block_out_channels"), (list, tuple)):  # open-muse lists one width per block
        config["block_out_channels"] = config["block_out_channels"][0]
    return config


# The same renaming as diffusers' scripts/convert_amused.py.
_OPEN_MUSE_MARKER = re.compile(r"(\.attention\.query\.|^cond_embed\.0\.|\.ffn\.wi_0\.)")
_OPEN_MUSE_RENAMES = [  # applied in order, each at most once per key
    (r"^cond_embed\.0\.", "cond_embed.linear_1."),
    (r"^cond_embed\.2\.", "cond_embed.linear_2."),
    (r"^(down|up)_blocks\.0\.", r"\1_block."),
    (r"^(transformer_layers\.\d+)\.attn_layer_norm\.", r"\1.norm1.norm."),
    (r"^(transformer_layers\.\d+)\.self_attn_adaLN_modulation\.mapper\.", r"\1.norm1.linear."),
    (r"^(transformer_layers\.\d+)\.crossattn_layer_norm\.", r"\1.norm2.norm."),
    (r"^(transformer_layers\.\d+)\.cross_attn_adaLN_modulation\.mapper\.", r"\1.norm2.linear."),
    (r"^(transformer_layers\.\d+)\.ffn\.pre_mlp_layer_norm\.", r"\1.norm3.norm."),
    (r"^(transformer_layers\.\d+)\.ffn\.adaLN_modulation\.mapper\.", r"\1.norm3.linear."),
    (r"\.ffn\.wo\.", ".ff.net.2."),
    (r"\.attn_layer_norm\.", ".norm1."),
    (r"\.crossattn_layer_norm\.", ".norm2."),
    (r"\.attention\.(query|key|value|out)\.", lambda m: f".attn1.{_QKV[m.group(1)]}."),
    (r"\.crossattention\.(query|key|value|out)\.", lambda m: f".attn2.{_QKV[m.group(1)]}."),
    (r"\.norm\.norm\.", ".norm."),
    (r"\.channelwise\.0\.", ".channelwise_linear_1."),
    (r"\.channelwise\.2\.", ".channelwise_norm."),
    (r"\.channelwise\.4\.", ".channelwise_linear_2."),
    (r"\.adaLN_modulation\.mapper\.", ".cond_embeds_mapper."),
    (r"\.(downsample|upsample)\.0\.norm\.", r".\1.norm."),
    (r"\.(downsample|upsample)\.1\.", r".\1.conv."),
    (r"^mlm_layer\.layer_norm\.norm\.", "mlm_layer.layer_norm."),
]
_QKV = {"query": "to_q", "key": "to_k", "value": "to_v", "out": "to_out.0"}


def is_open_muse(names) -> bool:
    """Whether tensor names are open-muse's (names only it has), not diffusers'."""
    return any(_OPEN_MUSE_MARKER.search(name) for name in names)


def convert_open_muse_state_dict(state_dict: StateDict) -> StateDict:
    """Rename an open-muse ``MaskGiTUViT`` state dict to diffusers ``UVit2DModel`` names."""
    converted: StateDict = {}
    gate_halves: dict[str, dict[str, torch.Tensor]] = {}
    for key, tensor in state_dict.items():
        if m := re.match(r"^(transformer_layers\.\d+)\.ffn\.(wi_[01])\.weight$", key):
            gate_halves.setdefault(m.group(1), {})[m.group(2)] = tensor
            continue
        for pattern, replacement in _OPEN_MUSE_RENAMES:
            key = re.sub(pattern, replacement, key, count=1)
        converted[key] = tensor
    for layer, halves in gate_halves.items():
        # diffusers' GEGLU computes value * gelu(gate) from one projection: value rows (wi_1) come first.
        converted[f"{layer}.ff.net.0.proj.weight"] = torch.cat([halves["wi_1"], halves["wi_0"]], dim=0)  # [2 * inner, dim]
    return converted


def _open_muse_uvit_state_dict(state_dict: StateDict) -> StateDict:
    return convert_open_muse_state_dict(state_dict) if is_open_muse(state_dict) else state_dict


# model kind -> its renamings; a kind not listed is loaded as it is
CONVERSIONS: dict[str, Conversion] = {
    "uvit": Conversion(convert_open_muse_config, _open_muse_uvit_state_dict),
}
