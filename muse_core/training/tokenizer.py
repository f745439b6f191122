"""Word-level caption tokenizers for small text encoders trained from scratch.

A caption vocabulary (colours, shapes, positions...) is a few hundred words, so a word-level model is
enough and keeps the text encoders tiny. Both styles are ``tokenizers`` WordLevel models wrapped in a
transformers ``PreTrainedTokenizerFast``; ``save_pretrained(folder)`` writes a ``tokenizer.json`` that
``muse_core.text.loading.load_tokenizer`` (AutoTokenizer) reads back to the same ids; prefer
:func:`save_tokenizer`, whose files also load in transformers 4.

- "t5": ``<pad>``=0, ``</s>``=1, ``<unk>``=2, ``</s>`` appended (``T5TextEncoder`` relies on it).
- "clip": ``<|startoftext|>``=0, ``<|endoftext|>``=1, ``<unk>``=2, text wrapped in start/end, padded with
  ``<|endoftext|>``. transformers' CLIP text tower pools at the FIRST ``eos_token_id`` (its config must
  not say 2, which selects the legacy argmax pooling), so padding with the end token pools at the real
  end. Build the CLIP config from ``tokenizer.bos_token_id`` / ``eos_token_id`` / ``pad_token_id``.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Literal

from tokenizers import Tokenizer, normalizers, pre_tokenizers, processors
from tokenizers.models import WordLevel

UNK = "<unk>"
# Listed in id order (0, 1, 2); CLIP pads with its end token, which therefore takes no id of its own.
SPECIAL_TOKENS = {
    "t5": {"pad_token": "<pad>", "eos_token": "</s>", "unk_token": UNK},
    "clip": {"bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>", "unk_token": UNK, "pad_token": "<|endoftext|>"},
}


def build_word_tokenizer(captions: Iterable[str], style: Literal["t5", "clip"], max_length: int):
    """A lowercased word/punctuation-level tokenizer whose vocabulary is every word of ``captions``.

    Unknown words at use time map to ``<unk>``. ``max_length`` becomes ``model_max_length`` (the text
    encoders truncate to it, special tokens included).
    """
    from transformers import PreTrainedTokenizerFast  # noqa: PLC0415  (keeps `import muse_core` fast)

    if style not in SPECIAL_TOKENS:
        raise ValueError(f"style={style!r}: choose 't5' or 'clip'.")
    if max_length < 3:
        raise ValueError(f"max_length={max_length} leaves no room for words next to the special tokens.")
    specials = SPECIAL_TOKENS[style]
    special_list = list(dict.fromkeys(specials.values()))  # unique, in id order

    normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Lowercase()])
    # Whitespace splits \w+ from runs of other characters; Punctuation then isolates each mark, so
    # "big," and "big" share a word and "!!" is two known "!" rather than one unknown token.
    pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Whitespace(), pre_tokenizers.Punctuation()])
    words = set()
    for caption in captions:
        pieces = pre_tokenizer.pre_tokenize_str(normalizer.normalize_str(caption))
        words.update(word for word, _ in pieces)
    words -= set(special_list)
    vocab = {token: i for i, token in enumerate([*special_list, *sorted(words)])}  # sorted: deterministic ids

    backend = Tokenizer(WordLevel(vocab, unk_token=UNK))
    backend.normalizer = normalizer
    backend.pre_tokenizer = pre_tokenizer
    eos = specials["eos_token"]
    if style == "t5":
        backend.post_processor = processors.TemplateProcessing(
            single=f"$A {eos}", pair=f"$A {eos} $B {eos}", special_tokens=[(eos, vocab[eos])]
        )
    else:
        bos = specials["bos_token"]
        backend.post_processor = processors.TemplateProcessing(
            single=f"{bos} $A {eos}", pair=f"{bos} $A {eos} $B {eos}", special_tokens=[(bos, vocab[bos]), (eos, vocab[eos])]
        )
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, model_max_length=max_length, padding_side="right", **specials
    )


def save_tokenizer(tokenizer, folder: str | Path) -> Path:
    """``tokenizer.save_pretrained(folder)``, naming a tokenizer class that every transformers version knows.

    transformers 5 records a tokenizer.json-only tokenizer as ``TokenizersBackend``, a class transformers 4
    lacks; ``PreTrainedTokenizerFast`` is the same tokenizer under the name both versions load.
    """
    folder = Path(folder)
    tokenizer.save_pretrained(str(folder))
    config_path = folder / "tokenizer_config.json"
    config = json.loads(config_path.read_text())
    if config.get("tokenizer_class") == "TokenizersBackend":
        config["tokenizer_class"] = "PreTrainedTokenizerFast"
        config_path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    return folder
