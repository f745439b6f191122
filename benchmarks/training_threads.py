"""Seconds per training step of the shipped base transformer (+ its T5) for each torch thread count.

The embedded model's base stage as `muse train` runs it (MaskedTokenObjective, AdamW, batch 32, 16 x 16
tokens), on random token grids and shapes captions. The thread counts alternate, ``--repeats`` rounds of
``--steps`` steps each after a warm-up, so a load that comes and goes on a shared machine hits every count;
the median per count is reported. Run it on an idle machine and with the other cores busy
(``--busy N`` starts N spinning processes): the best count differs.

    python benchmarks/training_threads.py --threads 1 2 --busy 1
"""

from __future__ import annotations

import argparse
import multiprocessing
import statistics
import time

import torch

from muse_core.data.shapes import training_scenes
from muse_core.models.uvit import MaskedTokenUViT
from muse_core.training.cascade import PRESETS, transformer_config
from muse_core.training.muse import MaskedTokenObjective
from muse_core.training.text_encoder import new_t5_encoder
from muse_core.training.tokenizer import build_word_tokenizer


def spin() -> None:
    while True:
        pass


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--steps", type=int, default=3, help="steps per timed round")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--busy", type=int, default=0, help="spinning processes to start (a loaded machine)")
    args = parser.parse_args()

    preset = PRESETS["shipped"]
    batch_size = preset.transformer.batch_size
    generator = torch.Generator().manual_seed(0)
    captions = [scene.caption for scene, _ in training_scenes(batch_size, seed=0)]
    tokenizer = build_word_tokenizer(captions, "t5", max_length=64)
    text_encoder = new_t5_encoder(tokenizer, preset.text_width, preset.text_layers, max(1, preset.text_width // 64),
                                  2 * preset.text_width)
    grid = preset.base_size // 4
    model = MaskedTokenUViT(transformer_config(preset, grid, preset.layers, preset.base_positions))
    objective = MaskedTokenObjective(model, text_encoder, preset.base_size, train_text_encoder=True)
    optimizer = torch.optim.AdamW(objective.parameters(), lr=1e-4)
    batch = {"ids": torch.randint(0, preset.codebook_size, (batch_size, grid, grid), generator=generator),
             "captions": captions}

    def step() -> None:
        loss, _ = objective(batch)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    spinners = [multiprocessing.Process(target=spin, daemon=True) for _ in range(args.busy)]
    for process in spinners:
        process.start()
    times = {count: [] for count in args.threads}
    try:
        for count in args.threads:  # warm-up
            torch.set_num_threads(count)
            step()
        for _ in range(args.repeats):
            for count in args.threads:
                torch.set_num_threads(count)
                start = time.perf_counter()
                for _ in range(args.steps):
                    step()
                times[count].append((time.perf_counter() - start) / args.steps)
    finally:
        for process in spinners:
            process.terminate()
    print(f"busy processes: {args.busy}; median s/step over {args.repeats} rounds of {args.steps} steps")
    for count, values in times.items():
        print(f"  {count} thread(s): {statistics.median(values):.3f} s/step (min {min(values):.3f}, max {max(values):.3f})")


if __name__ == "__main__":
    main()
