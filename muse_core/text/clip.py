"""CLIP text conditioning as aMUSEd uses it, on transformers' CLIPTextModelWithProjection.

Matches diffusers' AmusedPipeline: prompts padded to ``max_length`` (77) and truncated, the encoder
called with ``output_hidden_states=True`` and no attention mask; hidden_states = ``hidden_states[-2]``
(penultimate layer, without final_layer_norm), pooled = ``text_embeds`` (projected pooled output).
"""

from __future__ import annotations

import torch

from ..loading.dtypes import check_dtype
from ..loading.errors import CheckpointError
from .conditioning import TextConditioning, TextEncoder, logger
from .loading import check_vocab, fill_text_model, load_tokenizer, locate_text_model, read_text_weights

HEAD_DIM = 64  # every released CLIP text tower uses 64-d heads; used when heads must be inferred


class CLIPTextEncoder(TextEncoder):
    """Prompts -> (penultimate hidden states [B,77,D], all-True mask, text_embeds [B,P]).

    The mask is all True on purpose: aMUSEd's transformer was trained attending to the padding
    tokens too (diffusers passes no mask), so masking them would change its outputs.
    """

    def __init__(self, model, tokenizer):
        max_length = min(tokenizer.model_max_length, model.config.max_position_embeddings)
        super().__init__(model, tokenizer, max_length)

    @property
    def hidden_size(self) -> int:
        return self.model.config.hidden_size

    @property
    def pooled_size(self) -> int:
        return self.model.config.projection_dim

    def tokenize(self, prompts: list[str]) -> torch.Tensor:
        self._warn_if_truncated(prompts)
        return self.tokenizer(
            prompts, padding="max_length", max_length=self.max_length, truncation=True, return_tensors="pt"
        ).input_ids

    def _encode(self, prompts: list[str]) -> TextConditioning:
        ids = self.tokenize(prompts).to(self.device)
        outputs = self.model(ids, return_dict=True, output_hidden_states=True)
        hidden = outputs.hidden_states[-2]
        mask = torch.ones(hidden.shape[:2], dtype=torch.bool, device=hidden.device)
        return TextConditioning(hidden, mask, outputs.text_embeds)


def load_clip_encoder(
    path,
    tokenizer_path=None,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str = "cpu",
    variant: str | None = None,
) -> CLIPTextEncoder:
    """Load a CLIP text encoder from safetensors: a transformers folder (config.json + weights; a full
    CLIP model's vision tower is dropped), a diffusers pipeline folder (text_encoder/ + tokenizer/), or
    a single file in HF key layout such as ComfyUI's ``clip_l.safetensors`` (config inferred from the
    shapes, see ``infer_clip_config``; tokenizer via ``tokenizer_path``).

    Without a ``text_projection.weight`` (e.g. a CLIPTextModel) the projection is the identity and a
    warning says so: the pooled vector then differs from the original model's ``text_embeds``.
    """
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection, CLIPTokenizerFast  # noqa: PLC0415

    dtype = check_dtype(dtype)  # before any file is read

    files, config, tokenizer_dir, source = locate_text_model(path, tokenizer_path, variant)
    tokenizer = load_tokenizer(tokenizer_dir, CLIPTokenizerFast)
    state_dict = _text_tower_only(read_text_weights(files))
    if config is None:
        config = infer_clip_config({k: v.shape for k, v in state_dict.items()}, tokenizer, source)
    else:
        config = _text_config(config, source)
    config = CLIPTextConfig.from_dict(config)
    if "text_projection.weight" not in state_dict:
        logger.warning("%s: no text_projection.weight; using the identity (pooled = unprojected EOS state).", source)
        state_dict["text_projection.weight"] = torch.eye(config.hidden_size)
        config.projection_dim = config.hidden_size
    check_vocab(tokenizer, config.vocab_size, tokenizer_dir, source)
    with torch.device("meta"):
        model = CLIPTextModelWithProjection(config)
    # position_ids is a non-persistent buffer (in no file): create it for real, fill_model refuses meta leftovers.
    model.text_model.embeddings.position_ids = torch.arange(config.max_position_embeddings, device=device)[None]
    fill_text_model(model, state_dict, source, dtype, device)
    return CLIPTextEncoder(model, tokenizer)


IGNORED_PREFIXES = ("vision_model.", "visual_projection.", "logit_scale", "text_model.embeddings.position_ids")


def _text_tower_only(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Drop the vision tower, CLIP's logit scale and stored position_ids (a constant arange)."""
    return {k: v for k, v in state_dict.items() if not k.startswith(IGNORED_PREFIXES)}


def _text_config(config: dict, source: str) -> dict:
    if config.get("model_type") == "clip":  # full CLIP model folder: the text tower's part of the config
        # the projection's width is the top-level one (CLIPModel's text_projection); a text_config may carry
        # CLIPTextConfig's own default (512) beside it, which must not win
        return {**config.get("text_config", {}), "projection_dim": config.get("projection_dim", 512)}
    if config.get("model_type") != "clip_text_model":
        raise CheckpointError(
            f"{source}: config.json describes a {config.get('model_type')!r} model, not a CLIP text "
            "encoder; load it with the matching loader."
        )
    return dict(config)


def infer_clip_config(shapes, tokenizer, source: str) -> dict:
    """A CLIPTextConfig dict from tensor shapes. Not visible in the weights, so assumed: 64-d heads
    (heads = hidden/64, true of OpenAI and OpenCLIP text towers), activation quick_gelu up to width 768
    (OpenAI CLIP-B/L) and gelu above (OpenCLIP H/bigG), layer-norm eps 1e-5, special-token ids from
    the tokenizer (pooling reads the first EOS token)."""
    prefix = "text_model.embeddings."
    try:
        vocab_size, hidden_size = shapes[prefix + "token_embedding.weight"]
        max_positions = shapes[prefix + "position_embedding.weight"][0]
        intermediate_size = shapes["text_model.encoder.layers.0.mlp.fc1.weight"][0]
    except KeyError as exc:
        raise CheckpointError(
            f"{source}: not a CLIP text encoder in Hugging Face key layout (no tensor {exc}). Expected keys "
            "like text_model.embeddings.token_embedding.weight and text_model.encoder.layers.0.mlp.fc1.weight."
        ) from None
    num_layers = 1 + max(int(k.split(".")[3]) for k in shapes if k.startswith("text_model.encoder.layers."))
    logger.info("%s: inferred CLIP text config hidden=%d layers=%d", source, hidden_size, num_layers)
    return {
        "model_type": "clip_text_model",
        "vocab_size": vocab_size,
        "hidden_size": hidden_size,
        "intermediate_size": intermediate_size,
        "num_hidden_layers": num_layers,
        "num_attention_heads": max(1, hidden_size // HEAD_DIM),
        "max_position_embeddings": max_positions,
        "projection_dim": shapes.get("text_projection.weight", (hidden_size,))[0],
        "hidden_act": "quick_gelu" if hidden_size <= 768 else "gelu",
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
    }
