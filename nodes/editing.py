"""Editing nodes: inpainting, outpainting and mask-free editing of ComfyUI images."""

from __future__ import annotations

from muse_core.editing import (
    EDIT_FRACTION,
    EDIT_GUIDANCE,
    EDIT_ITERATIONS,
    EDIT_TOP_K,
    INPAINT_MASK_SCHEDULE,
    edit_image,
    inpaint,
    outpaint,
)
from muse_core.editing.inpaint import TOKEN_RULES, prepare_mask
from muse_core.geometry import check_codebooks
from muse_core.limits import MAX_EDIT_ITERATIONS, MAX_PIXELS_PER_SIDE
from muse_core.pipeline import mask_free_over

from .previews import progress_callback
from .runtime import LoadedModel, running
from .sampling import sampling_options
from .types import CONDITIONING, TOKENS, TRANSFORMER, VQ, MuseTokens, image_from_comfy, image_to_comfy, mask_from_comfy
from .widgets import SAMPLING_FROM, combo, decoding_options, from_model, sampling_from, seed

EMPTY_LOADIMAGE_MASK = (64, 64)  # what LoadImage returns for an image without alpha


def _model_inputs() -> dict:
    return {
        "transformer": (TRANSFORMER, {"tooltip": "The base transformer."}),
        "vq": (VQ, {"tooltip": "The VQ tokenizer of this transformer."}),
        "conditioning": (CONDITIONING, {"tooltip": "What the edited area should show (Muse Text Encode)."}),
        "image": ("IMAGE", {"tooltip": "Images to edit; width and height must be multiples of the VQ factor."}),
    }


def editing_mask(mask, images):
    """ComfyUI MASK -> ``[B, H, W]`` matching ``images`` ``[B, 3, H, W]``, with errors a user can act on."""
    mask = mask_from_comfy(mask)
    height, width = images.shape[-2:]
    if mask.shape[-2:] == EMPTY_LOADIMAGE_MASK and (height, width) != EMPTY_LOADIMAGE_MASK and not mask.any():
        raise ValueError(
            "the mask is empty: Load Image gives an empty 64x64 mask when the image has no transparency. Paint "
            "the area to repaint in the mask editor (right-click Load Image > Open in MaskEditor) or load a PNG "
            "whose transparent pixels mark it."
        )
    return prepare_mask(mask, images)


class MuseInpaint:
    DESCRIPTION = (
        "Repaints the masked area of an image under a prompt (Muse inpainting): tokens under the mask are "
        "masked and regenerated, the others are kept. With blend on, pixels outside the mask are copied from "
        "the input, so they are unchanged. Mask convention as Load Image: 1 (transparent) = repaint."
    )
    CATEGORY = "Muse/editing"
    FUNCTION = "inpaint"
    RETURN_TYPES = ("IMAGE", TOKENS)
    RETURN_NAMES = ("images", "tokens")
    OUTPUT_TOOLTIPS = ("The inpainted images.", "Their token grids (before blending).")

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            **_model_inputs(),
            "mask": ("MASK", {"tooltip": "Area to repaint (1 = repaint), the size of the image; one for all images or one each."}),
            "seed": seed(),
            **decoding_options(mask_schedule=INPAINT_MASK_SCHEDULE),
            "token_rule": combo(TOKEN_RULES, default="any", tooltip=(
                "Which tokens are regenerated: any = every token touching the mask; majority = tokens at least "
                "half covered (keeps more of the original around thin masks).")),
            "blend": ("BOOLEAN", {"default": True, "tooltip": (
                "Copy the unmasked pixels back from the input (they stay exactly as they were).")}),
        }, "optional": sampling_from()}

    def inpaint(self, transformer, vq, conditioning, image, mask, token_rule, blend, sampling_from=None, **decoding):
        images = image_from_comfy(image)
        pixel_mask = editing_mask(mask, images)
        options = sampling_options(transformer, decoding, sampling_from, mask_schedule=INPAINT_MASK_SCHEDULE)
        with running(transformer, vq) as (model, vq_model):
            check_codebooks(model, vq_model)
            result = inpaint(model, vq_model, None, images, pixel_mask, conditioning, options=options, rule=token_rule,
                             blend=blend, callback=progress_callback(options.steps, vq_model, model.mask_token_id))
        return image_to_comfy(result.images), MuseTokens.of(result.ids, vq_model)


