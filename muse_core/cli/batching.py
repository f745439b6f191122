"""Sampling ``-n`` images in chunks of ``--chunk-size`` with one progress bar, image k always seeded seed + k."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
from tqdm import tqdm

from .files import save_images

# sample(first, size, callback) -> [size, ...]: the chunk's results; item ``first + j`` is seeded seed + first + j
ChunkSampler = Callable[[int, int, Callable], torch.Tensor]


def sample_in_chunks(count: int, args, label: str, steps_per_chunk: int, sample: ChunkSampler) -> torch.Tensor:
    """Concatenate ``sample(first, size, callback)`` over chunks of at most ``--chunk-size`` items.

    ``first`` is the index of the chunk's first item: its seed is ``--seed + first``, which keeps image k's
    seed at ``seed + k`` whatever the chunk size.
    """
    chunks = [(first, min(args.chunk_size, count - first)) for first in range(0, count, args.chunk_size)]
    results = []
    with tqdm(total=steps_per_chunk * len(chunks), desc=label, unit="step", disable=args.quiet) as bar:
        for first, size in chunks:
            results.append(sample(first, size, lambda step, total, ids: bar.update()).cpu())
    return torch.cat(results)


def decode_in_chunks(vq, ids: torch.Tensor, chunk_size: int) -> torch.Tensor:
    return torch.cat([vq.decode(chunk.to(vq.device)).cpu() for chunk in ids.split(chunk_size)])


def repeat(tensor: torch.Tensor, size: int) -> torch.Tensor:
    return tensor.expand(size, *tensor.shape[1:])


def seeds_note(args, count: int) -> list[str]:
    return [f"seed {args.seed + k}" for k in range(count)]


def sample_and_save(args, paths: list[Path], label: str, steps_per_chunk: int, sample: ChunkSampler) -> None:
    images = sample_in_chunks(args.num_images, args, label, steps_per_chunk, sample)
    save_images(images, paths, seeds_note(args, args.num_images), args.overwrite)
