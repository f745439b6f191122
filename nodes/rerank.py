"""CLIP reranking node: sort a batch of images by how well they match a prompt (Muse's best-of-N)."""

from __future__ import annotations

from .runtime import running
from .types import CONDITIONING, RERANKER, image_from_comfy


class MuseCLIPRerank:
    DESCRIPTION = (
        "Scores every image of a batch against the prompt with a CLIP model and sorts them best first "
        "(generate N, keep the best: Muse's reranking). The scores are shown on the node."
    )
    CATEGORY = "Muse/rerank"
    FUNCTION = "rerank"
    RETURN_TYPES = ("IMAGE", "IMAGE", "STRING")
    RETURN_NAMES = ("sorted_images", "best_image", "scores")
    OUTPUT_TOOLTIPS = (
        "All images, best first.",
        "The best image.",
        "One line per image, best first: rank, batch index and CLIP score (cosine similarity).",
    )

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "reranker": (RERANKER, {"tooltip": "The CLIP model that scores the images."}),
                "images": ("IMAGE", {"tooltip": "The candidates, e.g. a batch from the Muse Sampler."}),
                "prompt": ("STRING", {"multiline": True, "default": "", "tooltip": (
                    "The text the images should match. Leave empty to use the prompt of the connected conditioning.")}),
            },
            "optional": {
                "conditioning": (CONDITIONING, {"tooltip": "Optional: use the prompt this conditioning was encoded from."}),
            },
        }

    def rerank(self, reranker, images, prompt, conditioning=None):
        text = prompt.strip() or (conditioning.prompts[0] if conditioning is not None else "")
        if not text:
            raise ValueError("Muse CLIP Rerank: no prompt. Type the prompt, or connect the conditioning the images were made with.")
        pixels = image_from_comfy(images)  # checked before the model moves to the GPU
        with running(reranker) as (scorer,):
            result = scorer.rerank(pixels, text)
        order = result.order.tolist()
        scores = [float(result.scores[i]) for i in order]
        lines = "\n".join(f"#{rank + 1}: image {index}, score {score:.4f}" for rank, (index, score) in enumerate(zip(order, scores)))
        return {
            "ui": {"muse_scores": scores, "muse_order": order},
            "result": (images[order], images[order[:1]], lines),
        }


NODE_CLASS_MAPPINGS = {"MuseCLIPRerank": MuseCLIPRerank}
NODE_DISPLAY_NAME_MAPPINGS = {"MuseCLIPRerank": "Muse CLIP Rerank"}
