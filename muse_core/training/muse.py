"""Muse masked-token training for the base and the super-resolution transformer.

One step (Muse section 2.2, 2.4): draw a masking rate r per image from the truncated arccos density
p(r) = (2/pi)(1 - r^2)^(-1/2) (sampled as r = cos(pi/2 * u), u ~ U(0,1); mean 0.64), replace
max(1, round(r * L)) random tokens with the mask id, and score cross-entropy with label smoothing
on the masked positions only. 10% of the prompts are replaced by "" so that the model also learns
the unconditional distribution classifier-free guidance needs (the prompt is *dropped* 10% of the
time; the reference training scripts keep it 10% of the time instead).

The base objective can train its T5 text encoder jointly (our shipped cascade has no pretrained T5);
the super-res objective conditions on the low-resolution ids and keeps the text encoder frozen.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..loading import save_model
from ..models.micro_conds import AESTHETIC_SCORE
from .text_encoder import save_t5_encoder


def sample_mask_rates(batch: int, device=None) -> torch.Tensor:
    """Masking rates r in (0, 1] drawn from the truncated arccos density."""
    return torch.cos(0.5 * math.pi * torch.rand(batch, device=device))


def random_token_mask(shape: tuple[int, int], rates: torch.Tensor) -> torch.Tensor:
    """Bool ``[B, L]``: exactly max(1, round(r_b * L)) random positions per row."""
    batch, length = shape
    counts = (rates * length).round().clamp(1, length).long()
    ranks = torch.rand(batch, length, device=rates.device).argsort(dim=1).argsort(dim=1)
    return ranks < counts[:, None]


def balanced_code_weights(ids: torch.Tensor, codebook_size: int, power: float) -> torch.Tensor:
    """Per-code loss weights ``[K]`` proportional to frequency^-power over the dataset's ``ids``, scaled so
    that the dataset's mean token weight is 1 (power 0: all ones).

    On the shapes data 88% of the tokens are flat colour and a shape's outline is the few boundary codes,
    each rare; plain cross-entropy spends nearly all its gradient on the flat ones."""
    counts = torch.bincount(ids.flatten().long(), minlength=codebook_size).double()
    weights = (counts + 1).pow(-power)  # + 1: an unused code gets a finite weight
    return (weights * counts.sum() / (weights * counts).sum()).float()


def drop_prompts(captions: list[str], probability: float) -> list[str]:
    keep = torch.rand(len(captions)) >= probability
    return [c if k else "" for c, k in zip(captions, keep.tolist())]


class MaskedTokenObjective(nn.Module):
    """Masked-token cross-entropy for a ``MaskedTokenUViT`` or, given ``lowres_ids``, a ``SuperResTransformer``.

    Batches hold ``ids [B, h, w]`` (VQ ids of the training images), ``captions`` and, for super-res,
    ``lowres_ids [B, h', w']`` (base-VQ ids of the same images at the base resolution).
    ``image_size`` is the pixel size of the training images (the micro-conditioning the sampler gives).

    ``boundary_mask_share``: that share of the images (those with any boundary) masks exactly their boundary
    tokens (``batch["boundaries"]``, bool ``[B, h, w]``) instead of a random set. Confidence-ordered decoding
    leaves a shape's outline for its last steps, with every flat token around it known: a state that random
    masking at the arccos rates almost never draws.

    ``object_mask_share``: that share of the images masks the tokens of one of its objects' boxes (one of
    ``batch["objects"]``, bool ``[B, n, h, w]``, an all-False box for a missing object), as inpainting
    does: a hole with every token around it known, which the caption's missing object must fill. Drawn after
    the boundary masks, so it takes its share of every image. ``object_caption_reorder``: the chance that such an
    image with a ``batch["reordered_captions"]`` entry (a pair's caption naming the objects the other way
    round) is trained under it: the slots put a pair's first-named object on the left, so without it the base
    learnt to read the side from the caption's order, and repainted a hole on the other side with the visible
    object's twin.

    ``image_mean_loss``: the loss is the mean over images of each image's mean over its masked tokens (Muse: the
    mean over all masked tokens of the batch, so that an image masked at rate 0.9 weighs 9x one at 0.1, and an
    image with its ~10 boundary tokens masked next to nothing).
    """

    def __init__(self, model: nn.Module, text_encoder: nn.Module, image_size: int, train_text_encoder: bool,
                 label_smoothing: float = 0.1, prompt_dropout: float = 0.1, aesthetic_score: float = AESTHETIC_SCORE,
                 text_encoder_lr_scale: float = 1.0, code_weights: torch.Tensor | None = None,
                 boundary_mask_share: float = 0.0, image_mean_loss: bool = False, object_mask_share: float = 0.0,
                 object_caption_reorder: float = 0.0):
        super().__init__()
        for name, share in (("boundary_mask_share", boundary_mask_share), ("object_mask_share", object_mask_share),
                            ("object_caption_reorder", object_caption_reorder)):
            if not 0.0 <= share <= 1.0:
                raise ValueError(f"{name}={share}: a share of the batch, in [0, 1].")
        self.model = model
        self.text_encoder = text_encoder
        self.text_encoder.requires_grad_(train_text_encoder)
        self.train_text_encoder = train_text_encoder
        self.image_size = image_size
        self.label_smoothing = label_smoothing
        self.prompt_dropout = prompt_dropout
        self.aesthetic_score = aesthetic_score
        self.text_encoder_lr_scale = text_encoder_lr_scale
        self.boundary_mask_share = boundary_mask_share
        self.object_mask_share = object_mask_share
        self.object_caption_reorder = object_caption_reorder
        self.image_mean_loss = image_mean_loss
        # [K] cross-entropy weight of each target code (balanced_code_weights); a buffer so it follows .to()
        self.register_buffer("code_weights", code_weights, persistent=False)

    def learning_rate_scale(self, name: str) -> float:
        """The training loop's learning-rate multiplier for parameter ``name``.

        T5 attention has no 1/sqrt(d) on its logits (its init scales the queries instead), and Adam
        steps every weight by about the learning rate whatever its scale: at the transformer's rate the
        shipped T5's attention ended one-hot on word identity (mean top weight 0.97), blind to word
        order. A smaller rate for the text encoder keeps its attention softer (0.55-0.67 at 0.1x).
        """
        return self.text_encoder_lr_scale if name.startswith("text_encoder.") else 1.0

    def forward(self, batch: dict) -> tuple[torch.Tensor, dict[str, float]]:
        ids = batch["ids"].long()
        batch_size, height, width = ids.shape
        masked = random_token_mask((batch_size, height * width), sample_mask_rates(batch_size, ids.device))
        masked = masked.view(batch_size, height, width)
        if self.boundary_mask_share > 0:
            masked = self._mask_boundaries(batch, masked)
        captions = batch["captions"]
        if self.object_mask_share > 0:
            masked, holed = self._mask_objects(batch, masked)
            captions = self._reorder_captions(batch, holed)
        inputs = torch.where(masked, self.model.mask_token_id, ids)

        captions = drop_prompts(captions, self.prompt_dropout if self.training else 0.0)
        with torch.set_grad_enabled(self.train_text_encoder and torch.is_grad_enabled()):
            text = self.text_encoder(captions)
        micro = self.model.default_micro_conds(self.image_size, self.image_size, batch_size, self.aesthetic_score)
        micro = micro.to(ids.device)
        conditioning = (text.hidden_states, text.pooled, micro)
        if "lowres_ids" in batch:
            context = self.model.encode_lowres(batch["lowres_ids"].long())
            logits = self.model(inputs, context, *conditioning, encoder_attention_mask=text.attention_mask)
        else:
            logits = self.model(inputs, *conditioning, encoder_attention_mask=text.attention_mask)

        logits = logits.permute(0, 2, 3, 1)[masked].float()  # [masked tokens, K]
        targets = ids[masked]
        loss = F.cross_entropy(logits, targets, label_smoothing=self.label_smoothing, reduction="none")
        # Weighted by the target's code, smoothing included, over the plain token count: torch's weight= would
        # also weigh the smoothing term by every other code (pushing all tokens towards rare codes) and
        # renormalise per batch.
        if self.code_weights is not None:
            loss = loss * self.code_weights[targets]
        if self.image_mean_loss:  # each image's masked tokens averaged first: few masked tokens weigh as much as many
            image = masked.flatten(1).nonzero()[:, 0]
            counts = masked.flatten(1).sum(dim=1).clamp_min(1)
            loss = (torch.zeros(batch_size, device=loss.device).index_add_(0, image, loss) / counts).mean()
        else:
            loss = loss.mean()
        accuracy = (logits.argmax(-1) == targets).float().mean()
        return loss, {"acc": accuracy.item()}

    def _mask_boundaries(self, batch: dict, masked: torch.Tensor) -> torch.Tensor:
        if "boundaries" not in batch:
            raise ValueError("boundary_mask_share needs each item's boundary tokens: build the TokenDataset with "
                             "boundaries= (training.data.boundary_tokens).")
        boundaries = batch["boundaries"].to(masked.device, torch.bool)
        chosen = torch.rand(len(masked), device=masked.device) < self.boundary_mask_share
        chosen &= boundaries.flatten(1).any(dim=1)  # nothing to mask in an image without edges: keep its random set
        return torch.where(chosen[:, None, None], boundaries, masked)

    def _mask_objects(self, batch: dict, masked: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The masks with one object's box for the chosen images, and which images were chosen (bool [B])."""
        if "objects" not in batch:
            raise ValueError("object_mask_share needs each item's object boxes: build the TokenDataset with "
                             "objects= (training.data.object_token_masks).")
        objects = batch["objects"].to(masked.device, torch.bool)  # [B, n, h, w]
        present = objects.flatten(2).any(dim=2)  # [B, n]
        # one present object per image, uniformly: random keys, absent objects never win
        pick = torch.where(present, torch.rand(present.shape, device=masked.device), -1.0).argmax(dim=1)
        boxes = objects[torch.arange(len(objects), device=masked.device), pick]
        chosen = (torch.rand(len(masked), device=masked.device) < self.object_mask_share) & present.any(dim=1)
        return torch.where(chosen[:, None, None], boxes, masked), chosen

    def _reorder_captions(self, batch: dict, holed: torch.Tensor) -> list[str]:
        captions = batch["captions"]
        if self.object_caption_reorder == 0:
            return captions
        if "reordered_captions" not in batch:
            raise ValueError("object_caption_reorder needs each item's reordered caption: build the TokenDataset "
                             "with reordered_captions= (training.data.reordered_captions).")
        flips = (torch.rand(len(captions)) < self.object_caption_reorder) & holed.cpu()
        return [other if flip and other is not None else caption
                for caption, other, flip in zip(captions, batch["reordered_captions"], flips.tolist())]

    def export(self, folder: Path, name: str, dtype: torch.dtype = torch.float16) -> Path:
        """Write the transformer as ``folder/<name>.safetensors`` (and the text encoder if it was trained)."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        if self.train_text_encoder:
            save_t5_encoder(self.text_encoder, folder, dtype)
        path = folder / f"{name}.safetensors"
        save_model(self.model, path, dtype=dtype)
        return path
