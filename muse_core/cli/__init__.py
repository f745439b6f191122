"""The ``muse`` command: text-to-image and image editing from a shell.

    muse generate "a red fox in the snow" -n 4 -o foxes/fox.png
    muse inpaint photo.png --mask mask.png "a bowl of fruit on the table"
    muse outpaint photo.png "a wide mountain valley" --left 128 --right 128
    muse edit photo.png "the same street in winter"
    muse img2img photo.png "an oil painting" --strength 0.6

Outputs: ``-o out.png`` names the first image; more images (``-n``) are ``out_1.png``, ``out_2.png``, ...
Missing folders are created; an existing file is never replaced unless ``--overwrite`` is given, and a
file is written whole or not at all. Image ``k`` is drawn with seed ``--seed + k`` (with ``--rerank K``,
candidate ``k`` of all ``n * K``), so any one image is reproduced alone with its printed seed and ``-n 1``.

Input images must be multiples of the model's VQ factor (16 for aMUSEd) on each side: other sizes are
refused with the nearest valid size, or resized to it with ``--resize``.

Modules: ``arguments`` (shared options, checks made before a model loads, loading), ``files`` (output
paths, saving, fitting inputs to the VQ factor), ``batching`` (chunks and seeds), and one module per
command group: ``generate``, ``edit`` (inpaint, outpaint, edit, img2img: one path), ``train`` (eval, train).
Each command is ``add_<name>(subparsers)``, which sets ``run``. Bad input raises :class:`UsageError` or a
library ``ValueError`` and becomes a one-line ``muse: error: ...``, exit code 2.
"""

from __future__ import annotations

import sys

import torch

from ..output import OutputError
from .arguments import USAGE_ERROR, ArgumentParser, UsageError
from .edit import add_edit, add_img2img, add_inpaint, add_outpaint
from .generate import add_generate
from .train import add_eval, add_train

SUBCOMMANDS = [add_generate, add_inpaint, add_outpaint, add_edit, add_img2img, add_eval, add_train]


def build_parser() -> ArgumentParser:
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
        print("muse: error: out of memory: lower --chunk-size, the image size or -n, or use --dtype bf16.",
              file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("muse: interrupted", file=sys.stderr)
        return 130
    return 0


__all__ = ["SUBCOMMANDS", "UsageError", "build_parser", "main"]