class MuseOutpaint:
    DESCRIPTION = (
        "Extends images beyond their borders (Muse outpainting): the canvas grows by the given pixels per side "
        "(rounded up to the VQ factor) and the new area is drawn to match the prompt and the image."
    )
    CATEGORY = "Muse/editing"
    FUNCTION = "outpaint"
    RETURN_TYPES = ("IMAGE", "MASK", TOKENS)
    RETURN_NAMES = ("images", "mask", "tokens")
    OUTPUT_TOOLTIPS = ("The extended images.", "1 on the new area.", "Their token grids.")

    @classmethod
    def INPUT_TYPES(cls):
        margin = {"default": 0, "min": 0, "max": MAX_PIXELS_PER_SIDE, "step": 8}
        limit = " The grown image has the Muse Sampler's size limit, which depends on the model."
        return {"required": {
            **_model_inputs(),
            "left": ("INT", {**margin, "tooltip": f"Pixels to add on the left.{limit}"}),
            "top": ("INT", {**margin, "tooltip": f"Pixels to add at the top.{limit}"}),
            "right": ("INT", {**margin, "default": 64, "tooltip": f"Pixels to add on the right.{limit}"}),
            "bottom": ("INT", {**margin, "tooltip": f"Pixels to add at the bottom.{limit}"}),
            "seed": seed(),
            **decoding_options(mask_schedule=INPAINT_MASK_SCHEDULE),
        }, "optional": sampling_from()}

    def outpaint(self, transformer, vq, conditioning, image, left, top, right, bottom, sampling_from=None,
                 **decoding):
        images = image_from_comfy(image)
        options = sampling_options(transformer, decoding, sampling_from, mask_schedule=INPAINT_MASK_SCHEDULE)
        with running(transformer, vq) as (model, vq_model):
            check_codebooks(model, vq_model)
            result = outpaint(model, vq_model, None, images, conditioning, left=left, top=top, right=right,
                              bottom=bottom, options=options,
                              callback=progress_callback(options.steps, vq_model, model.mask_token_id))
        tokens = MuseTokens.of(result.ids, vq_model)
        return image_to_comfy(result.images), result.pixel_mask.float().cpu(), tokens


def mask_free_settings(loaded: LoadedModel, widgets: dict, sampling_from: str | None) -> dict:
    """The edit's settings: the widgets', or with ``sampling_from="model"`` the model's recommended ones."""
    return mask_free_over(loaded.mask_free, {}) if from_model(sampling_from) else widgets


class MuseMaskFreeEdit:
    DESCRIPTION = (
        "Mask-free editing (Muse section 3.3.2): changes an image towards a new prompt by re-sampling a small "
        "random share of its tokens many times, keeping the rest of the picture. Optionally confined by a mask."
    )
    CATEGORY = "Muse/editing"
    FUNCTION = "edit"
    RETURN_TYPES = ("IMAGE", TOKENS)
    RETURN_NAMES = ("images", "tokens")
    OUTPUT_TOOLTIPS = ("The edited images.", "Their token grids.")

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                **_model_inputs(),
                "seed": seed(),
                "iterations": ("INT", {"default": EDIT_ITERATIONS, "min": 1, "max": MAX_EDIT_ITERATIONS, "tooltip": (
                    "Re-sampling rounds (one model pass each); the paper uses about 100.")}),
                "fraction": ("FLOAT", {"default": EDIT_FRACTION, "min": 0.01, "max": 1.0, "step": 0.01, "tooltip": (
                    "Share of tokens re-sampled per round; small keeps the layout (paper: ~8%).")}),
                "guidance": ("FLOAT", {"default": EDIT_GUIDANCE, "min": 0.0, "max": 100.0, "step": 0.1, "round": 0.01,
                                       "tooltip": "Classifier-free guidance scale (paper: 4)."}),
                "top_k": ("INT", {"default": EDIT_TOP_K, "min": 1, "max": 8192, "tooltip": (
                    "Each re-sampled token is drawn from the k most likely codes (paper: 3).")}),
            },
            "optional": {
                "mask": ("MASK", {"tooltip": "Optional: only tokens touching the mask (1) may change."}),
                "sampling_from": combo(SAMPLING_FROM, tooltip=(
                    "widgets: edit with the iterations, fraction, guidance and top_k widgets. model: with the "
                    "mask-free settings the loaded model recommends (the \"mask_free\" section of its folder's "
                    "sampling.json, e.g. the embedded model's; the paper's where it has none), whatever those "
                    "widgets say. The seed always comes from its widget.")),
            },
        }

    def edit(self, transformer, vq, conditioning, image, seed, iterations, fraction, guidance, top_k, mask=None,
             sampling_from=None):
        images = image_from_comfy(image)
        pixel_mask = None if mask is None else editing_mask(mask, images)  # checked before models move
        widgets = {"iterations": iterations, "fraction": fraction, "guidance_scale": guidance, "top_k": top_k}
        settings = mask_free_settings(transformer, widgets, sampling_from)
        with running(transformer, vq) as (model, vq_model):
            result = edit_image(model, vq_model, None, images, conditioning, mask=pixel_mask, **settings, seed=seed,
                                callback=progress_callback(settings["iterations"], vq_model, None))
        return image_to_comfy(result.images), MuseTokens.of(result.ids, vq_model)


NODE_CLASS_MAPPINGS = {"MuseInpaint": MuseInpaint, "MuseOutpaint": MuseOutpaint, "MuseMaskFreeEdit": MuseMaskFreeEdit}
NODE_DISPLAY_NAME_MAPPINGS = {
    "MuseInpaint": "Muse Inpaint",
    "MuseOutpaint": "Muse Outpaint",
    "MuseMaskFreeEdit": "Muse Mask-Free Edit",
}
