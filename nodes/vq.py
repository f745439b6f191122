"""VQ nodes: ComfyUI images <-> Muse token grids."""

from __future__ import annotations

from muse_core.limits import check_image_batch

from .runtime import running
from .sampling import check_tokens
from .types import TOKENS, VQ, MuseTokens, image_from_comfy, image_to_comfy


class MuseVQEncode:
    DESCRIPTION = (
        "Turns images into grids of VQ token ids (one token per f x f pixels), e.g. as the start of img2img "
        "in the Muse Sampler. Sizes must be multiples of the VQ factor: scale or crop the image first."
    )
    CATEGORY = "Muse/vq"
    FUNCTION = "encode"
    RETURN_TYPES = (TOKENS,)
    RETURN_NAMES = ("tokens",)
    OUTPUT_TOOLTIPS = ("The token grids, one per image.",)

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "vq": (VQ, {"tooltip": "The VQ tokenizer of the model that will use the tokens."}),
            "images": ("IMAGE", {"tooltip": "Images whose width and height are multiples of the VQ factor."}),
        }}

    def encode(self, vq, images):
        images = image_from_comfy(images)
        with running(vq) as (vq_model,):
            check_image_batch("the IMAGE input", images, vq_model.downsample_factor)
            ids = vq_model.encode(images)
        return (MuseTokens.of(ids, vq_model),)


class MuseVQDecode:
    DESCRIPTION = "Turns Muse token grids back into images with the VQ tokenizer that made them."
    CATEGORY = "Muse/vq"
    FUNCTION = "decode"
    RETURN_TYPES = ("IMAGE",)
    RETURN_NAMES = ("images",)
    OUTPUT_TOOLTIPS = ("The decoded images.",)

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "vq": (VQ, {"tooltip": "The VQ tokenizer the tokens belong to."}),
            "tokens": (TOKENS, {"tooltip": "Token grids from a Muse sampler, editor or VQ Encode."}),
        }}

    def decode(self, vq, tokens):
        with running(vq) as (vq_model,):
            check_tokens(tokens, vq_model, "Muse VQ Decode")
            images = vq_model.decode(tokens.ids.to(vq_model.device))
        return (image_to_comfy(images),)


NODE_CLASS_MAPPINGS = {"MuseVQEncode": MuseVQEncode, "MuseVQDecode": MuseVQDecode}
NODE_DISPLAY_NAME_MAPPINGS = {"MuseVQEncode": "Muse VQ Encode", "MuseVQDecode": "Muse VQ Decode"}
