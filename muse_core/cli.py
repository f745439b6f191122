"""The ``muse`` command: text-to-image and image editing from a shell.

    muse generate "a red fox in the snow" -n 4 -o foxes/fox.png
    muse inpaint photo.png --mask mask.png "a bowl of fruit on the table"
    muse outpaint photo.png "a wide mountain valley" --left 128 --right 128
    muse edit photo.png "the same street in winter"
    muse img2img photo.png "an oil painting" --strength 0.6

Outputs: ``-o out.png`` names the first image; more images (``-n``) are ``out_1.png``, ``out_2.png``, ...
Missing folders are created; an existing file is never replaced unless ``--overwrite`` is given. Image
``k`` is drawn with seed ``--seed + k`` (with ``--rerank K``, candidate ``k`` of all ``n * K``), so any
one image is reproduced alone with its printed seed and ``-n 1``.

Input images must be multiples of the model's VQ factor (16 for aMUSEd) on each side: other sizes are
refused with the nearest valid size, or resized to it with ``--resize``.

Each subcommand is a pair of functions, ``add_<name>(subparsers)`` (its arguments; sets ``run``) and
``run_<name>(args)`` (the work); ``SUBCOMMANDS`` lists the ``add_`` functions. Bad input raises
:class:`UsageError` or a library ``ValueError`` and becomes a one-line ``muse: error: ...``, exit code 2.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import sys
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from PIL import Image
from tqdm import tqdm

from .attention import BACKENDS, check_backend
from .editing import edit_tokens, inpaint, mask_to_token_grid, outpaint
from .image_files import read_image, read_mask
from .limits import (
    MAX_EDIT_ITERATIONS,
    MAX_IMAGES,
    MAX_PIXELS_PER_SIDE,
    MAX_SEED,
    MAX_STEPS,
    MAX_TOKENS_PER_SIDE,
    check_text,
    nearest_multiple,
)
from .loading.dtypes import DTYPE_NAMES
from .output import OutputError, atomic_output
from .pipeline import DEFAULT_MODEL_DIR, MusePipeline, load_pipeline
from .rerank import load_clip_scorer
from .sampling import SamplingOptions, generate, img2img, super_resolve
from .sampling.schedules import GUIDANCE_SCHEDULES, MASK_SCHEDULES

RERANKER_FOLDER = "reranker"
USAGE_ERROR = 2


class UsageError(Exception):
    """Bad input from the command line; the message names the problem and the fix."""


class ArgumentParser(argparse.ArgumentParser):
    """argparse, but a bad argument gets one line pointing to --help instead of the whole usage text."""

    def error(self, message: str):
        self.exit(USAGE_ERROR, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


# ---- argument types: argparse turns their ArgumentTypeError into "argument --x: message", exit code 2 ----


def bounded_int(low: int, high: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"must be from {low} to {high}, got {value}")
        return value

    return parse


def bounded_float(low: float, high: float = math.inf) -> Callable[[str], float]:
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        if not (math.isfinite(value) and low <= value <= high):
            limits = f"from {low} to {high}" if high < math.inf else f"a number >= {low}"
            raise argparse.ArgumentTypeError(f"must be {limits}, got {text}")
        return value

    return parse


def temperature(text: str) -> float | tuple[float, float]:
    """``T`` (annealed from T to 0.01, as aMUSEd) or ``START,END`` (annealed linearly)."""
    parts = text.split(",")
    if len(parts) > 2:
        raise argparse.ArgumentTypeError(f"give one number or START,END, got {text!r}")
    values = tuple(bounded_float(0.0)(part) for part in parts)
    return values[0] if len(values) == 1 else values


# ---- shared options ----


def add_model_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("model")
    group.add_argument("--model", type=Path, default=None, metavar="FOLDER",
                       help=f"an aMUSEd / Muse model folder (default: the built-in model, {DEFAULT_MODEL_DIR})")
    group.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                       help="auto (default): cuda when available, else cpu")
    group.add_argument("--dtype", choices=tuple(DTYPE_NAMES), default="fp32",
                       help="precision of the transformers and text encoder; the VQ stays fp32 (default: fp32)")
    group.add_argument("--attention", choices=BACKENDS, default="auto", help="attention backend (default: auto)")


def add_output_options(parser: argparse.ArgumentParser, default_name: str) -> None:
    group = parser.add_argument_group("output")
    group.add_argument("-o", "--output", type=Path, default=None, metavar="FILE",
                       help=f"the first image (default: {default_name}); more get _1, _2, ... before the extension")
    group.add_argument("-n", "--num-images", type=bounded_int(1, MAX_IMAGES), default=1, metavar="N",
                       help="number of images (default: 1)")
    group.add_argument("--seed", type=bounded_int(0, MAX_SEED), default=0, help="image k uses seed + k (default: 0)")
    group.add_argument("--batch-size", type=bounded_int(1, 256), default=4, metavar="N",
                       help="images sampled at once; lower it if memory runs out (default: 4)")
    group.add_argument("--overwrite", action="store_true", help="replace existing output files")
    group.add_argument("--quiet", action="store_true", help="no progress bars")


def add_prompt_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--negative", default=None, metavar="TEXT",
                        help="negative prompt: what to steer away from (default: the empty prompt)")


def add_sampling_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("sampling (defaults: the model folder's sampling.json, else aMUSEd's)")
    group.add_argument("--steps", type=bounded_int(1, MAX_STEPS), default=None, help="decoding steps (aMUSEd: 12)")
    group.add_argument("--guidance", type=bounded_float(0.0), default=None,
                       help="classifier-free guidance scale; <= 1 turns guidance off (aMUSEd: 10; built-in model: 3)")
    group.add_argument("--guidance-schedule", choices=GUIDANCE_SCHEDULES, default=None,
                       help="linear: rise from 1 to --guidance over the steps, as Muse (aMUSEd: constant)")
    group.add_argument("--mask-schedule", choices=tuple(MASK_SCHEDULES), default=None,
                       help="share of tokens still masked after each step (aMUSEd: cosine; inpaint/outpaint: linear)")
    group.add_argument("--temperature", type=temperature, default=None, metavar="T|START,END",
                       help="randomness of which tokens are kept, annealed over the steps (aMUSEd: 2,0)")
    group.add_argument("--token-temperature", type=bounded_float(0.01, 100.0), default=None, metavar="T",
                       help="softmax temperature of the sampled tokens; < 1 favours likelier codes "
                            "(aMUSEd: 1; built-in model: 0.5)")


def add_input_image_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("image", type=Path, metavar="IMAGE", help="input image (any format Pillow reads)")
    parser.add_argument("--resize", action="store_true",
                        help="resize inputs to the nearest multiple of the VQ factor instead of refusing them")


def sampling_options(args, pipe: MusePipeline, mask_schedule: str | None = None) -> SamplingOptions:
    """The command line's settings; where a flag is not given, the command's own ``mask_schedule``, then the
    model's recommended settings, then aMUSEd's."""
    return pipe.sampling_options(steps=args.steps, guidance_scale=args.guidance, guidance_schedule=args.guidance_schedule,
                                 mask_schedule=args.mask_schedule or mask_schedule, temperature=args.temperature,
                                 token_temperature=args.token_temperature, seed=args.seed)


# ---- checks made before any model is loaded ----


def require_prompt(args) -> str:
    """The prompt, and the negative prompt, checked before any model loads."""
    check_text("the prompt", args.prompt)
    if args.negative is not None:
        check_text("--negative", args.negative)
    if not args.prompt.strip():
        raise UsageError('the prompt is empty: describe the image in words, e.g. "a red fox in the snow".')
    return args.prompt


def plan_outputs(output: Path, count: int, overwrite: bool) -> list[Path]:
    """The files ``count`` images will be written to, checked now so no sampling work is wasted."""
    extension = output.suffix.lower()
    if Image.registered_extensions().get(extension) not in Image.SAVE:
        raise UsageError(f"-o {output}: unknown image type {extension or '(no extension)'!r}; use .png, .jpg or .webp.")
    paths = [output] + [output.with_name(f"{output.stem}_{k}{output.suffix}") for k in range(1, count)]
    for path in paths:
        if path.is_dir():
            raise UsageError(f"-o {path} is a folder: give a file name such as {path / 'out.png'}.")
        if path.exists() and not overwrite:
            raise UsageError(f"{path} already exists: choose another -o, or pass --overwrite to replace it.")
    ancestor = next(parent for parent in output.absolute().parents if parent.exists())
    if not ancestor.is_dir() or not os.access(ancestor, os.W_OK):
        raise UsageError(f"cannot write to {output.parent}: {ancestor} is not a writable folder.")
    return paths


def model_folder(path: Path | None) -> Path:
    if path is None:
        if not DEFAULT_MODEL_DIR.is_dir():
            raise UsageError(f"the built-in model is not installed ({DEFAULT_MODEL_DIR} is missing): "
                             "pass --model PATH to an aMUSEd or Muse model folder.")
        return DEFAULT_MODEL_DIR
    if not path.is_dir():
        raise UsageError(f"--model {path}: no such folder; give an aMUSEd or Muse model folder "
                         "(transformer/, vqvae/, text_encoder/, tokenizer/).")
    return path


def pick_device(name: str) -> torch.device:
    if name == "cuda" and not torch.cuda.is_available():
        raise UsageError("--device cuda: no CUDA device is available to this torch build; use --device cpu.")
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(name)


def load_model_folder(folder: Path, args) -> MusePipeline:
    device = pick_device(args.device)
    try:
        check_backend(args.attention)
    except RuntimeError as error:  # xformers asked for where it cannot run
        raise UsageError(str(error)) from None
    return load_pipeline(folder, dtype=DTYPE_NAMES[args.dtype], device=device, attention=args.attention)


# ---- images ----


def mask_from_alpha(path: Path, alpha: torch.Tensor | None) -> torch.Tensor:
    """ComfyUI LoadImage's convention: transparent pixels are the area to regenerate."""
    if alpha is None:
        raise UsageError(f"no --mask given and {path} has no alpha channel: pass --mask MASK (white = regenerate), "
                         "or an RGBA image whose transparent pixels mark the area.")
    return 1 - alpha


