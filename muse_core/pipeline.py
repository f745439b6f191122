"""A whole model family in one object, loaded from one folder.

Folder layout (diffusers' aMUSEd layout, plus the Muse super-resolution stage)::

    transformer/        base masked-token U-ViT            (config.json + *.safetensors)
    vqvae/              VQ tokenizer of the base model
    text_encoder/       CLIP text model with projection (aMUSEd) or T5 encoder (Muse)
    tokenizer/          the text encoder's tokenizer files
    super_res/          optional: Muse super-resolution transformer
    super_res_vqvae/    optional: VQ tokenizer of the super-res grid (default: vqvae/)
    reranker/           optional: a CLIP model (vision + text) to rank candidates by prompt match
    sampling.json       optional: the sampling settings the model is meant to be used with (fields of
                        ``SamplingOptions``, e.g. {"guidance_scale": 3.0, "temperature": [0.5, 0.0]});
                        without it, aMUSEd's defaults

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
from .loading.files import read_config, read_json, tensor_names
from .models.super_res import SuperResTransformer
from .models.uvit import MaskedTokenUViT
from .models.vq import VQTokenizer
from .sampling.sampler import SamplingOptions

SAMPLING_FILE = "sampling.json"
RERANKER_FOLDER = "reranker"  # optional: a full CLIP model for best-of-K reranking (muse_core.rerank)

# The small cascade the project trains and ships (muse_core/training/cascade.py), so the pack works offline.
DEFAULT_MODEL_DIR = Path(__file__).parent / "default_model"


@dataclasses.dataclass
class MusePipeline:
    transformer: MaskedTokenUViT
    vq: VQTokenizer
    text_encoder: "TextEncoder"  # noqa: F821  (muse_core.text, imported lazily: transformers is heavy)
    super_res: SuperResTransformer | None = None
    super_res_vq: VQTokenizer | None = None  # the super-res grid's VQ; set to ``vq`` when the folder has none
    sampling: dict = dataclasses.field(default_factory=dict)  # the folder's sampling.json

    def sampling_options(self, **values) -> SamplingOptions:
        """``SamplingOptions`` from ``values``, the model's recommended settings where a value is None or
        missing, and aMUSEd's defaults for the rest."""
        return SamplingOptions(**(self.sampling | {k: v for k, v in values.items() if v is not None}))

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


def load_pipeline(
    folder: str | Path,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str = "cpu",
    variant: str | None = None,
    attention: str = "auto",
    text_dtype: torch.dtype | None = None,
    vq_dtype: torch.dtype = torch.float32,
) -> MusePipeline:
    """Load every component of a model folder (layout in this module's docstring).

    ``dtype`` is for the transformers; ``text_dtype`` defaults to it; the VQ defaults to fp32 because
    its decoder gives NaNs in fp16.
    """
    dtype, vq_dtype = check_dtype(dtype), check_dtype(vq_dtype, "vq_dtype")
    text_dtype = check_dtype(text_dtype, "text_dtype")
    folder = Path(folder)
    if not folder.is_dir():
        raise CheckpointError(f"{folder}: not a folder; load_pipeline wants a model folder (see muse_core.pipeline).")
    common = dict(device=device, variant=variant)
    transformer = load_model(MaskedTokenUViT, _require(folder, "transformer"), dtype=dtype, attention=attention, **common)
    vq = load_model(VQTokenizer, _require(folder, "vqvae"), dtype=vq_dtype, attention=attention, **common)
    tokenizer = _component(folder, "tokenizer")
    text_encoder = load_text_encoder(
        _require(folder, "text_encoder"), tokenizer_path=tokenizer, dtype=text_dtype or dtype, **common
    )
    super_res = super_res_vq = None
    if (path := _component(folder, "super_res")) is not None:
        super_res = load_model(SuperResTransformer, path, dtype=dtype, attention=attention, **common)
        if (vq_path := _component(folder, "super_res_vqvae")) is not None:
            super_res_vq = load_model(VQTokenizer, vq_path, dtype=vq_dtype, attention=attention, **common)
    return MusePipeline(transformer, vq, text_encoder, super_res, super_res_vq, read_sampling_defaults(folder))


def read_sampling_defaults(folder: Path) -> dict:
    """The folder's ``sampling.json`` as SamplingOptions fields (checked); {} when there is none."""
    path = folder / SAMPLING_FILE
    if not path.is_file():
        return {}
    fix = "Fix or delete the file (it only sets sampling defaults)."
    values = read_json(path, fix)
    try:
        fields = {field.name for field in dataclasses.fields(SamplingOptions)} - {"seed"}
        unknown = sorted(set(values) - fields)
        if unknown:
            raise ValueError(f"unknown settings {unknown}; allowed: {sorted(fields)}")
        values = {k: tuple(v) if isinstance(v, list) else v for k, v in values.items()}
        SamplingOptions(**values)
    except (ValueError, TypeError) as error:
        raise CheckpointError(f"{path}: {error}. {fix}") from None
    return values
