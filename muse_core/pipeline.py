"""A whole model family in one object, loaded from one folder.

Folder layout (diffusers' aMUSEd layout and Meissonic's hub layout, plus the Muse super-resolution stage)::

    transformer/        base transformer (config.json + *.safetensors): aMUSEd's masked-token U-ViT, or
                        Meissonic's / Monetico's (told apart by their tensor names)
    vqvae/              VQ tokenizer of the base model
    text_encoder/       CLIP text model with projection (aMUSEd: L/14, Meissonic: H/14) or T5 encoder (Muse)
    tokenizer/          the text encoder's tokenizer files
    scheduler/          optional: scheduler_config.json; its mask token id is checked against the transformer
    model_index.json    optional, not read (the components are found by their folder names)
    super_res/          optional: Muse super-resolution transformer
    super_res_vqvae/    optional: VQ tokenizer of the super-res grid (default: vqvae/)
    reranker/           optional: a CLIP model (vision + text) to rank candidates by prompt match
    sampling.json       optional: the sampling settings the model is meant to be used with (fields of
                        ``SamplingOptions``, e.g. {"guidance_scale": 3.0, "temperature": [0.5, 0.0]});
                        above the family's own (Meissonic: 48 steps, guidance 9) and aMUSEd's defaults.
                        An optional "super_res" object holds the super-res stage's own fields, over the
                        others (e.g. {"guidance_scale": 1.0}: guidance there drops objects of the base image)

Any component folder may also be a single self-describing ``.safetensors`` file saved by
``muse_core.loading.save_model`` (e.g. ``transformer.safetensors`` instead of ``transformer/``).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch

from .geometry import check_codebooks, native_size, super_res_grid_scale, super_resolved_size
from .loading import CheckpointError, load_model
from .loading.dtypes import check_dtype
from .loading.files import find_weight_files, read_config, read_json, tensor_names
from .loading.kinds import guess_kind
from .models.meissonic import MeissonicTransformer
from .models.super_res import SuperResTransformer
from .models.uvit import MaskedTokenUViT
from .models.vq import VQTokenizer
from .sampling.sampler import SamplingOptions

SAMPLING_FILE = "sampling.json"
SUPER_RES_SECTION = "super_res"  # the sampling.json object with the super-res stage's settings
MASK_FREE_SECTION = "mask_free"  # the sampling.json object with mask-free editing's (iterations, fraction, ...)
SCHEDULER_CONFIG = Path("scheduler") / "scheduler_config.json"
RERANKER_FOLDER = "reranker"  # optional: a full CLIP model for best-of-K reranking (muse_core.rerank)

# The small cascade the project trains and ships (muse_core/training/cascade.py), so the pack works offline.
DEFAULT_MODEL_DIR = Path(__file__).parent / "default_model"


@dataclasses.dataclass
class MusePipeline:
    transformer: MaskedTokenUViT | MeissonicTransformer
    vq: VQTokenizer
    text_encoder: "TextEncoder"  # noqa: F821  (muse_core.text, imported lazily: transformers is heavy)
    super_res: SuperResTransformer | None = None
    super_res_vq: VQTokenizer | None = None  # the super-res grid's VQ; set to ``vq`` when the folder has none
    sampling: dict = dataclasses.field(default_factory=dict)  # the recommended settings (see load_pipeline)
    super_res_sampling: dict = dataclasses.field(default_factory=dict)  # the super-res stage's
    mask_free: dict = dataclasses.field(default_factory=dict)  # recommended mask-free editing settings

    def sampling_options(self, **values) -> SamplingOptions:
        """``SamplingOptions`` from ``values``, the model's recommended settings where a value is None or
        missing, and aMUSEd's defaults for the rest."""
        return options_over(self.sampling, values)

    def super_res_sampling_options(self, **values) -> SamplingOptions:
        """As ``sampling_options``, with the super-res stage's recommended settings."""
        return options_over(self.super_res_sampling, values)

    def mask_free_settings(self, **values) -> dict:
        """Keyword arguments of ``edit_tokens`` / ``edit_image`` (iterations, fraction, guidance_scale, top_k):
        ``values`` where not None, then the model's recommended ones, then the paper's."""
        return mask_free_over(self.mask_free, values)

    def __post_init__(self):
        if self.super_res is not None and self.super_res_vq is None:
            self.super_res_vq = self.vq  # a cascade without super_res_vqvae/ decodes both grids with one VQ
        check_codebooks(self.transformer, self.vq, "transformer", "vqvae")
        if self.super_res is not None:
            check_codebooks(self.super_res, self.super_res_vq, "super_res", "super_res_vqvae")
            if self.super_res.config.lowres_codebook_size != self.vq.codebook_size:
                raise CheckpointError(
                    f"super_res reads low-res ids from a {self.super_res.config.lowres_codebook_size}-code codebook "
                    f"but the base VQ has {self.vq.codebook_size} codes: these components are not one cascade."
                )

    @property
    def native_size(self) -> int:
        """The pixel side the base transformer was trained at."""
        return native_size(self.transformer, self.vq)

    @property
    def super_res_grid_scale(self) -> int:
        """How many super-res tokens per base token along each side (needs a super-res stage)."""
        if self.super_res is None:
            raise ValueError("this model has no super-resolution stage (super_res/).")
        return super_res_grid_scale(self.transformer, self.super_res, self.vq, self.super_res_vq)

    def super_resolved_size(self, width: int, height: int) -> tuple[int, int]:
        """The pixel size the super-res stage makes of a ``width`` x ``height`` base image."""
        return super_resolved_size(width, height, self.vq.downsample_factor, self.super_res_grid_scale,
                                   self.super_res_vq.downsample_factor)