def check_mask(mask: torch.Tensor, mask_name: str, image: torch.Tensor, image_path: Path) -> None:
    height, width = image.shape[-2:]
    if mask.shape != (height, width):
        raise UsageError(f"the mask {mask_name} is {mask.shape[1]}x{mask.shape[0]} but {image_path} is "
                         f"{width}x{height}: resize the mask to {width}x{height}.")
    if not (mask >= 0.5).any():
        raise UsageError(f"the mask {mask_name} marks nothing to regenerate: paint that area white "
                         "(or transparent in an RGBA image).")


def check_size(width: int, height: int, factor: int, what: str, advice: str = "") -> None:
    """Refuse sizes the VQ cannot tokenize, naming the nearest valid one."""
    nearest = [nearest_multiple(side, factor) for side in (width, height)]
    if width % factor or height % factor:
        raise UsageError(f"{what} is {width}x{height}, not a multiple of the model's VQ factor {factor}: "
                         f"use {nearest[0]}x{nearest[1]}{advice}.")
    largest = MAX_TOKENS_PER_SIDE * factor
    if max(width, height) > largest:
        raise UsageError(f"{what} is {width}x{height}; this model allows at most {largest} pixels per side.")


def fit_to_factor(image: torch.Tensor, factor: int, resize: bool, what: str) -> torch.Tensor:
    """``image`` (``[1, C, H, W]``), resized to the nearest multiple of ``factor`` when ``resize`` allows it."""
    height, width = image.shape[-2:]
    if resize and (height % factor or width % factor):
        size = [nearest_multiple(side, factor) for side in (height, width)]
        image = F.interpolate(image, size=size, mode="bicubic", antialias=True).clamp(0, 1)
        height, width = size
    check_size(width, height, factor, what, advice=" (--resize does it)")
    return image


