"""Training a small CLIP (transformers ``CLIPModel``) as the best-of-N reranker of ``muse_core.rerank``.

The objective sees images and captions exactly as ``ClipScorer`` will: it preprocesses with the
scorer's own ``preprocess`` and tokenizes with the scorer's length and truncation, so the exported
model scores what it was trained on. It pads only to the batch's longest text, not to the scorer's
fixed length: the text tower is causal and pools at the end token, so trailing padding cannot change
a text's embedding, and short captions cost about a third of the text-tower time.

Loss: CLIP's symmetric InfoNCE over the batch, where each image's candidates are all batch captions
plus its own hard negatives (captions of the same scene with one attribute changed: colour, count,
relation...). Without negatives this is plain CLIP. Captions identical to an image's own caption
(frequent with a small caption space) are not counted as wrong answers for it, in either direction.

Optional image negatives (``speck_negatives``): each image also gets a copy with a small square block
pasted from another batch image, a speck its caption does not mention, and a pairwise loss asks the
caption to match the clean image better than the specked copy. Contrastive batches rarely contrast
images that differ in one small spot, yet that is what separates a generated picture with a stray blob
from a clean one; no labels are needed, so it works for any image-caption data.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..output import atomic_output
from ..rerank import ClipScorer
from .tokenizer import save_tokenizer

MAX_LOGIT_SCALE = math.log(100)  # CLIP clamps its learned temperature at 100
SPECK_SIDES = (0.05, 0.125)  # pasted block side, as a share of the image side (3-8 px at 64 px)
SPECK_MIN_CHANGE = 0.15  # mean absolute change in [0,1] below which a pasted block is invisible: skipped
LEGACY_EOS_ID = 2  # transformers' CLIP text tower pools at argmax(input_ids) when eos_token_id == 2


def small_clip_config(
    vocab_size: int,
    image_size: int,
    bos_token_id: int,
    eos_token_id: int,
    pad_token_id: int,
    max_length: int = 32,
    patch_size: int = 8,
    width: int = 128,
    layers: int = 4,
    heads: int = 4,
    projection_dim: int = 128,
):
    """A tiny ViT/text-transformer CLIP; token ids from the tokenizer (``build_word_tokenizer(..., "clip")``)."""
    from transformers import CLIPConfig  # noqa: PLC0415  (keeps `import muse_core` fast)

    if eos_token_id == LEGACY_EOS_ID:
        raise ValueError(
            "eos_token_id=2 makes transformers' CLIP pool at the highest token id instead of the end token; "
            "use a tokenizer whose end token has another id (build_word_tokenizer gives 1)."
        )
    if image_size % patch_size:
        raise ValueError(f"image_size={image_size} must be a multiple of patch_size={patch_size}.")
    tower = dict(hidden_size=width, intermediate_size=4 * width, num_hidden_layers=layers, num_attention_heads=heads)
    special_ids = dict(bos_token_id=bos_token_id, eos_token_id=eos_token_id, pad_token_id=pad_token_id)
    text = dict(tower, vocab_size=vocab_size, max_position_embeddings=max_length, **special_ids)
    vision = dict(tower, image_size=image_size, patch_size=patch_size)
    return CLIPConfig(text_config=text, vision_config=vision, projection_dim=projection_dim)


def new_clip_model(tokenizer, image_size: int, width: int = 128, layers: int = 4, **config_options):
    """A freshly initialised ``CLIPModel`` whose vocabulary, special ids and text length are the tokenizer's."""
    from transformers import CLIPModel  # noqa: PLC0415

    ids = tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id
    config = small_clip_config(
        len(tokenizer), image_size, *ids, max_length=tokenizer.model_max_length, width=width, layers=layers,
        **config_options,
    )
    return CLIPModel(config)