def options_over(recommended: dict, values: dict) -> SamplingOptions:
    """``values`` where not None, then ``recommended``, then aMUSEd's defaults."""
    return SamplingOptions(**(recommended | {k: v for k, v in values.items() if v is not None}))


def mask_free_over(recommended: dict, values: dict) -> dict:
    """Mask-free editing settings: ``values`` where not None, then ``recommended``, then the paper's."""
    from .editing.maskfree import PAPER_SETTINGS  # noqa: PLC0415  (editing imports the samplers)

    unknown = sorted(set(values) - set(PAPER_SETTINGS))
    if unknown:
        raise ValueError(f"unknown mask-free settings {unknown}; allowed: {sorted(PAPER_SETTINGS)}")
    return PAPER_SETTINGS | recommended | {k: v for k, v in values.items() if v is not None}


def _component(folder: Path, name: str) -> Path | None:
    for candidate in (folder / name, folder / f"{name}.safetensors"):
        if candidate.exists():
            return candidate
    return None


def _require(folder: Path, name: str) -> Path:
    found = _component(folder, name)
    if found is None:
        raise CheckpointError(
            f"{folder}: no {name}/ folder or {name}.safetensors file; a Muse/aMUSEd model folder holds "
            "transformer/, vqvae/, text_encoder/ and tokenizer/ (see muse_core.pipeline)."
        )
    return found


def load_text_encoder(path: str | Path, tokenizer_path=None, dtype=torch.float32, device="cpu", variant=None):
    """CLIP or T5 text encoder, chosen by the folder's config.json (``model_type``) or the file's tensor names."""
    from .text import load_clip_encoder, load_t5_encoder  # noqa: PLC0415

    dtype = check_dtype(dtype)
    path = Path(path)
    config = read_config(path) if path.is_dir() else None
    if config is not None:
        is_t5 = config.get("model_type", "") in ("t5", "umt5", "mt5")
    else:
        target = path / "text_encoder" if path.is_dir() else path
        keys = tensor_names(target) if target.is_file() else []
        is_t5 = any(k.startswith(("encoder.block.", "shared.")) for k in keys)
    loader = load_t5_encoder if is_t5 else load_clip_encoder
    return loader(path, tokenizer_path=tokenizer_path, dtype=dtype, device=device, variant=variant)


def transformer_class(path: str | Path, variant: str | None = None) -> type[MaskedTokenUViT | MeissonicTransformer]:
    """The base transformer class of a component folder or file, told by its tensor names."""
    path = Path(path)
    files = find_weight_files(path, variant) if path.is_dir() else [path]
    guess = guess_kind(name for file in files for name in tensor_names(file))
    return MeissonicTransformer if guess is not None and guess[0] == MeissonicTransformer.kind else MaskedTokenUViT


