"""Safetensors-only loading of every component; see ``models.py`` and ``muse_core.pipeline``."""

from .errors import CheckpointError
from .files import find_weight_files, read_state_dict
from .fill import fill_model
from .models import load_model, save_model

__all__ = ["CheckpointError", "fill_model", "find_weight_files", "load_model", "read_state_dict", "save_model"]
