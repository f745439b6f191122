"""The commands on an input image: ``muse inpaint``, ``outpaint``, ``edit`` (mask-free) and ``img2img``.

They share one path (:func:`run_image_command`): the prompt, output paths, image and mask are read and
checked before the model loads; the image and mask are fitted to the model's VQ factor; then each
command's sampler makes the images chunk by chunk. A command is its arguments (``add_*``) and a sampler.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path

from ..editing import (
    INPAINT_MASK_SCHEDULE,
    edit_image,
    inpaint,
    outpaint,
)
from ..geometry import round_up
from ..image_files import read_image, read_mask
from ..limits import MAX_EDIT_ITERATIONS, MAX_PIXELS_PER_SIDE
from ..pipeline import MusePipeline
from ..sampling import img2img
from .arguments import (
    UsageError,
    add_input_image_options,
    add_model_options,
    add_output_options,
    add_prompt_options,
    add_sampling_options,
    bounded_float,
    bounded_int,
    load_model_folder,
    mask_free_note,
    model_folder,
    require_prompt,
    sampling_options,
)
from .batching import ChunkSampler, repeat, sample_and_save
from .files import check_mask, check_size, fit_to_factor, mask_from_alpha, plan_outputs

# (args, pipe, prompt, image [1, 3, H, W], mask [H, W] or None) -> (steps per chunk, the chunk sampler)
Sampler = Callable[..., tuple[int, ChunkSampler]]


@dataclasses.dataclass(frozen=True)
class ImageCommand:
    name: str  # also the default output suffix: IMAGE_<name>.png
    label: str  # of the progress bar
    mask: str  # "required" (--mask, else the image's transparent pixels), "optional" (--mask) or "none"
    sampler: Sampler
    check_args: Callable = lambda args: None  # argument checks that need no file and no model


def run_image_command(args, command: ImageCommand) -> None:
    prompt = require_prompt(args)
    command.check_args(args)
    paths = plan_outputs(args.output or Path(f"{args.image.stem}_{command.name}.png"), args.num_images, args.overwrite)
    image, alpha = read_image(args.image)
    mask = None
    if command.mask == "required" or getattr(args, "mask", None):
        mask = read_mask(args.mask) if args.mask else mask_from_alpha(args.image, alpha)
        check_mask(mask, str(args.mask or f"(transparent pixels of {args.image})"), image, args.image)
    pipe = load_model_folder(model_folder(args.model), args)
    factor = pipe.vq.downsample_factor
    image = fit_to_factor(image, factor, args.resize, str(args.image))
    if mask is not None:
        mask = fit_to_factor(mask[None, None], factor, args.resize, "the mask")[0, 0]
    steps, sample = command.sampler(args, pipe, prompt, image, mask)
    sample_and_save(args, paths, command.label, steps, sample)


def add_image_command(subparsers, command: ImageCommand, help: str, description: str, mask_help: str | None = None,
                      sampling: bool = True, extra: Callable | None = None) -> None:
    parser = subparsers.add_parser(command.name, help=help, description=description)
    add_input_image_options(parser)
    if mask_help:
        parser.add_argument("--mask", type=Path, metavar="MASK", help=mask_help)
    parser.add_argument("prompt", metavar="PROMPT")
    add_prompt_options(parser)
    if extra is not None:
        extra(parser)
    if sampling:
        add_sampling_options(parser)
    add_output_options(parser, f"IMAGE_{command.name}.png in this folder")
    add_model_options(parser)
    parser.set_defaults(run=lambda args: run_image_command(args, command))


# ---- the samplers ----


def inpaint_sampler(args, pipe: MusePipeline, prompt, image, mask):
    options = sampling_options(args, pipe, mask_schedule=INPAINT_MASK_SCHEDULE)

    def sample(first, size, callback):
        return inpaint(pipe.transformer, pipe.vq, pipe.text_encoder, repeat(image, size), mask, prompt,
                       negative_prompt=args.negative, options=dataclasses.replace(options, seed=args.seed + first),
                       callback=callback).images

    return options.steps, sample


SIDES = ("left", "right", "top", "bottom")


def check_margins(args) -> None:
    if not any(getattr(args, side) for side in SIDES):
        raise UsageError("nothing to outpaint: give at least one of --left, --right, --top, --bottom (pixels).")


def outpaint_sampler(args, pipe: MusePipeline, prompt, image, mask):
    margins = {side: getattr(args, side) for side in SIDES}
    factor = pipe.vq.downsample_factor
    grown = {side: round_up(margin, factor) for side, margin in margins.items()}  # as outpaint grows the canvas
    height, width = image.shape[-2:]
    check_size(width + grown["left"] + grown["right"], height + grown["top"] + grown["bottom"], factor,
               "the outpainted canvas")
    options = sampling_options(args, pipe, mask_schedule=INPAINT_MASK_SCHEDULE)

    def sample(first, size, callback):
        return outpaint(pipe.transformer, pipe.vq, pipe.text_encoder, repeat(image, size), prompt, **margins,
                        negative_prompt=args.negative, options=dataclasses.replace(options, seed=args.seed + first),
                        callback=callback).images

    return options.steps, sample


def edit_sampler(args, pipe: MusePipeline, prompt, image, mask):
    settings = pipe.mask_free_settings(iterations=args.iterations, fraction=args.fraction,
                                       guidance_scale=args.guidance, top_k=args.top_k)

    def sample(first, size, callback):
        return edit_image(pipe.transformer, pipe.vq, pipe.text_encoder, repeat(image, size), prompt, mask=mask,
                          **settings, seed=args.seed + first, negative_prompt=args.negative, callback=callback).images

    return settings["iterations"], sample


def img2img_sampler(args, pipe: MusePipeline, prompt, image, mask):
    height, width = image.shape[-2:]
    ids = pipe.vq.encode(image)
    options = sampling_options(args, pipe)

    def sample(first, size, callback):
        result = img2img(pipe.transformer, pipe.text_encoder, repeat(ids, size), prompt, strength=args.strength,
                         height=height, width=width, negative_prompt=args.negative,
                         options=dataclasses.replace(options, seed=args.seed + first), callback=callback)
        return pipe.vq.decode(result.to(pipe.vq.device))

    return round(args.strength * options.steps), sample


INPAINT = ImageCommand("inpaint", "inpainting", "required", inpaint_sampler)
OUTPAINT = ImageCommand("outpaint", "outpainting", "none", outpaint_sampler, check_margins)
EDIT = ImageCommand("edit", "editing", "optional", edit_sampler)
IMG2IMG = ImageCommand("img2img", "img2img", "none", img2img_sampler)


# ---- the commands' own arguments ----


def add_inpaint(subparsers) -> None:
    add_image_command(subparsers, INPAINT, "regenerate a masked area of an image",
                      "Regenerate the masked area of IMAGE under PROMPT; everything else is kept exactly.",
                      mask_help="white (and opaque) = regenerate; default: IMAGE's transparent pixels (RGBA image)")


def add_outpaint(subparsers) -> None:
    def margins(parser):
        for side in SIDES:
            parser.add_argument(f"--{side}", type=bounded_int(0, MAX_PIXELS_PER_SIDE), default=0, metavar="PIXELS",
                                help=f"pixels to add on the {side}, rounded up to the VQ factor")

    add_image_command(subparsers, OUTPAINT, "extend an image beyond its borders",
                      "Grow IMAGE's canvas by the given margins (rounded up to the VQ factor) and fill them.",
                      extra=margins)


def add_edit(subparsers) -> None:
    def editing(parser):
        group = parser.add_argument_group("editing (defaults: the model folder's sampling.json, \"mask_free\", "
                                          "else the paper's)")
        group.add_argument("--iterations", type=bounded_int(1, MAX_EDIT_ITERATIONS),
                           help=f"resampling rounds, one transformer pass each ({mask_free_note('iterations')})")
        group.add_argument("--fraction", type=bounded_float(0.0, 1.0),
                           help=f"share of tokens resampled per iteration ({mask_free_note('fraction')})")
        group.add_argument("--guidance", type=bounded_float(0.0),
                           help=f"classifier-free guidance scale ({mask_free_note('guidance_scale')})")
        group.add_argument("--top-k", type=bounded_int(1, 1 << 20),
                           help=f"sample among the k likeliest tokens ({mask_free_note('top_k')})")

    add_image_command(subparsers, EDIT, "mask-free editing towards a prompt (Muse)",
                      "Move IMAGE towards PROMPT by resampling a small random share of its tokens, many times.",
                      mask_help="confine the edit to the white (and opaque) area; pixels outside it are kept",
                      sampling=False, extra=editing)


def add_img2img(subparsers) -> None:
    def strength(parser):
        parser.add_argument("--strength", type=bounded_float(0.0, 1.0), default=0.6,
                            help="0 keeps the image, 1 re-generates every token; runs round(strength * steps) steps "
                                 "(default: 0.6)")

    add_image_command(subparsers, IMG2IMG, "re-generate an image under a prompt",
                      "Re-mask part of IMAGE's tokens and sample them again under PROMPT.", extra=strength)



