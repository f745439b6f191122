"""Loader nodes: Muse / aMUSEd components from models/muse (and users' text encoders from
models/text_encoders), or the embedded default model."""

from __future__ import annotations

import torch

from muse_core.loading import load_model
from muse_core.models.super_res import SuperResTransformer
from muse_core.models.vq import VQTokenizer
from muse_core.pipeline import load_pipeline, load_transformer, read_mask_free_defaults, recommended_sampling
from muse_core.rerank import load_clip_scorer
from muse_core.text import load_clip_encoder, load_t5_encoder
from muse_core.text.loading import has_own_tokenizer

from . import comfy_env
from .model_files import component_names, model_folder_names, resolve
from .runtime import LoadedModel, at_rest_device, compute_device, torch_dtype
from .types import RERANKER, SUPER_RES, TEXT_ENCODER, TRANSFORMER, VQ
from .widgets import ATTENTION, COMPILE, model_options

TEXT_FOLDERS = (comfy_env.MUSE_FOLDER, comfy_env.TEXT_ENCODER_FOLDER)


class MuseModelLoader:
    DESCRIPTION = (
        "Loads a whole model folder from models/muse: Muse, aMUSEd, Meissonic or Monetico (diffusers / hub "
        "layout: transformer/, vqvae/, text_encoder/, tokenizer/, optional scheduler/, super_res/ and "
        "super_res_vqvae/), or the embedded default model. Super-res outputs are empty when the folder has "
        "no super-res stage."
    )
    CATEGORY = "Muse/loaders"
    RETURN_TYPES = (TRANSFORMER, VQ, TEXT_ENCODER, SUPER_RES, VQ)
    RETURN_NAMES = ("transformer", "vq", "text_encoder", "super_res", "super_res_vq")
    OUTPUT_TOOLTIPS = (
        "The base masked-token transformer.",
        "The VQ tokenizer of the base transformer (images <-> tokens).",
        "The text encoder (T5 for Muse, CLIP-L/14 for aMUSEd, CLIP-H/14 for Meissonic) with its tokenizer.",
        "The super-resolution transformer (empty if the folder has none).",
        "The VQ tokenizer of the super-resolution grid (empty if the folder has no super-res stage).",
    )
    FUNCTION = "load"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "model": (model_folder_names(), {"tooltip": (
                "A model folder inside models/muse, or 'embedded': the small shapes model shipped with the pack "
                "(64 px base, 128 px super-res).")}),
            **model_options("transformer and text encoder"),
            "attention": ATTENTION,
        }, "optional": {"compile": COMPILE}}  # optional: workflows saved before it load unchanged

    def load(self, model, dtype, device, attention, compile=None):
        folder = resolve(model)
        target = compute_device(device)
        weights_dtype = torch_dtype(dtype, target)
        pipe = load_pipeline(folder, dtype=weights_dtype, device=at_rest_device(target), attention=attention)
        if compile:
            for transformer in (pipe.transformer, pipe.super_res):
                if transformer is not None:
                    transformer.compile_steps()

        # One device for the whole folder; a component whose offload device differs (with --highvram: the text
        # encoder and VQ rest on the CPU) goes there when ComfyUI first unloads it.
        def wrap(component, label, kind, sampling=None, **extra):
            return None if component is None else LoadedModel(component, f"{label} of '{model}'", target,
                                                               sampling or {}, offload_device=at_rest_device(target, kind),
                                                               **extra)

        return (
            wrap(pipe.transformer, "transformer", "unet", pipe.sampling, mask_free=pipe.mask_free),
            wrap(pipe.vq, "VQ", "vae"),
            wrap(pipe.text_encoder, "text encoder", "text_encoder"),
            wrap(pipe.super_res, "super-res transformer", "unet", pipe.super_res_sampling,
                 lowres_vq=pipe.vq.fingerprint),
            wrap(pipe.super_res_vq, "super-res VQ", "vae"),
        )


