"""``muse generate``: text to image, optionally best-of-K by CLIP and super-resolved."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch
from tqdm import tqdm

from ..limits import MAX_PIXELS_PER_SIDE, MAX_STEPS
from ..loading.dtypes import DTYPE_NAMES
from ..pipeline import RERANKER_FOLDER, MusePipeline
from ..rerank import load_clip_scorer
from ..sampling import SUPER_RES_STEPS, generate, super_resolve
from .arguments import (
    UsageError,
    add_model_options,
    add_output_options,
    add_prompt_options,
    add_sampling_options,
    bounded_int,
    load_model_folder,
    model_folder,
    pick_device,
    require_prompt,
    sampling_options,
)
from .batching import decode_in_chunks, sample_in_chunks, seeds_note
from .files import check_size, plan_outputs, save_images


def add_generate(subparsers) -> None:
    parser = subparsers.add_parser("generate", help="text to image", description="Generate images from a prompt.")
    parser.add_argument("prompt", metavar="PROMPT")
    add_prompt_options(parser)
    add_sampling_options(parser)
    parser.add_argument("--width", type=bounded_int(1, MAX_PIXELS_PER_SIDE), help="pixels (default: the model's native size)")
    parser.add_argument("--height", type=bounded_int(1, MAX_PIXELS_PER_SIDE), help="pixels (default: the model's native size)")
    parser.add_argument("--sr", action="store_true", help="run the super-resolution stage (models with super_res/)")
    parser.add_argument("--sr-steps", type=bounded_int(1, MAX_STEPS), default=SUPER_RES_STEPS,
                        help=f"super-resolution steps (default: {SUPER_RES_STEPS})")
    parser.add_argument("--rerank", type=bounded_int(2, 64), metavar="K",
                        help="draw K candidates per image and keep the best by CLIP score (models with reranker/)")
    add_output_options(parser, "muse.png")
    add_model_options(parser)
    parser.set_defaults(run=run_generate)


def run_generate(args) -> None:
    prompt = require_prompt(args)
    candidates = args.rerank or 1
    paths = plan_outputs(args.output or Path("muse.png"), args.num_images, args.overwrite)
    folder = model_folder(args.model)
    if args.rerank and not (folder / RERANKER_FOLDER).is_dir():
        raise UsageError(f"--rerank needs a CLIP model in {folder / RERANKER_FOLDER}/, which is missing: "
                         "drop --rerank, or use a model folder that has one.")
    pipe = load_model_folder(folder, args)
    if args.sr and pipe.super_res is None:
        raise UsageError(f"--sr: {folder} has no super-resolution stage (super_res/): drop --sr, or use a Muse "
                         "cascade folder.")
    factor = pipe.vq.downsample_factor
    width, height = args.width or pipe.native_size, args.height or pipe.native_size
    check_size(width, height, factor, "the requested size")
    if args.sr:  # checked now, not after the base images are made
        check_size(*pipe.super_resolved_size(width, height), pipe.super_res_vq.downsample_factor,
                   "the super-resolved size")
    options = sampling_options(args, pipe)

    def sample(first, size, callback):
        return generate(pipe.transformer, pipe.text_encoder, prompt, height=height, width=width,
                        downsample_factor=factor, negative_prompt=args.negative, num_images_per_prompt=size,
                        options=dataclasses.replace(options, seed=args.seed + first), callback=callback)

    ids = sample_in_chunks(args.num_images * candidates, args, "generating", options.steps, sample)
    images = decode_in_chunks(pipe.vq, ids, args.chunk_size)
    chosen = list(range(args.num_images))
    notes = seeds_note(args, args.num_images)
    if args.rerank:
        chosen, notes = rerank(folder, args, images, prompt, candidates)
    ids, images = ids[chosen], images[chosen]
    if args.sr:
        images = super_resolve_each(pipe, ids, [args.seed + k for k in chosen], prompt, args)
    save_images(images, paths, notes, args.overwrite)


def rerank(folder: Path, args, images: torch.Tensor, prompt: str, candidates: int) -> tuple[list[int], list[str]]:
    """Index of the best of each group of ``candidates`` consecutive images, and a note on each choice."""
    scorer = load_clip_scorer(folder / RERANKER_FOLDER, dtype=DTYPE_NAMES[args.dtype], device=pick_device(args.device))
    chosen, notes = [], []
    for first in range(0, len(images), candidates):
        result = scorer.rerank(images[first:first + candidates], prompt)
        best = first + result.best_index
        chosen.append(best)
        notes.append(f"seed {args.seed + best}, CLIP score {result.scores[result.best_index]:.3f}, "
                     f"best of {candidates}")
    return chosen, notes


def super_resolve_each(pipe: MusePipeline, ids: torch.Tensor, seeds: list[int], prompt: str, args) -> torch.Tensor:
    """Super-resolve one image at a time, each with its own seed (after reranking the seeds are not consecutive)."""
    vq = pipe.super_res_vq
    images = []
    with tqdm(total=args.sr_steps * len(ids), desc="super-resolving", unit="step", disable=args.quiet) as bar:
        for lowres, seed in zip(ids, seeds):
            options = dataclasses.replace(sampling_options(args, pipe, super_res=True, steps=args.sr_steps), seed=seed)
            high = super_resolve(pipe.super_res, pipe.text_encoder, lowres[None], prompt,
                                 grid_scale=pipe.super_res_grid_scale, downsample_factor=vq.downsample_factor,
                                 negative_prompt=args.negative, options=options,
                                 callback=lambda step, total, ids: bar.update())
            images.append(vq.decode(high.to(vq.device)).cpu())
    return torch.cat(images)
