"""Arguments every command shares, their parsing, and the checks made before any model is loaded."""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable
from pathlib import Path

import torch

from ..attention import BACKENDS, check_backend
from ..editing import INPAINT_MASK_SCHEDULE
from ..limits import MAX_IMAGES, MAX_LORA_STRENGTH, MAX_SEED, MAX_STEPS, check_text
from ..loading.dtypes import DTYPE_NAMES
from ..loading.errors import CheckpointError
from ..loading.lora import apply_lora, lora_parts
from ..pipeline import DEFAULT_MODEL_DIR, MusePipeline, load_pipeline, read_mask_free_defaults, read_sampling_defaults
from ..sampling import SamplingOptions
from ..sampling.schedules import GUIDANCE_SCHEDULES, MASK_SCHEDULES

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
    group.add_argument("--compile", action="store_true",
                       help="torch.compile the transformers' per-step forward: faster steps after a one-off "
                            "compilation (minutes on a CPU); worth it for many steps or images")
    group.add_argument("--lora", action="append", metavar="FILE[:STRENGTH]",
                       help="apply a LoRA file (diffusers' aMUSEd format, .safetensors) at STRENGTH "
                            f"(default 1, from -{MAX_LORA_STRENGTH:g} to {MAX_LORA_STRENGTH:g}); repeat for several")


def add_output_options(parser: argparse.ArgumentParser, default_name: str) -> None:
    group = parser.add_argument_group("output")
    group.add_argument("-o", "--output", type=Path, default=None, metavar="FILE",
                       help=f"the first image (default: {default_name}); more get _1, _2, ... before the extension")
    group.add_argument("-n", "--num-images", type=bounded_int(1, MAX_IMAGES), default=1, metavar="N",
                       help="number of images (default: 1)")
    group.add_argument("--seed", type=bounded_int(0, MAX_SEED), default=0, help="image k uses seed + k (default: 0)")
    group.add_argument("--chunk-size", "--batch-size", dest="chunk_size", type=bounded_int(1, 256), default=4,
                       metavar="N", help="images sampled at once; lower it if memory runs out (default: 4)")
    group.add_argument("--overwrite", action="store_true", help="replace existing output files")
    group.add_argument("--quiet", action="store_true", help="no progress bars")


def add_prompt_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--negative", default=None, metavar="TEXT",
                        help="negative prompt: what to steer away from (default: the empty prompt)")


def defaults_note(field: str, show=str) -> str:
    """"aMUSEd: X; built-in model: Y" for a SamplingOptions field, from the two sources of those defaults."""
    amused = show(getattr(SamplingOptions(), field))
    built_in = read_sampling_defaults(DEFAULT_MODEL_DIR).get(field) if DEFAULT_MODEL_DIR.is_dir() else None
    return f"aMUSEd: {amused}" + ("" if built_in is None else f"; built-in model: {show(built_in)}")


def mask_free_note(name: str) -> str:
    """"paper: X; built-in model: Y" for a mask-free editing setting, from the two sources of those defaults."""
    from ..editing.maskfree import PAPER_SETTINGS  # noqa: PLC0415  (editing imports the samplers)

    built_in = read_mask_free_defaults(DEFAULT_MODEL_DIR).get(name) if DEFAULT_MODEL_DIR.is_dir() else None
    return f"paper: {PAPER_SETTINGS[name]:g}" + ("" if built_in is None else f"; built-in model: {built_in:g}")


def show_temperature(value) -> str:
    return ",".join(f"{t:g}" for t in value) if isinstance(value, (tuple, list)) else f"{value:g}"


def add_sampling_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("sampling (defaults: the model folder's sampling.json, else aMUSEd's)")
    group.add_argument("--steps", type=bounded_int(1, MAX_STEPS), default=None,
                       help=f"decoding steps ({defaults_note('steps')})")
    group.add_argument("--guidance", type=bounded_float(0.0), default=None,
                       help=f"classifier-free guidance scale; <= 1 turns guidance off ({defaults_note('guidance_scale')})")
    group.add_argument("--guidance-schedule", choices=GUIDANCE_SCHEDULES, default=None,
                       help=f"linear: rise from 1 to --guidance over the steps, as Muse ({defaults_note('guidance_schedule')})")
    group.add_argument("--mask-schedule", choices=tuple(MASK_SCHEDULES), default=None,
                       help=f"share of tokens still masked after each step ({defaults_note('mask_schedule')}; "
                            f"inpaint/outpaint: {INPAINT_MASK_SCHEDULE})")
    group.add_argument("--temperature", type=temperature, default=None, metavar="T|START,END",
                       help="randomness of which tokens are kept, annealed over the steps "
                            f"({defaults_note('temperature', show_temperature)})")
    group.add_argument("--token-temperature", type=bounded_float(0.01, 100.0), default=None, metavar="T",
                       help="softmax temperature of the sampled tokens; < 1 favours likelier codes "
                            f"({defaults_note('token_temperature', show_temperature)})")


