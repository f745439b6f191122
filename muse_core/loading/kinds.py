"""Telling model kinds apart by tensor names, so that a file given to the wrong loader is named for what
it is ("this file looks like a VQ tokenizer") instead of failing on the first tensor the loader misses."""

from __future__ import annotations

from .errors import CheckpointError

# (kind, what it is, name prefixes that only this kind has), checked in order: a super-res model holds
# a whole U-ViT under ``transformer.``, so its own lowres_* tensors are looked for first, and a Meissonic
# transformer shares aMUSEd's embedding and head names, so its own blocks are looked for before the U-ViT's.
KINDS = (
    ("super_res", "a super-res transformer", ("lowres_embed.", "lowres_layers.")),
    ("meissonic", "a Meissonic transformer", ("single_transformer_blocks.", "context_embedder.")),
    ("uvit", "a U-ViT transformer", ("encoder_proj.", "mlm_layer.")),
    ("vq", "a VQ tokenizer", ("quantize.", "quant_conv.", "post_quant_conv.")),
    ("t5", "a T5 text encoder", ("encoder.block.", "shared.")),
    ("clip", "a CLIP model", ("text_model.", "vision_model.")),
)
DESCRIPTIONS = {kind: what for kind, what, _ in KINDS}


def guess_kind(names) -> tuple[str, str] | None:
    """(kind, an example tensor name) judged from tensor names; None when no kind's names are there."""
    names = sorted(names)
    for kind, _, prefixes in KINDS:
        example = next((name for prefix in prefixes for name in names if name.startswith(prefix)), None)
        if example is not None:
            return kind, example
    return None


def check_kind(names, accepted: tuple[str, ...], expected: str, source: str) -> None:
    """Refuse tensors that look like a kind not in ``accepted``; ``expected`` says what the loader wants.
    Unrecognised names pass: the loader itself then says what it misses."""
    guess = guess_kind(names)
    if guess is None or guess[0] in accepted:
        return
    kind, example = guess
    raise CheckpointError(
        f"{source}: this file looks like {DESCRIPTIONS[kind]} (it has tensors such as {example}), not {expected}. "
        "Pick the right file for this loader, or load this one with the loader of its kind."
    )