def save_images(images: torch.Tensor, paths: list[Path], notes: list[str], overwrite: bool) -> None:
    for image, path, note in zip(images, paths, notes):
        pixels = (image.float().clamp(0, 1) * 255).round().byte().permute(1, 2, 0).cpu().numpy()
        with atomic_output(path, overwrite) as temporary:
            Image.fromarray(pixels).save(temporary, format=Image.registered_extensions()[path.suffix.lower()])
        print(f"wrote {path} ({note})")


# ---- sampling in batches, with a progress bar ----


def sample_in_batches(count: int, args, label: str, steps_per_batch: int,
                      sample: Callable[[int, int, Callable], torch.Tensor]) -> torch.Tensor:
    """Concatenate ``sample(first, size, callback)`` over batches of at most ``--batch-size`` items.

    ``first`` is the index of the batch's first item: its seed is ``--seed + first``, which keeps image k's
    seed at ``seed + k`` whatever the batch size.
    """
    batches = [(first, min(args.batch_size, count - first)) for first in range(0, count, args.batch_size)]
    results = []
    with tqdm(total=steps_per_batch * len(batches), desc=label, unit="step", disable=args.quiet) as bar:
        for first, size in batches:
            results.append(sample(first, size, lambda step, total, ids: bar.update()).cpu())
    return torch.cat(results)


