"""A fresh T5 text encoder to train with the base transformer, and its export in diffusers' layout.

Muse conditions on a frozen pretrained T5-XXL; a model trained offline has none, so the shipped
cascade trains a small T5 encoder (transformers ``T5EncoderModel``) jointly with its base transformer,
on a word-level tokenizer built from the captions (``training.tokenizer``).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import save_file

from ..output import atomic_output
from ..text.t5 import T5TextEncoder
from .tokenizer import save_tokenizer


def new_t5_encoder(tokenizer, d_model: int = 256, num_layers: int = 3, num_heads: int = 4, d_ff: int = 512,
                   max_length: int = 64, position_bias_std: float | None = None) -> T5TextEncoder:
    """A randomly initialised T5 encoder for ``tokenizer``'s vocabulary.

    ``position_bias_std``: initialise the relative position bias (T5's only source of word order) with
    this standard deviation instead of transformers' ~d_model^-0.5. At that small init the encoder
    starts order-blind and, trained jointly with a transformer from scratch, stayed so: "a red square
    on a blue background" encoded like "a blue square on a red background", and the base transformer
    could not tell the object's colour from the background's (half the roles right, chance).
    """
    from transformers import T5Config, T5EncoderModel  # noqa: PLC0415

    config = T5Config(
        vocab_size=len(tokenizer), d_model=d_model, d_kv=d_model // num_heads, d_ff=d_ff, num_layers=num_layers,
        num_heads=num_heads, feed_forward_proj="gated-gelu", relative_attention_num_buckets=32,
        dropout_rate=0.0, pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
        decoder_start_token_id=tokenizer.pad_token_id, tie_word_embeddings=False, use_cache=False,
    )
    model = T5EncoderModel(config)
    if position_bias_std is not None:
        with torch.no_grad():  # only the first layer has the bias; the others reuse it
            model.encoder.block[0].layer[0].SelfAttention.relative_attention_bias.weight.normal_(0.0, position_bias_std)
    return T5TextEncoder(model, tokenizer, max_length)


def save_t5_encoder(text_encoder, folder: Path, dtype: torch.dtype = torch.float16) -> None:
    """``folder/text_encoder/`` (config.json + model.safetensors) and ``folder/tokenizer/``, as diffusers lays them out."""
    model_dir, tokenizer_dir = Path(folder) / "text_encoder", Path(folder) / "tokenizer"
    model_dir.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().to("cpu", dtype).contiguous() for k, v in text_encoder.model.state_dict().items()
             if k != "encoder.embed_tokens.weight"}  # tied to shared.weight: stored once
    with atomic_output(model_dir / "model.safetensors", overwrite=True) as temporary:
        save_file(state, str(temporary), metadata={"format": "pt"})
    config = text_encoder.model.config.to_dict()
    config["torch_dtype" if "torch_dtype" in config else "dtype"] = str(dtype).removeprefix("torch.")
    (model_dir / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True))
    save_tokenizer(text_encoder.tokenizer, tokenizer_dir)
