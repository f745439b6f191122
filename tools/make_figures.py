"""Draw the README's picture: what the embedded model makes of a few shapes prompts, with the prompts.

Loads the embedded default model (``muse_core/default_model``), generates each prompt at the model's
recommended settings (its ``sampling.json``: 24 steps, guidance 3, token temperature 0.5) with seed 0,
64 px, then runs the super-res stage (8 steps, 128 px) the way ``muse generate --sr`` does, and writes a
labelled grid: per prompt the 64 px base image (scaled up, nearest neighbour) beside its 128 px super-res.
Each tile is what ``muse generate PROMPT --sr --seed 0`` gives (up to floating-point rounding, which changes
with the thread count). No picking: every prompt has seed 0.

    python tools/make_figures.py                  # -> docs/images/embedded_grid.png (15-20 s on one CPU core)
    python tools/make_figures.py --thumbnails     # -> workflows/<name>.jpg, the template browser's thumbnails
    python tools/make_figures.py --thumbnails --workflows muse_lora   # -> only workflows/muse_lora.jpg

A thumbnail is what the workflow saves when run headlessly on the embedded model (its first images, enlarged);
the Meissonic workflows need weights the repository does not hold, so theirs is a card saying so.
"""

from __future__ import annotations

import argparse
import sys
import textwrap
import time
from pathlib import Path

import torch
from PIL import Image, ImageDraw, ImageFont

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # `python tools/make_figures.py` puts only tools/ itself on sys.path

import muse_core  # noqa: E402  (after sys.path.insert)
from muse_core.pipeline import DEFAULT_MODEL_DIR  # noqa: E402
from muse_core.sampling import SUPER_RES_STEPS, generate, super_resolve  # noqa: E402
from tools.comfy_offline import CoreNodes, load_pack, run_api  # noqa: E402

PROMPTS = [
    "two red circles on a blue background",
    "a green triangle on a white background",
    "three yellow squares on a black background",
    "a blue square to the left of a red circle",
    "a purple circle on a beige background",
    "an orange triangle above a green square",
    "four blue circles on a gray background",
    "a large red square on a navy background",
]
SEED = 0
TILE = 128  # display size of each image
GAP, PAD, COLUMNS = 4, 10, 4
FONT = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf"


def font(size: int) -> ImageFont.ImageFont:
    try:
        return ImageFont.truetype(FONT, size)
    except OSError:
        return ImageFont.load_default(size=size)


def to_pil(image: torch.Tensor, size: int) -> Image.Image:
    array = (image.clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).cpu().numpy()
    return Image.fromarray(array).resize((size, size), Image.NEAREST)


def sample(pipe, prompt: str) -> tuple[torch.Tensor, torch.Tensor]:
    """The 64 px image and its 128 px super-resolution, as ``muse generate PROMPT --sr --seed 0``."""
    options = pipe.sampling_options(seed=SEED)
    size = pipe.native_size
    ids = generate(pipe.transformer, pipe.text_encoder, prompt, height=size, width=size,
                   downsample_factor=pipe.vq.downsample_factor, options=options)
    base = pipe.vq.decode(ids)[0]
    sr_options = pipe.super_res_sampling_options(seed=SEED, steps=SUPER_RES_STEPS)
    high = super_resolve(pipe.super_res, pipe.text_encoder, ids, prompt, grid_scale=pipe.super_res_grid_scale,
                         downsample_factor=pipe.super_res_vq.downsample_factor, options=sr_options)
    return base, pipe.super_res_vq.decode(high)[0]