def load_transformer(path: str | Path, dtype: torch.dtype | None = torch.float32, device="cpu",
                     variant: str | None = None, attention: str = "auto") -> MaskedTokenUViT | MeissonicTransformer:
    """A base transformer of any family (aMUSEd / Muse U-ViT, Meissonic) from its folder or file."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path}: no such file or folder.")
    return load_model(transformer_class(path, variant), path, dtype=dtype, device=device, variant=variant,
                      attention=attention)


def load_pipeline(
    folder: str | Path,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str = "cpu",
    variant: str | None = None,
    attention: str = "auto",
    text_dtype: torch.dtype | None = None,
    vq_dtype: torch.dtype = torch.float32,
    text_encoder: str | Path | None = None,
    tokenizer: str | Path | None = None,
) -> MusePipeline:
    """Load every component of a model folder (layout in this module's docstring).

    ``dtype`` is for the transformers; ``text_dtype`` defaults to it; the VQ defaults to fp32 because
    its decoder gives NaNs in fp16. ``text_encoder`` replaces the folder's ``text_encoder/`` (e.g. the laion
    CLIP-ViT-H-14 folder Meissonic's scripts prefer, or a ComfyUI ``clip_h`` file), with the folder's
    ``tokenizer/`` unless ``tokenizer`` is given or the encoder folder has its own.
    """
    dtype, vq_dtype = check_dtype(dtype), check_dtype(vq_dtype, "vq_dtype")
    text_dtype = check_dtype(text_dtype, "text_dtype")
    folder = Path(folder)
    if not folder.is_dir():
        raise CheckpointError(f"{folder}: not a folder; load_pipeline wants a model folder (see muse_core.pipeline).")
    common = dict(device=device, variant=variant)
    transformer = load_transformer(_require(folder, "transformer"), dtype=dtype, attention=attention, **common)
    check_scheduler_config(folder, transformer)
    vq = load_model(VQTokenizer, _require(folder, "vqvae"), dtype=vq_dtype, attention=attention, **common)
    text_path = _require(folder, "text_encoder") if text_encoder is None else Path(text_encoder)
    text_encoder = load_text_encoder(
        text_path, tokenizer_path=tokenizer or _component(folder, "tokenizer"), dtype=text_dtype or dtype, **common
    )
    super_res = super_res_vq = None
    super_res_sampling = {}
    if (path := _component(folder, "super_res")) is not None:
        super_res = load_model(SuperResTransformer, path, dtype=dtype, attention=attention, **common)
        super_res_sampling = recommended_sampling(super_res, folder)
        if (vq_path := _component(folder, "super_res_vqvae")) is not None:
            super_res_vq = load_model(VQTokenizer, vq_path, dtype=vq_dtype, attention=attention, **common)
    return MusePipeline(transformer, vq, text_encoder, super_res, super_res_vq, recommended_sampling(transformer, folder),
                        super_res_sampling, read_mask_free_defaults(folder))


def recommended_sampling(model, folder: Path) -> dict:
    """The settings a model is meant to be sampled with: its family's, under its folder's ``sampling.json``
    (for a super-res transformer, that file's super-res settings over the rest)."""
    stage = "super_res" if isinstance(model, SuperResTransformer) else "base"
    return model.sampling_defaults | read_sampling_defaults(folder, stage)


def check_scheduler_config(folder: Path, transformer) -> None:
    """Refuse a hub ``scheduler/scheduler_config.json`` whose mask token is not the transformer's. Its masking
    schedule is not read: every schedule is a sampling option, and inpainting defaults to linear regardless."""
    path = folder / SCHEDULER_CONFIG
    if not path.is_file():
        return
    config = read_json(path, "Fix the file, or delete it (it only names the mask token and the schedule).")
    mask_token_id = config.get("mask_token_id", transformer.mask_token_id)
    if mask_token_id != transformer.mask_token_id:
        raise CheckpointError(
            f"{path}: mask_token_id {mask_token_id} but the transformer's mask token is {transformer.mask_token_id} "
            "(its vocab_size - 1): the scheduler belongs to another model. Use the model's own scheduler/ folder."
        )


def read_sampling_defaults(folder: Path, stage: str = "base") -> dict:
    """The folder's ``sampling.json`` as SamplingOptions fields (checked) for the base transformer, or with
    ``stage="super_res"`` for the super-res stage (its section over the base fields); {} when there is none."""
    if stage not in ("base", "super_res"):
        raise ValueError(f"stage must be 'base' or 'super_res', got {stage!r}.")
    base, super_res, _ = _read_sampling_file(Path(folder))
    return base | super_res if stage == "super_res" else base


def read_mask_free_defaults(folder: Path) -> dict:
    """The ``mask_free`` section of the folder's ``sampling.json`` (checked): mask-free editing settings the
    model recommends over the paper's; {} when there is none."""
    return _read_sampling_file(Path(folder))[2]


def _read_sampling_file(folder: Path) -> tuple[dict, dict, dict]:
    """sampling.json's base, super-res and mask-free settings, each checked; ({}, {}, {}) without the file."""
    from .editing.maskfree import check_edit_settings  # noqa: PLC0415  (editing imports the samplers)

    path = folder / SAMPLING_FILE
    if not path.is_file():
        return {}, {}, {}
    fix = "Fix or delete the file (it only sets sampling defaults)."
    values = read_json(path, fix)
    sections = {name: values.pop(name, {}) for name in (SUPER_RES_SECTION, MASK_FREE_SECTION)}
    try:
        for name, section in sections.items():
            if not isinstance(section, dict):
                raise ValueError(f'"{name}" must be an object of settings, got {section!r}')
        base = checked_sampling_fields(values)
        super_res = checked_sampling_fields(sections[SUPER_RES_SECTION], f"{SUPER_RES_SECTION}: ")
        SamplingOptions(**(base | super_res))
        mask_free = sections[MASK_FREE_SECTION]
        try:
            check_edit_settings(**mask_free_over({}, mask_free))
        except (ValueError, TypeError) as error:
            raise ValueError(f"{MASK_FREE_SECTION}: {error}") from None
    except (ValueError, TypeError) as error:
        raise CheckpointError(f"{path}: {error}. {fix}") from None
    return base, super_res, mask_free


def checked_sampling_fields(values: dict, where: str = "") -> dict:
    """JSON settings as SamplingOptions fields (lists -> tuples), each checked; raises ValueError/TypeError."""
    fields = {field.name for field in dataclasses.fields(SamplingOptions)} - {"seed"}
    unknown = sorted(set(values) - fields)
    if unknown:
        raise ValueError(f"{where}unknown settings {unknown}; allowed: {sorted(fields)}")
    values = {k: tuple(v) if isinstance(v, list) else v for k, v in values.items()}
    SamplingOptions(**values)
    return values
