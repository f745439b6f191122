"""Image-caption folders for training, and token caches.

A dataset folder holds images and one caption file:

* ``captions.jsonl``: one JSON object per line, ``{"image": "relative/path.png", "caption": "..."}``,
  optionally ``"negatives": ["caption that does not match", ...]`` (hard negatives for the reranker) and
  ``"scene"`` (a shapes dataset's scene, for ``object_token_masks`` and ``reordered_captions``); other keys
  are ignored;
* or ``captions.txt``: one ``relative/path.png<TAB>caption`` per line.

Images are resized (short side, area filter when shrinking) and center-cropped to a square resolution.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from .vq import boundary_patches

CAPTION_FILES = ("captions.jsonl", "captions.txt")


def read_captions(folder: Path) -> list[dict]:
    folder = Path(folder)
    path = next((folder / name for name in CAPTION_FILES if (folder / name).is_file()), None)
    if path is None:
        raise FileNotFoundError(
            f"{folder}: no captions.jsonl or captions.txt. A training folder needs one of them "
            "(see muse_core.training.data for the format)."
        )
    records = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            if path.suffix == ".jsonl":
                record = json.loads(line)
                record = {"image": record["image"], "caption": record["caption"], "negatives": record.get("negatives", []),
                          **({"scene": record["scene"]} if "scene" in record else {})}
            else:
                image, caption = line.split("\t", 1)
                record = {"image": image, "caption": caption, "negatives": []}
        except (json.JSONDecodeError, KeyError, ValueError, TypeError) as exc:
            raise ValueError(
                f"{path}:{number}: cannot read this line ({exc!r}); expected "
                + ('{"image": ..., "caption": ...}' if path.suffix == ".jsonl" else "path<TAB>caption")
            ) from None
        records.append(record)
    if not records:
        raise ValueError(f"{path} lists no images.")
    return records


def load_image(path: Path, resolution: int) -> torch.Tensor:
    """RGB image -> float [3, R, R] in [0, 1]: short side resized to R, then center-cropped."""
    with Image.open(path) as image:
        image = image.convert("RGB")
        width, height = image.size
        scale = resolution / min(width, height)
        if (width, height) != (resolution, resolution):
            size = (max(resolution, round(width * scale)), max(resolution, round(height * scale)))
            image = image.resize(size, Image.Resampling.BOX if scale < 1 else Image.Resampling.BICUBIC)
            left, top = (size[0] - resolution) // 2, (size[1] - resolution) // 2
            image = image.crop((left, top, left + resolution, top + resolution))
        pixels = np.asarray(image, dtype=np.float32) / 255.0
    return torch.from_numpy(pixels).permute(2, 0, 1).contiguous()


class CaptionFolder(torch.utils.data.Dataset):
    """Items ``{"images": [3,R,R], "caption": str, "negatives": list[str]}`` from a dataset folder."""

    def __init__(self, folder: str | Path, resolution: int):
        self.folder = Path(folder)
        self.records = read_captions(self.folder)
        self.resolution = resolution
        missing = [r["image"] for r in self.records if not (self.folder / r["image"]).is_file()]
        if missing:
            raise FileNotFoundError(
                f"{self.folder}: {len(missing)} listed images do not exist (first: {missing[0]}); "
                "paths in the caption file are relative to the dataset folder."
            )

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> dict:
        record = self.records[index]
        return {
            "images": load_image(self.folder / record["image"], self.resolution),
            "caption": record["caption"],
            "negatives": record["negatives"],
        }

    def captions(self) -> list[str]:
        return [r["caption"] for r in self.records]


class RandomCrops(torch.utils.data.Dataset):
    """Random ``size``-pixel square crops of a CaptionFolder's images (captions dropped).

    Convolutional VQ tokenizers are translation-equivariant, so they learn from crops as from whole
    images, at a fraction of the cost. Positions come from the global RNG (seeded per process by the
    loop), so each visit sees another crop; offsets are multiples of ``align`` (the VQ factor), so
    crop edges fall on token boundaries as image edges do.
    """

    def __init__(self, images: CaptionFolder, size: int, align: int):
        if size > images.resolution or size % align:
            raise ValueError(f"crop size {size} must be a multiple of {align} and at most {images.resolution}.")
        self.images, self.size, self.align = images, size, align

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> dict:
        image = self.images[index]["images"]
        steps = (self.images.resolution - self.size) // self.align + 1
        top, left = (self.align * int(i) for i in torch.randint(steps, (2,)))
        return {"images": image[:, top : top + self.size, left : left + self.size]}


class TokenDataset(torch.utils.data.Dataset):
    """Pre-tokenised items ``{"ids": [h,w], "lowres_ids"?: [h',w'], "boundaries"?: bool [h,w],
    "objects"?: bool [n,h,w], "caption": str, "reordered_caption"?: str | None}`` for transformer training
    (``boundaries``: see ``boundary_tokens``; ``objects``: ``object_token_masks``; ``reordered_caption``:
    ``reordered_captions``).

    The VQ tokenizers are frozen while the transformers train, so each image is encoded once, not
    once per epoch.
    """

    def __init__(self, captions: list[str], ids: torch.Tensor, lowres_ids: torch.Tensor | None = None,
                 boundaries: torch.Tensor | None = None, objects: torch.Tensor | None = None,
                 reordered_captions: list[str | None] | None = None):
        extras = (lowres_ids, boundaries, objects, reordered_captions)
        if any(extra is not None and len(extra) != len(ids) for extra in extras) or len(captions) != len(ids):
            raise ValueError("TokenDataset: captions, ids, lowres_ids, boundaries, objects and reordered_captions "
                             "must have one entry per image.")
        self.captions, self.ids, self.lowres_ids = captions, ids, lowres_ids
        self.boundaries, self.objects, self.reordered_captions = boundaries, objects, reordered_captions

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, index: int) -> dict:
        item = {"ids": self.ids[index], "caption": self.captions[index]}
        if self.lowres_ids is not None:
            item["lowres_ids"] = self.lowres_ids[index]
        if self.boundaries is not None:
            item["boundaries"] = self.boundaries[index]
        if self.objects is not None:
            item["objects"] = self.objects[index]
        if self.reordered_captions is not None:
            item["reordered_caption"] = self.reordered_captions[index]
        return item


def collate(items: list[dict]) -> dict:
    """Stack tensors; gather strings into ``captions`` and negatives into ``negatives`` lists."""
    batch = {}
    for key in items[0]:
        values = [item[key] for item in items]
        if key in ("caption", "reordered_caption"):
            batch[key + "s"] = values
        elif isinstance(values[0], torch.Tensor):
            batch[key] = torch.stack(values)
        else:
            batch[key] = values
    return batch


@torch.no_grad()
def encode_images(vq, dataset: CaptionFolder, batch_size: int = 64, progress: bool = True) -> torch.Tensor:
    """All images of ``dataset`` -> VQ ids ``[N, h, w]`` (int16 when the codebook fits, to save memory)."""
    from tqdm.auto import tqdm  # noqa: PLC0415

    batches = tqdm(image_batches(dataset, batch_size), desc=f"encode {dataset.resolution}px", disable=not progress,
                   unit="batch", total=-(-len(dataset) // batch_size))
    ids = torch.cat([vq.encode(images).cpu() for images in batches])
    return ids.to(torch.int16) if vq.codebook_size <= torch.iinfo(torch.int16).max else ids


def boundary_tokens(dataset: CaptionFolder, factor: int, batch_size: int = 256) -> torch.Tensor:
    """bool ``[N, H/factor, W/factor]``: the tokens of each image whose pixel patch holds more than one colour
    (an edge crosses it; ``training.vq.boundary_patches`` on the uint8 pixels)."""
    return torch.cat([boundary_patches(images, factor, levels=256) for images in image_batches(dataset, batch_size)])


def object_token_masks(dataset: CaptionFolder, factor: int, max_objects: int = 4) -> torch.Tensor:
    """bool ``[N, max_objects, H/factor, W/factor]``: for each image of a shapes dataset (its records'
    ``scene``), the tokens touching each object's inpainting box (``shapes.object_mask``, the evaluation's,
    with inpainting's token rule); all False for the missing objects."""
    from ..data.shapes import object_mask  # noqa: PLC0415  (the shapes domain, not every dataset's)
    from ..editing.inpaint import mask_to_token_grid  # noqa: PLC0415  (editing imports the samplers)

    size, grid = dataset.resolution, dataset.resolution // factor
    masks = torch.zeros(len(dataset), max_objects, grid, grid, dtype=torch.bool)
    for index, scene in enumerate(_scenes(dataset, "object masks")):
        pixels = torch.stack([torch.from_numpy(object_mask(scene, k, size)) for k in range(len(scene.shapes))])
        masks[index, :len(scene.shapes)] = mask_to_token_grid(pixels, factor)
    return masks