def draw_grid(results: list[tuple[str, torch.Tensor, torch.Tensor]], native: int, high: int) -> Image.Image:
    label_font, title_font = font(13), font(14)
    line_height = 16
    cell_width = 2 * TILE + GAP
    wrapped = [textwrap.wrap(prompt, width=34) for prompt, _, _ in results]
    label_lines = max(len(lines) for lines in wrapped)
    cell_height = TILE + 6 + label_lines * line_height
    rows = -(-len(results) // COLUMNS)
    header = 2 * line_height + 8
    width = COLUMNS * cell_width + (COLUMNS - 1) * 2 * PAD + 2 * PAD
    height = header + rows * cell_height + (rows - 1) * PAD + 2 * PAD
    canvas = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(canvas)
    draw.text((PAD, PAD), f"Embedded model, seed {SEED}, its sampling.json settings: each pair is the {native} px "
              f"base image (left, enlarged) and its {high} px super-resolution (right).", fill="black", font=title_font)
    draw.text((PAD, PAD + line_height + 2), "A small CPU-trained model of one toy domain: mostly the right shapes, "
              "colours and counts, with ragged edges and specks.", fill=(90, 90, 90), font=title_font)
    for index, ((_, base, sr), lines) in enumerate(zip(results, wrapped)):
        row, column = divmod(index, COLUMNS)
        x = PAD + column * (cell_width + 2 * PAD)
        y = PAD + header + row * (cell_height + PAD)
        canvas.paste(to_pil(base, TILE), (x, y))
        canvas.paste(to_pil(sr, TILE), (x + TILE + GAP, y))
        for k, line in enumerate(lines):
            draw.text((x, y + TILE + 4 + k * line_height), line, fill="black", font=label_font)
    return canvas


THUMBNAIL = 256  # px; ComfyUI's template cards are square


def workflow_thumbnail(api: dict, mappings: dict, output_dir: Path) -> Image.Image:
    """Up to four of the images the workflow saves, in a 2 x 2 grid (one image: the whole card)."""
    run_api(api, mappings)
    saved = sorted(output_dir.glob("*.png"))[:4]
    side = THUMBNAIL if len(saved) == 1 else (THUMBNAIL - GAP) // 2
    card = Image.new("RGB", (THUMBNAIL, THUMBNAIL), "white")
    for index, path in enumerate(saved):
        picture = Image.open(path).convert("RGB").resize((side, side), Image.NEAREST)
        card.paste(picture, ((index % 2) * (side + GAP), (index // 2) * (side + GAP)))
    return card


def text_card(lines: list[str]) -> Image.Image:
    card = Image.new("RGB", (THUMBNAIL, THUMBNAIL), (40, 44, 52))
    draw = ImageDraw.Draw(card)
    for k, line in enumerate(lines):
        draw.text((12, 90 + 22 * k), line, fill="white", font=font(14))
    return card


def write_thumbnails(names: list[str] | None = None) -> None:
    """The thumbnail of every workflow, or of the ones ``names`` lists (file stems, e.g. muse_lora)."""
    import json  # noqa: PLC0415
    import tempfile  # noqa: PLC0415

    pack = load_pack()
    paths = sorted((ROOT / "workflows").glob("*.json"))
    unknown = sorted(set(names or ()) - {path.stem for path in paths})
    if unknown:
        raise SystemExit(f"no workflows/<name>.json for {unknown}")
    for path in paths:
        if names and path.stem not in names:
            continue
        target = path.with_suffix(".jpg")
        if path.stem.startswith("meissonic"):
            card = text_card(["Meissonic", path.stem.removeprefix("meissonic_").replace("_", " "),
                              "needs models/muse/Meissonic"])
        else:
            with tempfile.TemporaryDirectory() as scratch:
                core = CoreNodes(ROOT / "example_inputs", Path(scratch))
                api = json.loads((ROOT / "workflows" / "api" / path.name).read_text())
                card = workflow_thumbnail(api, {**core.mappings, **pack.NODE_CLASS_MAPPINGS}, Path(scratch))
        card.save(target, quality=85)
        print(f"{target.relative_to(ROOT)} ({target.stat().st_size // 1024} KB)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-o", "--output", type=Path, default=ROOT / "docs" / "images" / "embedded_grid.png")
    parser.add_argument("--thumbnails", action="store_true", help="write the workflows' template thumbnails instead")
    parser.add_argument("--workflows", nargs="+", metavar="NAME",
                        help="with --thumbnails: only these workflows' (e.g. muse_lora; default: all)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (default 1: on a shared machine more threads can be many times slower)")
    args = parser.parse_args(argv)
    torch.set_num_threads(max(1, args.threads))
    if args.thumbnails:
        write_thumbnails(args.workflows)
        return 0
    start = time.perf_counter()
    torch.manual_seed(SEED)
    pipe = muse_core.load_pipeline(DEFAULT_MODEL_DIR)
    with torch.inference_mode():
        results = [(prompt, *sample(pipe, prompt)) for prompt in PROMPTS]
    native = pipe.native_size
    grid = draw_grid(results, native, pipe.super_resolved_size(native, native)[0])
    args.output.parent.mkdir(parents=True, exist_ok=True)
    grid.quantize(colors=256, method=Image.Quantize.MEDIANCUT).save(args.output, optimize=True)
    print(f"{args.output} ({args.output.stat().st_size // 1024} KB, {time.perf_counter() - start:.1f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
