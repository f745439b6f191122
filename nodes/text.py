"""Text encoding: prompt and negative prompt -> Muse conditioning, with a T5 or a CLIP text encoder."""

from __future__ import annotations

from .runtime import running
from .types import CONDITIONING, TEXT_ENCODER


class MuseTextEncode:
    DESCRIPTION = (
        "Encodes a prompt and a negative prompt with a Muse text encoder (T5 for Muse, CLIP for aMUSEd). "
        "The negative prompt replaces the empty prompt in classifier-free guidance: the image is steered "
        "towards the prompt and away from it."
    )
    CATEGORY = "Muse/conditioning"
    FUNCTION = "encode"
    RETURN_TYPES = (CONDITIONING,)
    RETURN_NAMES = ("conditioning",)
    OUTPUT_TOOLTIPS = ("The encoded prompt pair, for the Muse samplers and editing nodes.",)

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "text_encoder": (TEXT_ENCODER, {"tooltip": "The text encoder the transformer was trained with."}),
            "prompt": ("STRING", {"multiline": True, "dynamicPrompts": True, "default": "",
                                  "tooltip": "What to draw."}),
            "negative_prompt": ("STRING", {"multiline": True, "dynamicPrompts": True, "default": "", "tooltip": (
                "What to steer away from; leave empty for plain guidance (the empty prompt, as in aMUSEd).")}),
        }}

    def encode(self, text_encoder, prompt, negative_prompt):
        if not prompt.strip():
            raise ValueError(
                "Muse Text Encode: the prompt is empty. Describe the image in words, e.g. "
                "\"two red circles on a white background\"."
            )
        with running(text_encoder) as (encoder,):
            encoded = encoder.encode_with_negative(prompt, negative_prompt)
        return (encoded.to("cpu"),)


NODE_CLASS_MAPPINGS = {"MuseTextEncode": MuseTextEncode}
NODE_DISPLAY_NAME_MAPPINGS = {"MuseTextEncode": "Muse Text Encode"}