def decode_in_batches(vq, ids: torch.Tensor, batch_size: int) -> torch.Tensor:
    return torch.cat([vq.decode(batch.to(vq.device)).cpu() for batch in ids.split(batch_size)])


def repeat(tensor: torch.Tensor, size: int) -> torch.Tensor:
    return tensor.expand(size, *tensor.shape[1:])


def seeds_note(args, count: int) -> list[str]:
    return [f"seed {args.seed + k}" for k in range(count)]


def start_image_job(args, suffix: str) -> tuple[str, list[Path], torch.Tensor, torch.Tensor | None]:
    """What every command on an input image does first: the prompt, the output paths, the image and its alpha."""
    prompt = require_prompt(args)
    paths = plan_outputs(args.output or Path(f"{args.image.stem}_{suffix}.png"), args.num_images, args.overwrite)
    image, alpha = read_image(args.image)
    return prompt, paths, image, alpha


def load_for_image(args, image: torch.Tensor) -> tuple[MusePipeline, torch.Tensor]:
    """The model, and the input image fitted to its VQ factor (an error, or resized with --resize)."""
    pipe = load_model_folder(model_folder(args.model), args)
    return pipe, fit_to_factor(image, pipe.vq.downsample_factor, args.resize, str(args.image))


def sample_and_save(args, paths: list[Path], label: str, steps_per_batch: int, sample) -> None:
    images = sample_in_batches(args.num_images, args, label, steps_per_batch, sample)
    save_images(images, paths, seeds_note(args, args.num_images), args.overwrite)


# ---- muse generate ----


def add_generate(subparsers) -> None:
    parser = subparsers.add_parser("generate", help="text to image", description="Generate images from a prompt.")
    parser.add_argument("prompt", metavar="PROMPT")
    add_prompt_options(parser)
    add_sampling_options(parser)
    parser.add_argument("--width", type=bounded_int(1, MAX_PIXELS_PER_SIDE), help="pixels (default: the model's native size)")
    parser.add_argument("--height", type=bounded_int(1, MAX_PIXELS_PER_SIDE), help="pixels (default: the model's native size)")
    parser.add_argument("--sr", action="store_true", help="run the super-resolution stage (models with super_res/)")
    parser.add_argument("--sr-steps", type=bounded_int(1, MAX_STEPS), default=8,
                        help="super-resolution steps (default: 8)")
    parser.add_argument("--rerank", type=bounded_int(2, 64), metavar="K",
                        help="draw K candidates per image and keep the best by CLIP score (models with reranker/)")
    add_output_options(parser, "muse.png")
    add_model_options(parser)
    parser.set_defaults(run=run_generate)


def native_size(pipe: MusePipeline) -> int:
    """The pixel size the base transformer was trained at: its token grid times the VQ factor."""
    return pipe.transformer.config.sample_size * pipe.vq.downsample_factor


