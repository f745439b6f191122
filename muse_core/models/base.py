"""What every Muse model shares: a dataclass config and the hooks the loader calls.

A model class declares ``kind`` (the name stored in our single-file checkpoints), ``config_class``,
and may override ``infer_config`` (a config from tensor shapes, for files that carry none). The loader
renames foreign checkpoints (open-muse) to our names first (``muse_core.loading.convert``), then builds
the model on the meta device from the config and fills it from the file; see ``muse_core.loading``.
"""

from __future__ import annotations

import dataclasses
import logging
import re
from collections.abc import Mapping
from typing import Any, ClassVar

import torch
from torch import nn

from .micro_conds import AESTHETIC_SCORE, micro_conditions

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
    # True when forward_with_text takes the scheduler's timestep as a third argument (Meissonic)
    timestep_conditioned: ClassVar[bool] = False
    # The family's recommended SamplingOptions fields, below a folder's sampling.json (muse_core.pipeline)
    sampling_defaults: ClassVar[dict] = {}

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config

    @classmethod
    def infer_config(cls, shapes: Mapping[str, torch.Size]) -> ModelConfig:
        """Derive a config from tensor names and shapes, for checkpoints without a config."""
        raise ValueError(f"{cls.__name__} cannot infer its config from tensor shapes; provide a config.json.")

    def compile_steps(self) -> "MuseModel":
        """``torch.compile`` the per-step forward (``forward_with_text``: what every decoding step runs), in
        place and once; later calls reuse the compiled code (a new batch or grid size compiles once more).
        The first step pays the compilation (about 100 s on a 2-core CPU); ids stay those of eager mode as
        far as the fused kernels' rounding allows (equal on the tests' models)."""
        if not getattr(self, "steps_compiled", False):
            self.forward_with_text = torch.compile(self.forward_with_text)
            self.steps_compiled = True
        return self

    @property
    def dtype(self) -> torch.dtype:
        return next(self.parameters()).dtype

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device


def count_children(shapes: Mapping[str, torch.Size], prefix: str) -> int:
    """How many numbered children ``prefix.0``, ``prefix.1``, ... the tensor names mention (for ``infer_config``)."""
    pattern = re.compile(re.escape(prefix) + r"\.(\d+)\.")
    return 1 + max((int(m[1]) for name in shapes if (m := pattern.match(name))), default=-1)


class TokenPredictor(MuseModel):
    """A transformer that predicts VQ token ids (base, super-res, Meissonic): what the sampler asks of each.
    The config names the two ids (``mask_token_id``, ``codebook_size``)."""

    @property
    def mask_token_id(self) -> int:
        return self.config.mask_token_id

    @property
    def codebook_size(self) -> int:
        return self.config.codebook_size

    def default_micro_conds(self, height: int, width: int, batch: int, aesthetic: float = AESTHETIC_SCORE) -> torch.Tensor:
        """Uncropped micro-conditions ``[B, 5]`` for images of the given pixel size (``micro_conds.micro_conditions``)."""
        return micro_conditions(height, width, batch, aesthetic)