class ClipObjective(nn.Module):
    """Contrastive loss with hard negatives for a ``CLIPModel``; see the module docstring."""

    def __init__(self, model, tokenizer, speck_negatives: bool = False):
        super().__init__()
        _check_tokenizer(model.config.text_config, tokenizer)
        self.model = model
        self.tokenizer = tokenizer
        self.speck_negatives = speck_negatives
        self.scorer = ClipScorer(model, tokenizer)  # the reranker's preprocessing and tokenization

    def forward(self, batch: dict) -> tuple[torch.Tensor, dict[str, float]]:
        captions = list(batch["captions"])
        negatives = batch.get("negatives") or [[] for _ in captions]
        if len(negatives) != len(captions) or len(batch["images"]) != len(captions):
            raise ValueError(
                f"batch has {len(batch['images'])} images, {len(captions)} captions and {len(negatives)} "
                "negative lists; give one caption and one (possibly empty) negative list per image."
            )
        texts = captions + [text for own in negatives for text in own]
        # owner[t]: the image whose candidate list text t belongs to (-1: a batch caption, every image's)
        owner = torch.tensor([-1] * len(captions) + [i for i, own in enumerate(negatives) for _ in own])

        model, device = self.model, self.scorer.device
        images = batch["images"]
        if self.speck_negatives:
            specked, specked_owner = paste_specks(images)
            images = torch.cat([images, specked])  # one vision pass for clean and specked images
        pixel_values = self.scorer.preprocess(images)
        tokens = self.tokenizer(
            texts, padding="longest", max_length=self.scorer.max_length, truncation=True, return_tensors="pt"
        ).to(device)
        image_embeds = model.visual_projection(model.vision_model(pixel_values=pixel_values).pooler_output)
        text_embeds = model.text_projection(model.text_model(**tokens).pooler_output)

        # Similarities and losses in fp32 whatever autocast ran the towers in.
        image_embeds = F.normalize(image_embeds.float(), dim=-1)
        text_embeds = F.normalize(text_embeds.float(), dim=-1)
        scale = model.logit_scale.float().clamp(max=MAX_LOGIT_SCALE).exp()
        batch_size = len(captions)
        image_embeds, specked_embeds = image_embeds[:batch_size], image_embeds[batch_size:]
        logits = scale * image_embeds @ text_embeds.T  # [B, B + negatives]

        targets = torch.arange(batch_size, device=device)
        owner = owner.to(device)
        others_negative = (owner[None, :] >= 0) & (owner[None, :] != targets[:, None])
        same_text = torch.tensor([[text == caption for text in texts] for caption in captions], device=device)
        same_text[targets, targets] = False
        logits = logits.masked_fill(others_negative | same_text, float("-inf"))

        image_to_text = F.cross_entropy(logits, targets)
        text_to_image = F.cross_entropy(logits[:, :batch_size].T, targets)
        loss = (image_to_text + text_to_image) / 2
        accuracy = (logits.argmax(dim=1) == targets).float().mean()
        logs = {"loss": loss.item(), "i2t_acc": accuracy.item(), "logit_scale": scale.item()}
        if self.speck_negatives:
            specked_owner = specked_owner.to(device)
            own_captions = text_embeds[specked_owner]
            clean = scale * (own_captions * image_embeds[specked_owner]).sum(-1)
            spoiled = scale * (own_captions * specked_embeds).sum(-1)
            # softplus(spoiled - clean) = -log P(clean wins) among the two; an empty batch adds 0
            speck_loss = F.softplus(spoiled - clean).sum() / max(len(specked_owner), 1)
            loss = loss + speck_loss
            logs.update(loss=loss.item(), speck=speck_loss.item())
        return loss, logs

    def export(self, folder: Path, dtype: torch.dtype = torch.float16) -> Path:
        """config.json + model.safetensors + tokenizer files, loadable by ``muse_core.rerank.load_clip_scorer``."""
        from safetensors.torch import save_file  # noqa: PLC0415

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        self.model.config.to_json_file(folder / "config.json")
        tensors = {
            name: (tensor.to(dtype) if tensor.is_floating_point() else tensor).detach().cpu().contiguous()
            for name, tensor in self.model.state_dict().items()
        }
        with atomic_output(folder / "model.safetensors", overwrite=True) as temporary:
            save_file(tensors, str(temporary), metadata={"format": "pt"})
        # tokenizer.json keeps the padding and truncation of the tokenizer's last call (training pads to
        # the batch's longest); save the scorer's fixed length instead, so the file does not depend on it
        backend, length = self.tokenizer.backend_tokenizer, self.scorer.max_length
        backend.enable_padding(length=length, pad_id=self.tokenizer.pad_token_id, pad_token=self.tokenizer.pad_token)
        backend.enable_truncation(length)
        save_tokenizer(self.tokenizer, folder)
        return folder