def super_res_scale(pipe: MusePipeline) -> int:
    """Token-grid upscaling of the super-res stage, from the two transformers' native grids.

    The grid may stay the same (scale 1) when the super-res VQ has a coarser factor than the base VQ:
    the pixel size still grows by the ratio of the factors.
    """
    low, high = pipe.transformer.config.sample_size, pipe.super_res.config.transformer.sample_size
    factor_ratio = (pipe.super_res_vq or pipe.vq).downsample_factor / pipe.vq.downsample_factor
    if high % low or high // low * factor_ratio <= 1:
        raise UsageError(f"cannot tell the super-resolution scale: super_res's sample_size ({high}) must be a "
                         f"multiple of the transformer's ({low}) that enlarges the image; fix super_res's config.")
    return high // low


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
    width, height = args.width or native_size(pipe), args.height or native_size(pipe)
    check_size(width, height, factor, "the requested size")
    if args.sr:  # checked now, not after the base images are made
        sr_factor = (pipe.super_res_vq or pipe.vq).downsample_factor
        sr_token = super_res_scale(pipe) * sr_factor  # pixels per base token after super-resolution
        check_size(width // factor * sr_token, height // factor * sr_token, sr_factor, "the super-resolved size")
    options = sampling_options(args, pipe)

    def sample(first, size, callback):
        return generate(pipe.transformer, pipe.text_encoder, prompt, height=height, width=width,
                        downsample_factor=factor, negative_prompt=args.negative, num_images_per_prompt=size,
                        options=dataclasses.replace(options, seed=args.seed + first), callback=callback)

    ids = sample_in_batches(args.num_images * candidates, args, "generating", options.steps, sample)
    images = decode_in_batches(pipe.vq, ids, args.batch_size)
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
    vq, scale = pipe.super_res_vq or pipe.vq, super_res_scale(pipe)
    images = []
    with tqdm(total=args.sr_steps * len(ids), desc="super-resolving", unit="step", disable=args.quiet) as bar:
        for lowres, seed in zip(ids, seeds):
            options = dataclasses.replace(sampling_options(args, pipe), steps=args.sr_steps, seed=seed)
            high = super_resolve(pipe.super_res, pipe.text_encoder, lowres[None], prompt, scale=scale,
                                 downsample_factor=vq.downsample_factor, negative_prompt=args.negative,
                                 options=options, callback=lambda step, total, ids: bar.update())
            images.append(vq.decode(high.to(vq.device)).cpu())
    return torch.cat(images)


# ---- muse inpaint / outpaint ----


def add_inpaint(subparsers) -> None:
    parser = subparsers.add_parser(
        "inpaint", help="regenerate a masked area of an image",
        description="Regenerate the masked area of IMAGE under PROMPT; everything else is kept exactly.")
    add_input_image_options(parser)
    parser.add_argument("--mask", type=Path, metavar="MASK",
                        help="white (and opaque) = regenerate; default: IMAGE's transparent pixels (RGBA image)")
    parser.add_argument("prompt", metavar="PROMPT")
    add_prompt_options(parser)
    add_sampling_options(parser)
    add_output_options(parser, "IMAGE_inpaint.png in this folder")
    add_model_options(parser)
    parser.set_defaults(run=run_inpaint)


def run_inpaint(args) -> None:
    prompt, paths, image, alpha = start_image_job(args, "inpaint")
    mask = read_mask(args.mask) if args.mask else mask_from_alpha(args.image, alpha)
    check_mask(mask, str(args.mask or f"(transparent pixels of {args.image})"), image, args.image)
    pipe, image = load_for_image(args, image)
    mask = fit_to_factor(mask[None, None], pipe.vq.downsample_factor, args.resize, "the mask")[0, 0]
    options = sampling_options(args, pipe, mask_schedule="linear")  # aMUSEd's inpainting schedule

    def sample(first, size, callback):
        return inpaint(pipe.transformer, pipe.vq, pipe.text_encoder, repeat(image, size), mask, prompt,
                       negative_prompt=args.negative, options=dataclasses.replace(options, seed=args.seed + first),
                       callback=callback).images

    sample_and_save(args, paths, "inpainting", options.steps, sample)


def add_outpaint(subparsers) -> None:
    parser = subparsers.add_parser(
        "outpaint", help="extend an image beyond its borders",
        description="Grow IMAGE's canvas by the given margins (rounded up to the VQ factor) and fill them.")
    add_input_image_options(parser)
    parser.add_argument("prompt", metavar="PROMPT")
    for side in ("left", "right", "top", "bottom"):
        parser.add_argument(f"--{side}", type=bounded_int(0, MAX_PIXELS_PER_SIDE), default=0, metavar="PIXELS",
                            help=f"pixels to add on the {side}, rounded up to the VQ factor")
    add_prompt_options(parser)
    add_sampling_options(parser)
    add_output_options(parser, "IMAGE_outpaint.png in this folder")
    add_model_options(parser)
    parser.set_defaults(run=run_outpaint)


def run_outpaint(args) -> None:
    margins = dict(left=args.left, right=args.right, top=args.top, bottom=args.bottom)
    if not any(margins.values()):
        raise UsageError("nothing to outpaint: give at least one of --left, --right, --top, --bottom (pixels).")
    prompt, paths, image, _ = start_image_job(args, "outpaint")
    pipe, image = load_for_image(args, image)
    factor = pipe.vq.downsample_factor
    grown = {side: -(-margin // factor) * factor for side, margin in margins.items()}  # rounded up, as outpaint does
    height, width = image.shape[-2:]
    check_size(width + grown["left"] + grown["right"], height + grown["top"] + grown["bottom"], factor,
               "the outpainted canvas")
    options = sampling_options(args, pipe, mask_schedule="linear")  # aMUSEd's inpainting schedule

    def sample(first, size, callback):
        return outpaint(pipe.transformer, pipe.vq, pipe.text_encoder, repeat(image, size), prompt, **margins,
                        negative_prompt=args.negative, options=dataclasses.replace(options, seed=args.seed + first),
                        callback=callback).images

    sample_and_save(args, paths, "outpainting", options.steps, sample)


# ---- muse edit (mask-free editing) ----


def add_edit(subparsers) -> None:
    parser = subparsers.add_parser(
        "edit", help="mask-free editing towards a prompt (Muse)",
        description="Move IMAGE towards PROMPT by resampling a small random share of its tokens, many times.")
    add_input_image_options(parser)
    parser.add_argument("prompt", metavar="PROMPT")
    add_prompt_options(parser)
    group = parser.add_argument_group("editing")
    group.add_argument("--iterations", type=bounded_int(1, MAX_EDIT_ITERATIONS), default=100,
                       help="resampling rounds, one transformer pass each (default: 100)")
    group.add_argument("--fraction", type=bounded_float(0.0, 1.0), default=0.08,
                       help="share of tokens resampled per iteration (default: 0.08)")
    group.add_argument("--guidance", type=bounded_float(0.0), default=4.0,
                       help="classifier-free guidance scale (default: 4)")
    group.add_argument("--top-k", type=bounded_int(1, 1 << 20), default=3,
                       help="sample among the k likeliest tokens (default: 3)")
    group.add_argument("--mask", type=Path, metavar="MASK",
                       help="confine the edit to the white (and opaque) area; pixels outside it are kept")
    add_output_options(parser, "IMAGE_edit.png in this folder")
    add_model_options(parser)
    parser.set_defaults(run=run_edit)


def run_edit(args) -> None:
    prompt, paths, image, _ = start_image_job(args, "edit")
    mask = None
    if args.mask:
        mask = read_mask(args.mask)
        check_mask(mask, str(args.mask), image, args.image)
    pipe, image = load_for_image(args, image)
    factor = pipe.vq.downsample_factor
    token_mask = None
    if mask is not None:
        mask = fit_to_factor(mask[None, None], factor, args.resize, "the mask")[0]
        token_mask = mask_to_token_grid(mask, factor)
    height, width = image.shape[-2:]
    ids = pipe.vq.encode(image)

    def sample(first, size, callback):
        edited = edit_tokens(pipe.transformer, pipe.text_encoder, repeat(ids, size), prompt, height=height,
                             width=width, iterations=args.iterations, fraction=args.fraction,
                             guidance_scale=args.guidance, top_k=args.top_k, seed=args.seed + first,
                             mask=None if token_mask is None else repeat(token_mask, size),
                             negative_prompt=args.negative, callback=callback)
        return pipe.vq.decode(edited.to(pipe.vq.device))

    images = sample_in_batches(args.num_images, args, "editing", args.iterations, sample)
    if mask is not None:  # as inpainting does: pixels outside the mask are the input's, not its VQ reconstruction
        images = torch.where(mask[:, None] < 0.5, image, images)
    save_images(images, paths, seeds_note(args, args.num_images), args.overwrite)


# ---- muse img2img ----


def add_img2img(subparsers) -> None:
    parser = subparsers.add_parser(
        "img2img", help="re-generate an image under a prompt",
        description="Re-mask part of IMAGE's tokens and sample them again under PROMPT.")
    add_input_image_options(parser)
    parser.add_argument("prompt", metavar="PROMPT")
    parser.add_argument("--strength", type=bounded_float(0.0, 1.0), default=0.6,
                        help="0 keeps the image, 1 re-generates every token; runs round(strength * steps) steps "
                             "(default: 0.6)")
    add_prompt_options(parser)
    add_sampling_options(parser)
    add_output_options(parser, "IMAGE_img2img.png in this folder")
    add_model_options(parser)
    parser.set_defaults(run=run_img2img)


def run_img2img(args) -> None:
    prompt, paths, image, _ = start_image_job(args, "img2img")
    pipe, image = load_for_image(args, image)
    height, width = image.shape[-2:]
    ids = pipe.vq.encode(image)
    options = sampling_options(args, pipe)

    def sample(first, size, callback):
        result = img2img(pipe.transformer, pipe.text_encoder, repeat(ids, size), prompt, strength=args.strength,
                         height=height, width=width, negative_prompt=args.negative,
                         options=dataclasses.replace(options, seed=args.seed + first), callback=callback)
        return pipe.vq.decode(result.to(pipe.vq.device))

    sample_and_save(args, paths, "img2img", round(args.strength * options.steps), sample)


# ---- evaluation and training ----


def add_eval(subparsers) -> None:
    from .eval.run import SETTINGS  # noqa: PLC0415

    parser = subparsers.add_parser(
        "eval", help="prompt accuracy on the shapes benchmark",
        description="Generate the held-out shapes prompts and score the images with the colour-segmentation "
                    "checker: accuracy per category and overall, one row per setting.")
    parser.add_argument("--settings", nargs="+", choices=tuple(SETTINGS), default=None, metavar="SETTING",
                        help=f"rows to run (default: all): {', '.join(SETTINGS)}")
    parser.add_argument("--limit", type=bounded_int(1, 10_000), default=None, metavar="N",
                        help="only the first N prompts of each category (quick runs)")
    parser.add_argument("--best-of", type=bounded_int(2, 64), default=8, metavar="K",
                        help="samples per prompt in the reranked row (default: 8)")
    parser.add_argument("--edit-iterations", type=bounded_int(1, MAX_STEPS), default=100,
                        help="mask-free editing iterations (default: 100)")
    parser.add_argument("--guidance", type=bounded_float(0.0), default=None, metavar="G",
                        help="guidance scale of the guided rows (default: the model's sampling.json, else 10)")
    parser.add_argument("--seed", type=bounded_int(0, MAX_SEED), default=0)
    parser.add_argument("--batch-size", type=bounded_int(1, 256), default=16, metavar="N")
    parser.add_argument("--json", type=Path, default=None, metavar="FILE", help="also write the results as JSON")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    add_model_options(parser)
    parser.set_defaults(run=run_eval)


def run_eval(args) -> None:
    import json  # noqa: PLC0415

    from .eval.run import evaluate, format_table  # noqa: PLC0415

    folder = model_folder(args.model)
    pipe = load_model_folder(folder, args)
    reranker = folder / RERANKER_FOLDER
    scorer = load_clip_scorer(reranker, device=pipe.transformer.device) if reranker.is_dir() else None
    report = evaluate(pipe, scorer, settings=args.settings, limit=args.limit, seed=args.seed,
                      batch_size=args.batch_size, best_of=args.best_of, edit_iterations=args.edit_iterations,
                      guidance_scale=args.guidance, progress=not args.quiet)
    print(format_table(report))
    if args.json is not None:
        with atomic_output(args.json, overwrite=True) as temporary:
            temporary.write_text(json.dumps(report.to_dict(), indent=2))
        print(f"wrote {args.json}")


def add_train(subparsers) -> None:
    from .training.cascade import PRESETS, STAGES  # noqa: PLC0415

    parser = subparsers.add_parser(
        "train", help="train a Muse cascade on an image-caption folder",
        description="Train VQ tokenizers, a T5 text encoder with the base transformer, the super-res transformer "
                    "and a CLIP reranker into a model folder. Interrupted runs resume. Under torchrun it trains "
                    "data-parallel (e.g. torchrun --nproc_per_node 8 -m muse_core train ...).")
    parser.add_argument("--data", type=Path, default=None, metavar="FOLDER",
                        help="images + captions.jsonl or captions.txt (default: generate the shapes dataset)")
    parser.add_argument("-o", "--output", type=Path, required=True, metavar="FOLDER", help="the model folder to write")
    parser.add_argument("--work", type=Path, default=None, metavar="FOLDER",
                        help="checkpoints, token caches and generated data (default: OUTPUT.work)")
    parser.add_argument("--preset", choices=tuple(PRESETS), default="shipped",
                        help="model sizes and schedules (default: shipped = the built-in model's recipe)")
    parser.add_argument("--stages", nargs="+", choices=STAGES, default=list(STAGES), metavar="STAGE",
                        help=f"stages to train (default: all): {', '.join(STAGES)}")
    parser.add_argument("--seed", type=bounded_int(0, 2**31 - 1), default=0)
    parser.add_argument("--threads", type=bounded_int(1, 1024), default=None, metavar="N",
                        help="torch threads per process (default: the machine's cores divided by torchrun's "
                             "processes on it; on a busy machine fewer threads are faster)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    parser.set_defaults(run=run_train)


def run_train(args) -> None:
    from .training.cascade import train_cascade  # noqa: PLC0415
    from .training.loop import training_threads  # noqa: PLC0415

    torch.set_num_threads(training_threads(args.threads))
    if args.data is not None and not args.data.is_dir():
        raise UsageError(f"--data {args.data}: no such folder; give a folder with images and captions.jsonl.")
    work = args.work or args.output.with_name(args.output.name + ".work")
    out = train_cascade(args.output, work, args.preset, data_dir=args.data, stages=args.stages, seed=args.seed,
                        progress=not args.quiet)
    print(f"wrote {out}")


# ---- entry point ----

SUBCOMMANDS = [add_generate, add_inpaint, add_outpaint, add_edit, add_img2img, add_eval, add_train]


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(
        prog="muse", description="Muse / aMUSEd masked-token text-to-image.",
        epilog="Run 'muse COMMAND --help' for a command's options.")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for add in SUBCOMMANDS:
        add(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_request:  # argparse has printed its one-line error (code 2) or the help (code 0)
        return exit_request.code
    try:
        args.run(args)
    except (UsageError, ValueError) as error:  # ValueError: the library's input checks (CheckpointError too)
        print(f"muse: error: {error}", file=sys.stderr)
        return USAGE_ERROR
    except OutputError as error:  # disk full, file-size limit...: the message says nothing was lost
        print(f"muse: error: {error}", file=sys.stderr)
        return 1
    except torch.OutOfMemoryError:
        print("muse: error: out of memory: lower --batch-size, the image size or -n, or use --dtype bf16.",
              file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("muse: interrupted", file=sys.stderr)
        return 130
    return 0
