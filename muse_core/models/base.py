"""What every Muse model shares: a dataclass config and the hooks the loader calls.

A model class declares ``kind`` (the name stored in our single-file checkpoints), ``config_class``,
and may override ``convert_state_dict`` (foreign key layouts -> ours) and ``infer_config`` (a config
from tensor shapes, for files that carry none). The loader builds the model on the meta device from
the config and fills it from the file; see ``muse_core.loading``.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping
from typing import Any, ClassVar

import torch
from torch import nn

logger = logging.getLogger("muse_core")


@dataclasses.dataclass
class ModelConfig:
    """Base for model configs. Field names follow diffusers' config.json where a diffusers model exists."""

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]):
        """Build from a config.json dict: ``_``-prefixed bookkeeping keys are skipped, unknown keys logged."""
        names = {f.name for f in dataclasses.fields(cls)}
        known = {k: v for k, v in values.items() if k in names}
        unknown = sorted(k for k in values if k not in names and not k.startswith("_"))
        if unknown:
            logger.info("%s: ignoring config keys %s", cls.__name__, ", ".join(unknown))
        for key, value in known.items():
            if isinstance(value, list):
                known[key] = tuple(value)
        return cls(**known)

    def to_dict(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}


class MuseModel(nn.Module):
    kind: ClassVar[str]
    config_class: ClassVar[type[ModelConfig]]

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config

    @classmethod
    def convert_state_dict(cls, state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Rename foreign checkpoint keys (e.g. open-muse) to this model's names. Default: unchanged."""
        return state_dict

    @classmethod
    def infer_config(cls, shapes: Mapping[str, torch.Size]) -> ModelConfig:
        """Derive a config from tensor names and shapes, for checkpoints without a config."""
        raise ValueError(f"{cls.__name__} cannot infer its config from tensor shapes; provide a config.json.")

    @property
    def dtype(self) -> torch.dtype:
        return next(self.parameters()).dtype

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device
