"""CLIP reranking as in the Muse paper: generate N samples per prompt, keep the highest CLIP score.

The CLIP score is the cosine similarity of the L2-normalised image and text embeddings of a
transformers ``CLIPModel`` (not scaled by ``logit_scale``). Images are preprocessed in pure torch
the way CLIPImageProcessor does: bicubic antialiased resize of the short side to the model's
``image_size``, center crop, normalisation with CLIP's mean/std.

Images are ``[B,3,H,W]`` floats in [0,1]. ComfyUI's IMAGE tensors are channels-last ``[B,H,W,3]``:
convert them first, e.g. ``images.movedim(-1, 1)``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from .limits import check_pixels
from .loading.errors import CheckpointError
from .loading.files import read_config
from .text.loading import check_vocab, fill_text_model, load_tokenizer, locate_text_model, read_text_weights

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


@dataclass(frozen=True)
class RerankResult:
    scores: torch.Tensor  # [B] float32 cosine similarities, in input order
    order: torch.Tensor  # [B] long, image indices best-first (ties: lower index first)
    best_index: int


class ClipScorer:
    """Scores images against a prompt with a CLIPModel; see :func:`load_clip_scorer`."""

    def __init__(self, model, tokenizer, image_mean=CLIP_MEAN, image_std=CLIP_STD):
        self.model = model
        self.tokenizer = tokenizer
        self.image_size = model.config.vision_config.image_size
        self.max_length = min(tokenizer.model_max_length, model.config.text_config.max_position_embeddings)
        self.image_mean = torch.tensor(image_mean, dtype=torch.float32).view(1, 3, 1, 1)
        self.image_std = torch.tensor(image_std, dtype=torch.float32).view(1, 3, 1, 1)

    @property
    def device(self) -> torch.device:
        return self.model.logit_scale.device

    @property
    def dtype(self) -> torch.dtype:
        return self.model.visual_projection.weight.dtype

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """``[B,3,H,W]`` in [0,1] -> normalised float32 ``[B,3,S,S]`` pixel values (S = image_size)."""
        _check_images(images)
        images = images.to(self.device, torch.float32)
        size, (height, width) = self.image_size, images.shape[-2:]
        if (height, width) != (size, size):
            # Short side to `size`, long side truncated as CLIPImageProcessor does.
            short, long = min(height, width), max(height, width)
            resized = (size, size * long // short) if height <= width else (size * long // short, size)
            images = F.interpolate(images, size=resized, mode="bicubic", antialias=True, align_corners=False)
            # Bicubic overshoots; CLIPImageProcessor resizes uint8 PIL images, whose values stay in [0,1].
            images = images.clamp(0, 1)
            top, left = (resized[0] - size) // 2, (resized[1] - size) // 2
            images = images[..., top : top + size, left : left + size]
        return (images - self.image_mean.to(self.device)) / self.image_std.to(self.device)

    @torch.no_grad()
    def score(self, images: torch.Tensor, prompt: str | list[str]) -> torch.Tensor:
        """Cosine similarity [B] (float32) of each image with the prompt.

        ``prompt``: one string for the whole batch, or a list of 1 or B strings (one per image).
        """
        pixel_values = self.preprocess(images).to(self.dtype)
        prompts = _check_prompts(prompt, len(images))
        tokens = self.tokenizer(
            prompts, padding="max_length", max_length=self.max_length, truncation=True, return_tensors="pt"
        ).to(self.device)
        # What CLIPModel.get_image/text_features compute; spelled out because their return type changed in
        # transformers 5 (tensor -> output object).
        model = self.model
        image_embeds = model.visual_projection(model.vision_model(pixel_values=pixel_values).pooler_output)
        text_embeds = model.text_projection(model.text_model(**tokens).pooler_output)
        # One prompt gives one text embedding, broadcast over the batch.
        return F.cosine_similarity(image_embeds.float(), text_embeds.float(), dim=-1).cpu()

    def rerank(self, images: torch.Tensor, prompt: str | list[str]) -> RerankResult:
        scores = self.score(images, prompt)
        order = torch.sort(scores, descending=True, stable=True).indices
        return RerankResult(scores, order, int(order[0]))


def _check_images(images) -> None:
    if isinstance(images, torch.Tensor) and (images.ndim != 4 or images.shape[1] != 3):
        channels_last = images.shape[-1:] == (3,)
        hint = " (channels-last ComfyUI IMAGE? convert it to [B,3,H,W], e.g. images.movedim(-1, 1))" if channels_last else ""
        raise ValueError(f"images must be [B,3,H,W]; got shape {list(images.shape)}{hint}.")
    check_pixels("the images to score", images)


def _check_prompts(prompt, batch: int) -> list[str]:
    """One prompt (its text embedding is broadcast over the batch) or one per image."""
    if isinstance(prompt, str):
        return [prompt]
    if not isinstance(prompt, (list, tuple)) or not prompt or not all(isinstance(p, str) for p in prompt):
        raise ValueError(f"prompt must be a string or a non-empty list of strings; got {prompt!r}.")
    if len(prompt) not in (1, batch):
        raise ValueError(f"got {len(prompt)} prompts for {batch} images; give one prompt or one per image.")
    return list(prompt)


def load_clip_scorer(
    path,
    tokenizer_path=None,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str = "cpu",
    config_path=None,
) -> ClipScorer:
    """Load a full CLIPModel (text + vision towers) from safetensors.

    ``path``: a transformers folder (config.json + model[.fp16].safetensors or shards), or a single
    ``.safetensors`` file in HF key layout with its config given by ``config_path`` (a config.json or
    a folder holding one) or in a config.json beside it. The tokenizer is ``tokenizer_path`` if given,
    else found beside the weights (see ``locate_text_model``). Image mean/std come from a
    preprocessor_config.json next to the config if present, else CLIP's defaults.
    """
    from transformers import CLIPConfig, CLIPModel  # noqa: PLC0415

    files, config, tokenizer_dir, source = locate_text_model(path, tokenizer_path, variant=None)
    config_dir = Path(path) if Path(path).is_dir() else Path(path).parent
    if config_path is not None:
        config_dir = Path(config_path).parent if Path(config_path).is_file() else Path(config_path)
        config = read_config(config_dir)
    elif config is None:
        config = read_config(config_dir)
    if config is None or config.get("model_type") != "clip":
        found = "no config.json" if config is None else f"a {config.get('model_type')!r} config"
        raise CheckpointError(
            f"{source}: found {found} in {config_dir}; the reranker needs a full CLIP model (model_type 'clip', "
            "text and vision towers). Pass config_path= the model's config.json."
        )
    config = CLIPConfig.from_dict(config)
    tokenizer = load_tokenizer(tokenizer_dir, _clip_tokenizer_class(tokenizer_dir))
    check_vocab(tokenizer, config.text_config.vocab_size, tokenizer_dir, source)
    # Older exports store the position_ids buffers; they are a constant arange, recreated below.
    state_dict = {k: v for k, v in read_text_weights(files).items() if not k.endswith("embeddings.position_ids")}
    with torch.device("meta"):
        model = CLIPModel(config)
    # Non-persistent buffers are in no file: create them for real, fill_model refuses meta leftovers.
    text_positions = config.text_config.max_position_embeddings
    model.text_model.embeddings.position_ids = torch.arange(text_positions, device=device)[None]
    vision = model.vision_model.embeddings
    vision.position_ids = torch.arange(vision.num_positions, device=device)[None]
    fill_text_model(model, state_dict, source, dtype, device)
    return ClipScorer(model, tokenizer, *_image_normalisation(config_dir))


def _clip_tokenizer_class(folder: Path):
    """The class named in tokenizer_config.json (e.g. the word-level tokenizer of a CLIP trained by
    ``muse_core.training.clip``), else CLIPTokenizerFast: a folder of vocab.json + merges.txt alone."""
    from transformers import AutoTokenizer, CLIPTokenizerFast  # noqa: PLC0415

    config_path = Path(folder) / "tokenizer_config.json"
    try:
        named = config_path.is_file() and "tokenizer_class" in json.loads(config_path.read_text())
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{config_path}: not valid JSON ({exc}); fix or remove the file.") from exc
    return AutoTokenizer if named else CLIPTokenizerFast


def _image_normalisation(folder: Path) -> tuple[tuple[float, ...], tuple[float, ...]]:
    path = folder / "preprocessor_config.json"
    if not path.is_file():
        return CLIP_MEAN, CLIP_STD
    try:
        settings = json.loads(path.read_text())
        mean, std = tuple(map(float, settings["image_mean"])), tuple(map(float, settings["image_std"]))
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(f"{path}: no usable image_mean/image_std ({exc}); fix or remove the file.") from exc
    if len(mean) != 3 or len(std) != 3:
        raise CheckpointError(f"{path}: image_mean and image_std need 3 values each; got {mean}, {std}.")
    return mean, std
