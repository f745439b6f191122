"""The few ComfyUI services the nodes use, with stand-ins when the pack runs outside ComfyUI.

Inside ComfyUI: model folders come from ``folder_paths`` (a ``muse`` folder is registered under
``models/``), devices and memory from ``comfy.model_management``, which also manages every loaded model
(``comfy.model_patcher.ModelPatcher``), progress bars and previews from ``comfy.utils.ProgressBar``. Outside
(tests, scripts): model folders are listed in the environment variable ``MUSE_MODELS_DIR``
(``os.pathsep``-separated), the compute device is CUDA when present, a model moves to it for each node's
work and back afterwards (``NodeScopedModel``), and progress is not reported.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
from pathlib import Path

import torch

try:  # ComfyUI puts these on sys.path before it loads custom nodes
    import comfy.cli_args as cli_args
    import comfy.model_management as model_management
    import comfy.model_patcher as model_patcher
    import comfy.utils as comfy_utils
    import folder_paths
except ImportError:
    cli_args = model_management = model_patcher = comfy_utils = folder_paths = None

logger = logging.getLogger(__name__)

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


def offload_device(kind: str = "unet") -> torch.device:
    """Where ComfyUI keeps a model of ``kind`` (``unet``, ``text_encoder`` or ``vae``) while it is not loaded."""
    if model_management is not None:
        return {"unet": model_management.unet_offload_device,
                "text_encoder": model_management.text_encoder_offload_device,
                "vae": model_management.vae_offload_device}[kind]()
    return torch.device("cpu")


class NodeScopedModel:
    """Outside ComfyUI, the stand-in for its ModelPatcher: the model goes to ``load_device`` for each node's
    work and back to ``offload_device`` when the node is done (``models_loaded``)."""

    def __init__(self, model: torch.nn.Module, load_device: torch.device, offload_device: torch.device):
        self.model, self.load_device, self.offload_device = model, load_device, offload_device


class PatchableModule(torch.nn.Module):
    """The module a ModelPatcher manages for us. ModelPatcher records where a model is by setting its
    ``device``; our models and transformers' compute ``device`` from their weights (a property without a
    setter), so the patcher gets this holder of the model instead."""

    def __init__(self, inner: torch.nn.Module, name: str):
        super().__init__()
        self.inner = inner
        self.name = name  # for the log


@functools.cache
def _holder_class(model_class: str) -> type:
    """A PatchableModule subclass named after the model's class: ComfyUI's log says "Requested to load <the
    managed module's class name>", so it names the model (MaskedTokenUViT, VQTokenizer, ...)."""
    return type(model_class, (PatchableModule,), {"__doc__": PatchableModule.__doc__, "__module__": __name__})


@functools.cache
def whole_model_patcher(base: type) -> type:
    """ComfyUI's ModelPatcher class ``base``, made to load and offload a model whole."""

    class WholeModelPatcher(base):
        def load(self, device_to=None, lowvram_model_memory=0, force_patch_weights=False, full_load=False):
            # Partial loading (--lowvram, --novram, too little free VRAM) leaves the layers that do not fit on the
            # offload device for comfy.ops layers to cast per call. Ours are plain torch layers, which would then
            # meet their inputs on another device, so a model is loaded whole or not at all.
            logger.debug("Muse: loading %s to %s", self.model.name, device_to)
            super().load(device_to, lowvram_model_memory, force_patch_weights, full_load=True)

        def partially_load(self, device_to, extra_memory=0, force_patch_weights=False):
            loaded = super().partially_load(device_to, extra_memory, force_patch_weights)
            # A LoRA copy shares its unpatched weights with its base model (nodes/lora.py): when ComfyUI offloads
            # one of the two, those weights move for both, yet it still counts the other as loaded. Moving the
            # model again brings them back (it costs nothing for weights already on device_to).
            self.model.to(device_to)
            return loaded

        def detach(self, unpatch_all=True):
            if unpatch_all:  # ComfyUI unloads the model (unpatch_all=False only lets go of it)
                logger.debug("Muse: unloading %s to %s", self.model.name, self.offload_device)
            return super().detach(unpatch_all)

    return WholeModelPatcher


def manage_model(module: torch.nn.Module, name: str, load_device: torch.device, offload_device: torch.device):
    """What moves ``module`` between its devices: inside ComfyUI a ModelPatcher, so that ComfyUI's model
    management knows it; outside a NodeScopedModel."""
    if model_patcher is None:
        return NodeScopedModel(module, load_device, offload_device)
    patcher_class = whole_model_patcher(model_patcher.ModelPatcher)
    return patcher_class(_holder_class(type(module).__name__)(module, name), load_device, offload_device)


@contextlib.contextmanager
def models_loaded(patchers: list):
    """A node's models on their compute devices for its work, loaded together (so that loading one cannot
    offload another). ComfyUI's ModelPatchers stay loaded afterwards: ComfyUI keeps them while memory allows,
    offloads them when it needs the room and unloads them on "unload models". NodeScopedModels go back to
    their offload devices when the node is done, also on errors."""
    comfy_patchers = [p for p in patchers if not isinstance(p, NodeScopedModel)]
    stand_ins = [p for p in patchers if isinstance(p, NodeScopedModel)]
    if comfy_patchers:
        model_management.load_models_gpu(comfy_patchers)
    try:
        for stand_in in stand_ins:
            stand_in.model.to(stand_in.load_device)
        yield
    finally:
        for stand_in in stand_ins:
            stand_in.model.to(stand_in.offload_device)
        if stand_ins:
            empty_cache()


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


STAND_IN_PREVIEW_METHOD = "auto"  # outside ComfyUI: the cheap preview, seen only where a test stands in a progress bar


def preview_method() -> str:
    """ComfyUI's live-preview method: ``none``, ``auto``, ``latent2rgb`` or ``taesd``.

    Read at every call, never kept: ``--preview-method`` sets it at start, ComfyUI-Manager's menu changed it at run
    time, and ComfyUI since December 2025 (PR 11261) overwrites it before each prompt with the front end's setting
    Comfy.Execution.PreviewMethod (``latent_preview.set_preview_method`` writes ``args.preview_method``).
    """
    if cli_args is None:
        return STAND_IN_PREVIEW_METHOD
    method = cli_args.args.preview_method
    return getattr(method, "value", method)  # a LatentPreviewMethod member; its value is the name