def add_input_image_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("image", type=Path, metavar="IMAGE", help="input image (any format Pillow reads)")
    parser.add_argument("--resize", action="store_true",
                        help="resize inputs to the nearest multiple of the VQ factor instead of refusing them")


def sampling_options(args, pipe: MusePipeline, mask_schedule: str | None = None, super_res: bool = False,
                     steps: int | None = None) -> SamplingOptions:
    """The command line's settings; where a flag is not given, the command's own ``mask_schedule``, then the
    model's recommended settings (with ``super_res``: its super-res stage's, for ``steps`` steps), then aMUSEd's."""
    recommended = pipe.super_res_sampling_options if super_res else pipe.sampling_options
    return recommended(steps=steps or args.steps, guidance_scale=args.guidance, guidance_schedule=args.guidance_schedule,
                       mask_schedule=args.mask_schedule or mask_schedule, temperature=args.temperature,
                       token_temperature=args.token_temperature, seed=args.seed)


# ---- checks made before any model is loaded, and loading ----


def require_prompt(args) -> str:
    """The prompt, and the negative prompt, checked before any model loads."""
    check_text("the prompt", args.prompt)
    if args.negative is not None:
        check_text("--negative", args.negative)
    if not args.prompt.strip():
        raise UsageError('the prompt is empty: describe the image in words, e.g. "a red fox in the snow".')
    return args.prompt


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


def split_lora(text: str) -> tuple[Path, float]:
    """``FILE[:STRENGTH]`` -> (file, strength). Paths may hold ':' themselves, so only a last ':' followed by
    a number splits off a strength; the strength is checked here, the file by :func:`check_loras`."""
    path, _, tail = text.rpartition(":")
    try:
        strength = float(tail)
    except ValueError:
        strength = None
    if strength is None or not path:  # no number after a ':' that follows a path: it is all the path
        return Path(text), 1.0
    if not (math.isfinite(strength) and abs(strength) <= MAX_LORA_STRENGTH):
        raise UsageError(f"--lora {text}: the strength must be a number from -{MAX_LORA_STRENGTH:g} to "
                         f"{MAX_LORA_STRENGTH:g}, got {tail}; write FILE:STRENGTH, e.g. {path}:0.8.")
    return Path(path), strength


def check_loras(texts: list[str] | None) -> list[tuple[Path, float]]:
    """The ``--lora`` arguments as (file, strength), each file checked to be a LoRA before any model loads."""
    loras = []
    for text in texts or ():
        path, strength = split_lora(text)
        try:
            lora_parts(path)
        except CheckpointError as error:
            hint = " (if the part after ':' was meant as a strength: it must be a number, e.g. FILE:0.8)" \
                if ":" in str(path) else ""
            raise UsageError(f"--lora: {error}{hint}") from None
        loras.append((path, strength))
    return loras


def load_model_folder(folder: Path, args) -> MusePipeline:
    """The model folder's pipeline, with the ``--lora`` files applied in order (and compiled with --compile)."""
    loras = check_loras(args.lora)
    device = pick_device(args.device)
    try:
        check_backend(args.attention)
    except RuntimeError as error:  # xformers asked for where it cannot run
        raise UsageError(str(error)) from None
    pipe = load_pipeline(folder, dtype=DTYPE_NAMES[args.dtype], device=device, attention=args.attention)
    for path, strength in loras:
        apply_lora(pipe, path, strength)  # the handle is dropped: the pipeline lives only for this command
    if args.compile:
        for model in (pipe.transformer, pipe.super_res):
            if model is not None:
                model.compile_steps()
    return pipe