def reordered_captions(dataset: CaptionFolder) -> list[str | None]:
    """For each image of a shapes dataset, its caption naming the objects the other way round where that
    says the same (``shapes.reordered_caption``: pairs), else None."""
    from ..data.shapes import reordered_caption  # noqa: PLC0415  (the shapes domain, not every dataset's)

    return [reordered_caption(scene) for scene in _scenes(dataset, "reordered captions")]


def _scenes(dataset: CaptionFolder, what: str) -> list:
    """The shapes scenes of the dataset's records, in order; ``what`` needs them, and is named if one is missing."""
    from ..data.shapes import Scene  # noqa: PLC0415  (the shapes domain, not every dataset's)

    missing = next((index for index, record in enumerate(dataset.records) if "scene" not in record), None)
    if missing is not None:
        raise ValueError(f"{dataset.folder}: record {missing} ({dataset.records[missing]['image']}) has no \"scene\": "
                         f"{what} need a shapes dataset (muse_core.data.shapes.write_dataset).")
    return [Scene.from_dict(record["scene"]) for record in dataset.records]


def image_batches(dataset: CaptionFolder, batch_size: int):
    """The dataset's images in order, ``batch_size`` at a time: float ``[b, 3, R, R]``."""
    for start in range(0, len(dataset), batch_size):
        yield torch.stack([dataset[i]["images"] for i in range(start, min(start + batch_size, len(dataset)))])
