"""Sampler nodes: text-to-image (and img2img from input tokens) with the base transformer, and
token super-resolution with a Muse super-res transformer."""

from __future__ import annotations

from muse_core.geometry import check_codebooks, grid_scale_for_upscale
from muse_core.limits import MAX_IMAGES, MAX_PIXELS_PER_SIDE, MAX_TOKENS_PER_SIDE
from muse_core.sampling import SUPER_RES_STEPS, SamplingOptions, generate, img2img, super_resolve
from muse_core.sampling.schedules import SINGLE_TEMPERATURE_END

from .previews import progress_callback
from .runtime import LoadedModel, running
from .types import CONDITIONING, SUPER_RES, TOKENS, TRANSFORMER, VQ, MuseTokens, image_to_comfy
from .widgets import decoding_options, from_model, sampling_from, seed

# ComfyUI widgets are static, so a size widget goes up to what the largest supported model takes; the loaded
# model's own limit (muse_core.limits.check_side: MAX_TOKENS_PER_SIDE tokens times its VQ factor) stops a run
# with an error that names it.
SIZE_LIMIT = (f"The largest size depends on the loaded model: {MAX_TOKENS_PER_SIDE} tokens per side, so "
              f"{MAX_TOKENS_PER_SIDE * 16} px for aMUSEd (VQ factor 16) and {MAX_TOKENS_PER_SIDE * 4} px for the "
              "embedded model (factor 4); a larger size stops with an error that names the limit.")


# The decoding widgets (``widgets.decoding_options``) and the SamplingOptions fields they set.
WIDGET_FIELDS = {"steps": "steps", "guidance": "guidance_scale", "guidance_schedule": "guidance_schedule",
                 "mask_schedule": "mask_schedule", "token_temperature": "token_temperature"}


def sampling_options(loaded: LoadedModel, decoding: dict, sampling_from: str | None, mask_schedule: str | None = None,
                     widget_fields: tuple[str, ...] = ()) -> SamplingOptions:
    """A node's decoding options: its seed and ``decoding_options`` widgets, or with ``sampling_from="model"``
    the model's recommended settings (then ``mask_schedule``, then aMUSEd's defaults), except the
    ``widget_fields`` and the seed, which stay the widgets'."""
    widgets = {field: decoding[widget] for widget, field in WIDGET_FIELDS.items()}
    widgets["temperature"] = (decoding["temperature_start"], decoding["temperature_end"])
    if not from_model(sampling_from):
        return SamplingOptions(**widgets, seed=decoding["seed"])
    recommended = ({"mask_schedule": mask_schedule} if mask_schedule else {}) | loaded.sampling
    return SamplingOptions(**(recommended | {k: widgets[k] for k in widget_fields}), seed=decoding["seed"])


def decoding_widget_values(fields: dict) -> dict:
    """SamplingOptions fields -> the decoding widgets that show them (the inverse of ``sampling_options``)."""
    values = {widget: fields[field] for widget, field in WIDGET_FIELDS.items() if field in fields}
    if "temperature" in fields:
        temperature = fields["temperature"]
        values["temperature_start"], values["temperature_end"] = (
            temperature if isinstance(temperature, (tuple, list)) else (temperature, SINGLE_TEMPERATURE_END))
    return values


def check_tokens(tokens: MuseTokens, vq, what: str) -> None:
    """Refuse tokens made by another VQ tokenizer: their ids would mean other image patches."""
    if tokens.codebook_size != vq.codebook_size or tokens.downsample_factor != vq.downsample_factor:
        raise ValueError(
            f"{what}: these tokens come from a VQ with {tokens.codebook_size} codes at factor "
            f"{tokens.downsample_factor}, but the connected VQ has {vq.codebook_size} codes at factor "
            f"{vq.downsample_factor}. Connect the VQ that belongs to the same model as the transformer."
        )
    if tokens.vq_fingerprint is not None and tokens.vq_fingerprint != vq.fingerprint:
        raise ValueError(
            f"{what}: these tokens come from another VQ of the same size ({tokens.codebook_size} codes at factor "
            f"{tokens.downsample_factor}) than the connected one; their ids would mean other patches. Connect the VQ "
            "that made them (the one of the same model as the transformer)."
        )


