"""Train the example LoRA the muse_lora workflow loads (``example_inputs/muse_example_lora.safetensors``).

A style LoRA of the embedded model: 16 shapes images on a navy background whose captions do not mention the
background, so the LoRA learns navy backgrounds as a style (the base model picks a background of its own when
the prompt names none; with the LoRA at strength 1 a named background turns navy too: with the embedded
v2, its base with the inpainting phase, seeds 0-3 of "a red circle on a green background" and "a yellow
square on a white background" came out on navy 6 times of 8). It is trained with ``muse train --lora``, rank 4, on one thread;
one to three minutes on the 2-core CPU (258 KB). Run again (after deleting the file) to retrain it::

    python tools/make_example_lora.py
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # `python tools/make_example_lora.py` puts only tools/ itself on sys.path

from muse_core import cli  # noqa: E402  (after sys.path.insert)
from muse_core.data.shapes import render, training_scenes  # noqa: E402  (after sys.path.insert)
from muse_core.training.cascade import PRESETS  # noqa: E402  (after sys.path.insert)

OUT = ROOT / "example_inputs" / "muse_example_lora.safetensors"
BACKGROUND = "navy"
IMAGES, SEED, SIZE = 16, 21, 64
TRAIN = ["--lora-rank", "4", "--lora-alpha", "8", "--lora-targets", "to_q", "to_k", "to_v", "to_out.0",
         "--steps", "400", "--batch-size", "8", "--lr", "2e-3", "--seed", "0", "--threads", "1"]


def write_data(folder: Path) -> list[str]:
    """The training images and captions (captions.jsonl): scenes on ``BACKGROUND``, captions without it."""
    (folder / "images").mkdir(parents=True)
    records = []
    # laid out as the embedded model's own training data, so that the LoRA learns the background only
    for scene, _ in training_scenes(4000, SEED, PRESETS["shipped"].shape_placement):
        if scene.background != BACKGROUND:
            continue
        scene = scene.replace(background_mentioned=False)
        name = f"images/{len(records):02d}.png"
        Image.fromarray(render(scene, SIZE)).save(folder / name)
        records.append({"image": name, "caption": scene.caption})
        if len(records) == IMAGES:
            break
    (folder / "captions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    return [r["caption"] for r in records]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-o", "--output", type=Path, default=OUT)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        data = Path(scratch) / "data"
        captions = write_data(data)
        print(f"{len(captions)} images on a {BACKGROUND} background, e.g. {captions[0]!r}")
        code = cli.main(["train", "--lora", str(args.output), "--data", str(data), "--work", str(Path(scratch) / "work"),
                         *TRAIN, "--quiet"])
    if code:
        raise SystemExit(code)


if __name__ == "__main__":
    main()
