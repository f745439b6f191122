"""muse_core: a pure-PyTorch engine for Muse-style masked generative text-to-image models.

The public names below are imported on first use, so ``import muse_core`` stays instant and
transformers is only imported when a text encoder is loaded.
"""

import importlib

__version__ = "0.1.0"

_EXPORTS = {
    "load_pipeline": "muse_core.pipeline",
    "load_text_encoder": "muse_core.pipeline",
    "MusePipeline": "muse_core.pipeline",
    "load_model": "muse_core.loading",
    "save_model": "muse_core.loading",
    "CheckpointError": "muse_core.loading",
    "MaskedTokenUViT": "muse_core.models.uvit",
    "UViTConfig": "muse_core.models.uvit",
    "SuperResTransformer": "muse_core.models.super_res",
    "SuperResConfig": "muse_core.models.super_res",
    "VQTokenizer": "muse_core.models.vq",
    "VQConfig": "muse_core.models.vq",
    "TextConditioning": "muse_core.text",
    "EncodedPrompts": "muse_core.text",
    "load_clip_encoder": "muse_core.text",
    "load_t5_encoder": "muse_core.text",
    "set_attention_backend": "muse_core.models.layers",
    "SamplingOptions": "muse_core.sampling",
    "generate": "muse_core.sampling",
    "super_resolve": "muse_core.sampling",
    "img2img": "muse_core.sampling",
    "upscale_via_img2img": "muse_core.sampling",
    "inpaint": "muse_core.editing",
    "outpaint": "muse_core.editing",
    "edit_tokens": "muse_core.editing",
    "edit_image": "muse_core.editing",
    "apply_lora": "muse_core.loading.lora",
    "load_clip_scorer": "muse_core.rerank",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'muse_core' has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value
    return value