class _ComponentLoader:
    """One model file or component folder; subclasses say which model class and which list."""

    CATEGORY = "Muse/loaders"
    FUNCTION = "load"
    model_class: type
    label: str
    embedded: list[str]
    default_dtype = None  # None: the dtype widget's auto rule
    offload_kind = "unet"  # which of ComfyUI's offload devices the weights rest on (runtime.at_rest_device)
    recommends_sampling = False  # transformers: pass their recommended settings on to the samplers
    compilable = False  # transformers: offer the optional compile widget

    @classmethod
    def INPUT_TYPES(cls):
        inputs = {"required": {
            "model_name": (component_names(cls.embedded), {"tooltip": (
                f"The {cls.label}: a .safetensors file or a diffusers component folder inside models/muse, "
                "or a component of the embedded default model.")}),
            **model_options(cls.label),
            "attention": ATTENTION,
        }}
        if cls.compilable:
            inputs["optional"] = {"compile": COMPILE}
        return inputs

    def load(self, model_name, dtype, device, attention, compile=None):
        target = compute_device(device)
        rest = at_rest_device(target, self.offload_kind)
        path = resolve(model_name)
        model = self.load_component(path, dtype=torch_dtype(dtype, target, self.default_dtype), device=rest,
                                    attention=attention)
        if compile:
            model.compile_steps()
        # a component's recommended settings: its family's and its model folder's sampling.json, as for a folder
        sampling = recommended_sampling(model, path.parent) if self.recommends_sampling else {}
        mask_free = read_mask_free_defaults(path.parent) if self.recommends_sampling else {}
        return (LoadedModel(model, f"{self.label} '{model_name}'", target, sampling, mask_free, offload_device=rest),)

    def load_component(self, path, **options):
        return load_model(self.model_class, path, **options)


class MuseTransformerLoader(_ComponentLoader):
    DESCRIPTION = (
        "Loads a base masked-token transformer (a transformer/ folder, or one .safetensors file) of any family: "
        "aMUSEd / Muse U-ViT or Meissonic / Monetico, told apart by the file's tensors."
    )
    RETURN_TYPES = (TRANSFORMER,)
    RETURN_NAMES = ("transformer",)
    OUTPUT_TOOLTIPS = ("The base transformer, for the Muse Sampler, inpainting and editing nodes.",)
    label = "base transformer"
    recommends_sampling = True
    compilable = True
    embedded = ["transformer.safetensors"]

    def load_component(self, path, **options):
        return load_transformer(path, **options)


class MuseSuperResLoader(_ComponentLoader):
    DESCRIPTION = "Loads a Muse super-resolution transformer (low-res tokens + text -> high-res tokens)."
    RETURN_TYPES = (SUPER_RES,)
    RETURN_NAMES = ("super_res",)
    OUTPUT_TOOLTIPS = ("The super-res transformer, for the Muse Super-Res Sampler.",)
    model_class = SuperResTransformer
    label = "super-res transformer"
    recommends_sampling = True
    compilable = True
    embedded = ["super_res.safetensors"]


class MuseVQLoader(_ComponentLoader):
    DESCRIPTION = (
        "Loads a VQ tokenizer (aMUSEd's vqvae/ folder, or one .safetensors file): images <-> grids of token ids. "
        "It must be the VQ the transformer was trained with."
    )
    RETURN_TYPES = (VQ,)
    RETURN_NAMES = ("vq",)
    OUTPUT_TOOLTIPS = ("The VQ tokenizer, for VQ Encode / Decode and the samplers' previews.",)
    model_class = VQTokenizer
    label = "VQ tokenizer"
    embedded = ["vqvae.safetensors", "super_res_vqvae.safetensors"]
    default_dtype = torch.float32
    offload_kind = "vae"

    @classmethod
    def INPUT_TYPES(cls):
        inputs = super().INPUT_TYPES()
        inputs["required"]["dtype"][1]["tooltip"] = (
            "Precision of the VQ weights. auto: fp32 (aMUSEd's VQ decodes to NaNs in fp16). The VQ always "
            "computes in fp32, so a smaller dtype only saves memory.")
        return inputs


class _TextEncoderLoader:
    """A T5 or CLIP text encoder from models/muse or models/text_encoders."""

    CATEGORY = "Muse/loaders"
    FUNCTION = "load"
    RETURN_TYPES = (TEXT_ENCODER,)
    RETURN_NAMES = ("text_encoder",)
    OUTPUT_TOOLTIPS = ("The text encoder, for Muse Text Encode.",)
    loader: staticmethod  # load_t5_encoder or load_clip_encoder
    comfy_tokenizer: str
    label: str
    embedded: list[str]

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "model_name": (component_names(cls.embedded, TEXT_FOLDERS), {"tooltip": (
                f"The {cls.label}: a folder with config.json, or a single .safetensors file in Hugging Face key "
                "layout (such as the files in models/text_encoders). Its tokenizer is taken from beside the "
                "weights, else ComfyUI's own.")}),
            **model_options(cls.label),
        }}

    def load(self, model_name, dtype, device):
        path = resolve(model_name, TEXT_FOLDERS)
        tokenizer = None if has_own_tokenizer(path) else comfy_env.comfy_tokenizer_dir(self.comfy_tokenizer)
        target = compute_device(device)
        rest = at_rest_device(target, "text_encoder")
        encoder = type(self).loader(path, tokenizer_path=tokenizer, dtype=torch_dtype(dtype, target), device=rest)
        return (LoadedModel(encoder, f"{self.label} '{model_name}'", target, offload_device=rest),)