def paste_specks(images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Copies of ``images`` ([B,3,H,W] in [0,1]) with one square block pasted from the previous image.

    Block sides and positions come from torch's global generator (drawn on the CPU, for the whole batch at
    once, so a CUDA batch costs one transfer and no per-image syncs). Returns the specked copies and the
    index of the image each came from; copies whose block barely changed the image are left out.
    """
    count, _, height, width = images.shape
    smallest, largest = (max(1, round(share * min(height, width))) for share in SPECK_SIDES)
    side = torch.randint(smallest, largest + 1, (count,))
    top, left, donor_top, donor_left = (
        (torch.rand(count) * (limit - side + 1)).long() for limit in (height, width, height, width)
    )
    side, top, left, donor_top, donor_left = (t.to(images.device)[:, None, None]
                                              for t in (side, top, left, donor_top, donor_left))
    rows = torch.arange(height, device=images.device)[None, :, None]
    cols = torch.arange(width, device=images.device)[None, None, :]
    inside = (rows >= top) & (rows < top + side) & (cols >= left) & (cols < left + side)  # [B, H, W]
    source_rows = (rows - top + donor_top).clamp(0, height - 1)
    source_cols = (cols - left + donor_left).clamp(0, width - 1)
    donors = images.roll(1, dims=0)
    batch_index = torch.arange(count, device=images.device)[:, None, None]
    pasted = donors.permute(0, 2, 3, 1)[batch_index, source_rows, source_cols].permute(0, 3, 1, 2)  # [B, 3, H, W]
    specked = torch.where(inside[:, None], pasted, images)
    change = (specked - images).abs().sum(dim=(1, 2, 3)) / (3 * side.flatten() ** 2)
    kept = (change > SPECK_MIN_CHANGE).nonzero()[:, 0]
    return specked[kept], kept


def _check_tokenizer(text_config, tokenizer) -> None:
    """The model's pooling and embedding table must agree with the tokenizer's ids."""
    if text_config.eos_token_id == LEGACY_EOS_ID:
        # Older OpenAI configs: pooling at the highest id is right only where the end token is the last id.
        if tokenizer.eos_token_id != len(tokenizer) - 1:
            raise ValueError(
                "the CLIP text config has eos_token_id=2, which transformers treats as pooling at the highest "
                f"token id, but this tokenizer's end token is id {tokenizer.eos_token_id} of {len(tokenizer)}; "
                "build the config with small_clip_config and the tokenizer's ids."
            )
    elif tokenizer.eos_token_id != text_config.eos_token_id:
        raise ValueError(
            f"the tokenizer's end token has id {tokenizer.eos_token_id} but the CLIP config says "
            f"eos_token_id={text_config.eos_token_id}: the text tower would pool at the wrong position. "
            "Build the config from tokenizer.bos_token_id / eos_token_id / pad_token_id."
        )
    if len(tokenizer) > text_config.vocab_size:
        raise ValueError(
            f"the tokenizer has {len(tokenizer)} tokens but the CLIP text config only vocab_size="
            f"{text_config.vocab_size}; build the config with vocab_size=len(tokenizer)."
        )
