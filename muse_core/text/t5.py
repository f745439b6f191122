"""T5 encoder conditioning (the Muse paper's text encoder is T5-XXL), on transformers' T5EncoderModel."""

from __future__ import annotations

import torch

from ..loading.dtypes import check_dtype
from ..loading.errors import CheckpointError
from .conditioning import TextConditioning, TextEncoder, logger
from .loading import check_vocab, fill_text_model, load_tokenizer, locate_text_model, read_text_weights

DEFAULT_MAX_LENGTH = 128


class T5TextEncoder(TextEncoder):
    """Prompts -> last hidden states of a T5 encoder, padded to the longest prompt of the batch.

    attention_mask is False on padding (the encoder itself is run with that mask).
    pooled: Muse has no pooled text vector. We return the mean of the unmasked last hidden states
    so that T5 fills the same interface as CLIP (a model that wants a pooled input gets a sensible
    summary of the prompt). Prompts longer than ``max_length`` tokens are truncated with a warning.
    Run T5 in bf16 or fp32: fp16 activations overflow in T5 v1.1 models.
    """

    def __init__(self, model, tokenizer, max_length: int = DEFAULT_MAX_LENGTH):
        super().__init__(model, tokenizer, max_length)

    @property
    def hidden_size(self) -> int:
        return self.model.config.d_model

    @property
    def pooled_size(self) -> int:
        return self.model.config.d_model

    def tokenize(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Token ids [B, L] and mask [B, L] (True = real token), right-padded to the longest prompt."""
        self._warn_if_truncated(prompts)
        rows = self.tokenizer(prompts, truncation=True, max_length=self.max_length).input_ids
        if any(len(row) == 0 for row in rows):
            raise ValueError(
                "T5TextEncoder: the tokenizer gave no tokens for an empty prompt; use a tokenizer that "
                "appends the end-of-sequence token </s> (T5 tokenizers do)."
            )
        pad_id = self.tokenizer.pad_token_id or 0  # its value is irrelevant: padding is masked out
        ids = torch.full((len(rows), max(map(len, rows))), pad_id, dtype=torch.long)
        mask = torch.zeros(ids.shape, dtype=torch.bool)
        for i, row in enumerate(rows):
            ids[i, : len(row)] = torch.tensor(row)
            mask[i, : len(row)] = True
        return ids, mask

    def _encode(self, prompts: list[str]) -> TextConditioning:
        ids, mask = (t.to(self.device) for t in self.tokenize(prompts))
        hidden = self.model(input_ids=ids, attention_mask=mask.long()).last_hidden_state
        hidden = torch.where(mask.unsqueeze(-1), hidden, 0.0)  # padding outputs are meaningless: zero them
        pooled = hidden.float().sum(1) / mask.sum(1, keepdim=True).float()
        return TextConditioning(hidden, mask, pooled.to(hidden.dtype))


def load_t5_encoder(
    path,
    tokenizer_path=None,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str = "cpu",
    max_length: int = DEFAULT_MAX_LENGTH,
    variant: str | None = None,
) -> T5TextEncoder:
    """Load a T5 encoder from safetensors: a transformers folder (config.json + weights), a diffusers
    pipeline folder (text_encoder/ + tokenizer/), or a single file in HF key layout such as ComfyUI's
    ``t5xxl_fp16.safetensors`` (config inferred from the shapes; tokenizer via ``tokenizer_path``).
    Full encoder-decoder T5 weights are accepted; the decoder is dropped.
    """
    from transformers import T5Config, T5EncoderModel  # noqa: PLC0415

    dtype = check_dtype(dtype)  # before any file is read

    files, config, tokenizer_dir, source = locate_text_model(path, tokenizer_path, variant)
    tokenizer = load_tokenizer(tokenizer_dir)
    state_dict = _encoder_only(read_text_weights(files))
    if config is None:
        config = infer_t5_config({k: v.shape for k, v in state_dict.items()}, source)
    elif config.get("model_type") not in ("t5", "mt5"):
        raise CheckpointError(
            f"{source}: config.json describes a {config.get('model_type')!r} model, not T5; "
            "load it with the matching loader."
        )
    config = T5Config.from_dict(config)
    check_vocab(tokenizer, config.vocab_size, tokenizer_dir, source)
    with torch.device("meta"):
        model = T5EncoderModel(config)
    model.encoder.embed_tokens = None  # tied to `shared` (one tensor in the files): fill once, re-tie below
    fill_text_model(model, state_dict, source, dtype, device)
    model.encoder.embed_tokens = model.shared
    return T5TextEncoder(model, tokenizer, max_length)


def _encoder_only(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Drop decoder/LM-head tensors; keep the tied embedding once, as ``shared.weight``."""
    state_dict = {k: v for k, v in state_dict.items() if not k.startswith(("decoder.", "lm_head."))}
    embed = state_dict.pop("encoder.embed_tokens.weight", None)
    if "shared.weight" not in state_dict and embed is not None:
        state_dict["shared.weight"] = embed
    return state_dict


def infer_t5_config(shapes, source: str) -> dict:
    """A T5Config dict from tensor shapes. relative_attention_max_distance (128) and
    layer_norm_epsilon (1e-6) cannot be seen in the weights; every released T5 uses these values."""
    attention = "encoder.block.0.layer.0.SelfAttention."
    feed_forward = "encoder.block.0.layer.1.DenseReluDense."
    try:
        vocab_size, d_model = shapes["shared.weight"]
        buckets, num_heads = shapes[attention + "relative_attention_bias.weight"]
        inner_dim = shapes[attention + "q.weight"][0]
        gated = feed_forward + "wi_0.weight" in shapes
        d_ff = shapes[feed_forward + ("wi_0.weight" if gated else "wi.weight")][0]
    except KeyError as exc:
        raise CheckpointError(
            f"{source}: not a T5 encoder in Hugging Face key layout (no tensor {exc}). "
            "Expected keys like shared.weight and encoder.block.0.layer.0.SelfAttention.q.weight."
        ) from None
    num_layers = 1 + max(int(k.split(".")[2]) for k in shapes if k.startswith("encoder.block."))
    logger.info("%s: inferred T5 config d_model=%d layers=%d heads=%d", source, d_model, num_layers, num_heads)
    return {
        "model_type": "t5",
        "vocab_size": vocab_size,
        "d_model": d_model,
        "d_kv": inner_dim // num_heads,
        "d_ff": d_ff,
        "num_layers": num_layers,
        "num_heads": num_heads,
        "relative_attention_num_buckets": buckets,
        "feed_forward_proj": "gated-gelu" if gated else "relu",  # T5 v1.1 / flan: gated; original T5: relu
    }