class MuseT5Loader(_TextEncoderLoader):
    DESCRIPTION = (
        "Loads a T5 encoder (Muse's text encoder), e.g. t5xxl_fp16.safetensors from models/text_encoders, "
        "or the embedded model's small T5."
    )
    loader = staticmethod(load_t5_encoder)
    comfy_tokenizer = "t5"
    label = "T5 encoder"
    embedded = ["text_encoder"]


# The CLIP list's only entry when there is nothing to offer. The embedded model's text encoder is a T5, and
# its reranker's CLIP text tower conditions no transformer; an empty list would show a blank widget that
# fails with "Value not in list", so the entry itself says what to install.
NO_CLIP_TEXT_ENCODER = "none installed: put clip_l.safetensors in models/text_encoders"


class MuseCLIPTextLoader(_TextEncoderLoader):
    DESCRIPTION = (
        "Loads a CLIP text encoder with projection (aMUSEd's text encoder, CLIP-L/14), e.g. clip_l.safetensors "
        "from models/text_encoders or aMUSEd's text_encoder/ folder."
    )
    loader = staticmethod(load_clip_encoder)
    comfy_tokenizer = "clip"
    label = "CLIP text encoder"
    embedded = []

    @classmethod
    def INPUT_TYPES(cls):
        inputs = super().INPUT_TYPES()
        names = inputs["required"]["model_name"][0]
        if not names:
            names.append(NO_CLIP_TEXT_ENCODER)
        return inputs

    def load(self, model_name, dtype, device):
        if model_name == NO_CLIP_TEXT_ENCODER:
            raise FileNotFoundError(
                "Muse CLIP Text Encoder Loader: no CLIP text encoder is installed. Put clip_l.safetensors (ComfyUI's "
                "CLIP-L, the text encoder aMUSEd uses) in ComfyUI/models/text_encoders, or an aMUSEd folder "
                "(with text_encoder/) in ComfyUI/models/muse, then refresh the lists (press R). The embedded model "
                "needs none: its text encoder is a T5 (Muse T5 Text Encoder Loader, embedded/text_encoder)."
            )
        return super().load(model_name, dtype, device)


class MuseRerankerLoader:
    DESCRIPTION = (
        "Loads a full CLIP model (text and vision towers, transformers layout) to score images against a prompt, "
        "for best-of-N reranking as in the Muse paper."
    )
    CATEGORY = "Muse/loaders"
    FUNCTION = "load"
    RETURN_TYPES = (RERANKER,)
    RETURN_NAMES = ("reranker",)
    OUTPUT_TOOLTIPS = ("The CLIP model, for Muse CLIP Rerank.",)

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "model_name": (component_names(["reranker"]), {"tooltip": (
                "A CLIP model folder (config.json with model_type 'clip', weights, tokenizer) inside models/muse, "
                "or the embedded model's reranker.")}),
            **model_options("CLIP model"),
        }}

    def load(self, model_name, dtype, device):
        target = compute_device(device)
        rest = at_rest_device(target, "text_encoder")  # CLIP, like the text encoders ComfyUI offloads
        scorer = load_clip_scorer(resolve(model_name), dtype=torch_dtype(dtype, target), device=rest)
        return (LoadedModel(scorer, f"CLIP reranker '{model_name}'", target, offload_device=rest),)


NODE_CLASS_MAPPINGS = {
    "MuseModelLoader": MuseModelLoader,
    "MuseTransformerLoader": MuseTransformerLoader,
    "MuseSuperResLoader": MuseSuperResLoader,
    "MuseVQLoader": MuseVQLoader,
    "MuseT5Loader": MuseT5Loader,
    "MuseCLIPTextLoader": MuseCLIPTextLoader,
    "MuseRerankerLoader": MuseRerankerLoader,
}
NODE_DISPLAY_NAME_MAPPINGS = {
    "MuseModelLoader": "Muse Model Loader (folder)",
    "MuseTransformerLoader": "Muse Transformer Loader",
    "MuseSuperResLoader": "Muse Super-Res Loader",
    "MuseVQLoader": "Muse VQ Loader",
    "MuseT5Loader": "Muse T5 Text Encoder Loader",
    "MuseCLIPTextLoader": "Muse CLIP Text Encoder Loader",
    "MuseRerankerLoader": "Muse CLIP Reranker Loader",
}
