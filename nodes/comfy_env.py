"""The few ComfyUI services the nodes use, with stand-ins when the pack runs outside ComfyUI.

Inside ComfyUI: model folders come from ``folder_paths`` (a ``muse`` folder is registered under
``models/``), devices and memory from ``comfy.model_management``, progress bars and previews from
``comfy.utils.ProgressBar``. Outside (tests, scripts): model folders are listed in the environment
variable ``MUSE_MODELS_DIR`` (``os.pathsep``-separated), the compute device is CUDA when present,
and progress is not reported.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

try:  # ComfyUI puts these on sys.path before it loads custom nodes
    import comfy.model_management as model_management
    import comfy.utils as comfy_utils
    import folder_paths
except ImportError:
    model_management = comfy_utils = folder_paths = None

IN_COMFYUI = folder_paths is not None
MUSE_FOLDER = "muse"  # ComfyUI/models/muse: Muse and aMUSEd model folders and single-file checkpoints
TEXT_ENCODER_FOLDER = "text_encoders"  # ComfyUI's folder of users' t5xxl / clip_l files


def register_model_folder() -> None:
    """Register ``models/muse`` with ComfyUI (it also honours extra_model_paths.yaml entries for ``muse``)."""
    if folder_paths is None:
        return
    path = os.path.join(folder_paths.models_dir, MUSE_FOLDER)
    os.makedirs(path, exist_ok=True)
    folder_paths.add_model_folder_path(MUSE_FOLDER, path)


EXAMPLE_INPUTS = Path(__file__).resolve().parents[1] / "example_inputs"


def install_example_inputs(input_dir: Path | None = None) -> None:
    """Copy the images the example workflows load into ComfyUI's input folder (never overwriting)."""
    if input_dir is None:
        if folder_paths is None:
            return
        input_dir = Path(folder_paths.get_input_directory())
    input_dir.mkdir(parents=True, exist_ok=True)
    for source in sorted(EXAMPLE_INPUTS.glob("*.png")):
        target = input_dir / source.name
        if not target.exists():
            target.write_bytes(source.read_bytes())


def model_roots(kind: str) -> list[Path]:
    """The folders holding models of ``kind`` (``muse`` or ``text_encoders``)."""
    if folder_paths is not None:
        try:
            return [Path(p) for p in folder_paths.get_folder_paths(kind)]
        except KeyError:
            return []
    if kind != MUSE_FOLDER:
        return []
    return [Path(p) for p in os.environ.get("MUSE_MODELS_DIR", "").split(os.pathsep) if p]


def comfy_tokenizer_dir(name: str) -> Path | None:
    """A tokenizer ComfyUI ships (``t5`` or ``clip``), so users' bare t5xxl / clip_l files need nothing else."""
    if comfy_utils is None:
        return None
    comfy_dir = Path(comfy_utils.__file__).parent
    folder = {"t5": comfy_dir / "text_encoders" / "t5_tokenizer", "clip": comfy_dir / "sd1_tokenizer"}[name]
    return folder if folder.is_dir() else None


def compute_device() -> torch.device:
    if model_management is not None:
        return model_management.get_torch_device()
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def offload_device() -> torch.device:
    if model_management is not None:
        return model_management.unet_offload_device()
    return torch.device("cpu")


def free_memory(num_bytes: int, device: torch.device) -> None:
    """Ask ComfyUI to unload its own models until ``num_bytes`` fit on ``device``."""
    if model_management is not None and device.type != "cpu":
        model_management.free_memory(num_bytes, device)


def empty_cache() -> None:
    if model_management is not None:
        model_management.soft_empty_cache()
    elif torch.cuda.is_available():
        torch.cuda.empty_cache()


def check_interrupted() -> None:
    """Raise ComfyUI's interruption exception when the user pressed Cancel."""
    if model_management is not None:
        model_management.throw_exception_if_processing_interrupted()


class Progress:
    """A ComfyUI progress bar (with an optional preview image per step); silent outside ComfyUI."""

    def __init__(self, total: int):
        self.total = total
        self.bar = comfy_utils.ProgressBar(total) if comfy_utils is not None else None

    def update(self, done: int, preview=None) -> None:
        """``preview``: a PIL image shown on the node while it runs, or None."""
        check_interrupted()
        if self.bar is not None:
            # ComfyUI fits a preview into the bound given, enlarging small ones: its own size shows it as it is
            bounded = None if preview is None else ("JPEG", preview, max(preview.size))
            self.bar.update_absolute(done, self.total, bounded)

    @property
    def wants_previews(self) -> bool:
        return self.bar is not None