class MuseSampler:
    DESCRIPTION = (
        "Text-to-image by iterative parallel decoding: starts from a fully masked token grid and, at each step, "
        "predicts every masked token at once and keeps the most confident. With input tokens (from VQ Encode) "
        "and strength < 1 it is img2img. Outputs the tokens and the decoded images; shows the current tokens "
        "at every step (grey checkerboard = still masked)."
    )
    CATEGORY = "Muse/sampling"
    FUNCTION = "sample"
    RETURN_TYPES = (TOKENS, "IMAGE")
    RETURN_NAMES = ("tokens", "images")
    OUTPUT_TOOLTIPS = ("The generated token grids (for super-res or VQ Decode).", "The decoded images.")

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "transformer": (TRANSFORMER, {"tooltip": "The base transformer."}),
                "vq": (VQ, {"tooltip": "The VQ tokenizer of this transformer: decodes the result and the previews."}),
                "conditioning": (CONDITIONING, {"tooltip": "Prompt and negative prompt from Muse Text Encode."}),
                "width": ("INT", {"default": 256, "min": 16, "max": MAX_PIXELS_PER_SIDE, "step": 16, "tooltip": (
                    "Image width in pixels, a multiple of the VQ factor (aMUSEd: 16, native 256 or 512; the embedded "
                    f"model: 4, native 64). {SIZE_LIMIT} Ignored with input tokens.")}),
                "height": ("INT", {"default": 256, "min": 16, "max": MAX_PIXELS_PER_SIDE, "step": 16, "tooltip": (
                    f"Image height in pixels (see width). {SIZE_LIMIT} Ignored with input tokens.")}),
                "batch_size": ("INT", {"default": 1, "min": 1, "max": MAX_IMAGES, "tooltip": (
                    "Images to generate; image k uses seed + k. Ignored with input tokens (one per token grid).")}),
                "seed": seed(),
                **decoding_options(),
                "strength": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 1.0, "step": 0.01, "tooltip": (
                    "With input tokens: the share of the schedule to run again (img2img); 1 redraws everything, "
                    "0 returns the input. Without input tokens it has no effect.")}),
            },
            "optional": {
                "tokens": (TOKENS, {"tooltip": "Optional start tokens (VQ Encode of an image) for img2img."}),
                **sampling_from(),
            },
        }

    def sample(self, transformer, vq, conditioning, width, height, batch_size, strength, tokens=None,
               sampling_from=None, **decoding):
        options = sampling_options(transformer, decoding, sampling_from)
        with running(transformer, vq) as (model, vq_model):
            check_codebooks(model, vq_model)
            callback = progress_callback(options.steps, vq_model, model.mask_token_id)
            if tokens is None:
                ids = generate(model, None, conditioning, height=height, width=width,
                               downsample_factor=vq_model.downsample_factor, num_images_per_prompt=batch_size,
                               options=options, callback=callback)
            else:
                check_tokens(tokens, vq_model, "Muse Sampler")
                image_height, image_width = tokens.image_size
                ids = img2img(model, None, tokens.ids, conditioning, strength=strength, height=image_height,
                              width=image_width, options=options, callback=callback)
            images = vq_model.decode(ids.to(vq_model.device))
        return MuseTokens.of(ids, vq_model), image_to_comfy(images)


class MuseSuperResSampler:
    DESCRIPTION = (
        "Muse super-resolution in token space: the super-res transformer redraws low-res tokens (from the Muse "
        "Sampler) on a finer grid under the same prompt. Outputs the high-res tokens and images."
    )
    CATEGORY = "Muse/sampling"
    FUNCTION = "sample"
    RETURN_TYPES = (TOKENS, "IMAGE")
    RETURN_NAMES = ("tokens", "images")
    OUTPUT_TOOLTIPS = ("The high-resolution token grids.", "The decoded high-resolution images.")

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "super_res": (SUPER_RES, {"tooltip": "The super-resolution transformer."}),
            "super_res_vq": (VQ, {"tooltip": "The VQ tokenizer of the high-resolution grid (decodes the result)."}),
            "conditioning": (CONDITIONING, {"tooltip": "Prompt and negative prompt from Muse Text Encode."}),
            "tokens": (TOKENS, {"tooltip": "Low-resolution tokens from the Muse Sampler (base model)."}),
            "upscale": ("INT", {"default": 2, "min": 1, "max": 8, "tooltip": (
                "Output pixel size / input pixel size (Muse: 256 -> 512 px is 2).")}),
            "seed": seed(),
            **decoding_options(steps=SUPER_RES_STEPS),
        }, "optional": sampling_from(kept="steps")}

    def sample(self, super_res, super_res_vq, conditioning, tokens, upscale, sampling_from=None, **decoding):
        if super_res is None or super_res_vq is None:
            raise ValueError(
                "Muse Super-Res Sampler: no super-res model is connected (the loaded folder has no super_res/ stage; "
                "aMUSEd has none). Load one with Muse Super-Res Loader, or upscale with VQ Decode -> an image "
                "upscaler -> VQ Encode -> Muse Sampler at strength 0.3-0.6."
            )
        options = sampling_options(super_res, decoding, sampling_from, widget_fields=("steps",))
        with running(super_res, super_res_vq) as (model, vq_model):
            check_codebooks(model, vq_model)
            if super_res.lowres_vq is not None and tokens.vq_fingerprint not in (None, super_res.lowres_vq):
                raise ValueError(
                    "Muse Super-Res Sampler: these tokens were not made by the base VQ of this super-res model's "
                    "cascade (e.g. they come from its super-res VQ, whose ids mean other patches). Connect the "
                    "tokens of the base Muse Sampler, or of VQ Encode with the Model Loader's vq output."
                )
            if tokens.codebook_size != model.config.lowres_codebook_size:
                raise ValueError(
                    f"Muse Super-Res Sampler: the tokens come from a {tokens.codebook_size}-code VQ but this super-res "
                    f"model reads {model.config.lowres_codebook_size}-code low-res tokens. Connect tokens from the "
                    "base model of the same cascade."
                )
            try:
                grid_scale = grid_scale_for_upscale(upscale, tokens.downsample_factor, vq_model.downsample_factor)
            except ValueError as error:
                raise ValueError(f"Muse Super-Res Sampler: {error}") from None
            callback = progress_callback(options.steps, vq_model, model.mask_token_id)
            ids = super_resolve(model, None, tokens.ids, conditioning, grid_scale=grid_scale,
                                downsample_factor=vq_model.downsample_factor, options=options, callback=callback)
            images = vq_model.decode(ids.to(vq_model.device))
        return MuseTokens.of(ids, vq_model), image_to_comfy(images)


NODE_CLASS_MAPPINGS = {"MuseSampler": MuseSampler, "MuseSuperResSampler": MuseSuperResSampler}
NODE_DISPLAY_NAME_MAPPINGS = {"MuseSampler": "Muse Sampler", "MuseSuperResSampler": "Muse Super-Res Sampler"}
