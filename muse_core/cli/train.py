"""``muse eval`` (prompt accuracy on the shapes benchmark) and ``muse train`` (a cascade, or with ``--lora`` a LoRA,
from a caption folder).

Their heavy modules are imported when the command runs, which keeps ``muse --help`` and the other commands fast.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
from pathlib import Path

import torch

from ..editing import EDIT_ITERATIONS
from ..limits import MAX_EDIT_ITERATIONS, MAX_SEED
from ..output import atomic_output
from ..pipeline import DEFAULT_MODEL_DIR, RERANKER_FOLDER
from ..rerank import load_clip_scorer
from .arguments import UsageError, add_model_options, bounded_float, bounded_int, load_model_folder, model_folder


def add_eval(subparsers) -> None:
    from ..eval import SETTINGS  # noqa: PLC0415  (the shapes data and checker are only needed here)

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
    parser.add_argument("--edit-iterations", type=bounded_int(1, MAX_EDIT_ITERATIONS), default=None,
                        help="mask-free editing iterations (default: the model's sampling.json, else the paper's "
                             f"{EDIT_ITERATIONS}); the other editing settings always come from there")
    parser.add_argument("--guidance", type=bounded_float(0.0), default=None, metavar="G",
                        help="guidance scale of the guided rows (default: the model's sampling.json, else aMUSEd's)")
    parser.add_argument("--seed", type=bounded_int(0, MAX_SEED), default=0)
    parser.add_argument("--chunk-size", "--batch-size", dest="chunk_size", type=bounded_int(1, 256), default=16,
                        metavar="N", help="images sampled at once (default: 16)")
    parser.add_argument("--diagnose", action="store_true",
                        help="instead of the rows: the base model's boundary-token accuracy and boundary infill on "
                             "the single-object prompts, drawn freely and on the token grid (quick gates for a "
                             "training run; docs/evaluation.md)")
    parser.add_argument("--json", type=Path, default=None, metavar="FILE", help="also write the results as JSON")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    add_model_options(parser)
    parser.set_defaults(run=run_eval)


def run_eval(args) -> None:
    from ..eval import evaluate, format_table  # noqa: PLC0415  (see add_eval)

    folder = model_folder(args.model)
    pipe = load_model_folder(folder, args)
    if args.diagnose:
        return run_diagnosis(pipe, args)
    reranker = folder / RERANKER_FOLDER
    scorer = load_clip_scorer(reranker, device=pipe.transformer.device) if reranker.is_dir() else None
    report = evaluate(pipe, scorer, settings=args.settings, limit=args.limit, seed=args.seed,
                      batch_size=args.chunk_size, best_of=args.best_of, edit_iterations=args.edit_iterations,
                      guidance_scale=args.guidance, progress=not args.quiet)
    print(format_table(report))
    if args.json is not None:
        with atomic_output(args.json, overwrite=True) as temporary:
            temporary.write_text(report.to_json())
        print(f"wrote {args.json}")


def run_diagnosis(pipe, args) -> None:
    from ..data.shapes import eval_scenes, grid_twin  # noqa: PLC0415  (see add_eval)
    from ..eval.diagnose import diagnose  # noqa: PLC0415
    from ..eval.run import select  # noqa: PLC0415

    scenes = [scene for scene in select(eval_scenes(), args.limit) if scene.category == "single"]
    # the held-out scenes as drawn, and with the same captions placed as in grid training data (data.shapes)
    geometries = {"free": scenes, **{placement: [grid_twin(scene, placement) for scene in scenes]
                                     for placement in ("aligned", "slots")}}
    results = {}
    for geometry, chosen in geometries.items():
        results[geometry] = diagnose(pipe, chosen, seed=args.seed, batch_size=args.chunk_size,
                                     guidance_scale=args.guidance)
        print(f"{geometry} shapes. {results[geometry].format()}\n")
    if args.json is not None:
        with atomic_output(args.json, overwrite=True) as temporary:
            temporary.write_text(json.dumps({k: dataclasses.asdict(v) for k, v in results.items()}, indent=2))
        print(f"wrote {args.json}")


def add_train(subparsers) -> None:
    from ..training.cascade import PRESETS, STAGES  # noqa: PLC0415  (the training stack is only needed here)
    from ..training.lora import DEFAULT_TARGETS, LoraSettings, lora_config  # noqa: PLC0415  (the same)

    parser = subparsers.add_parser(
        "train", help="train a Muse cascade, or a LoRA, on an image-caption folder",
        description="Train VQ tokenizers, a T5 text encoder with the base transformer, the super-res transformer "
                    "and a CLIP reranker into a model folder (-o); or, with --lora, fine-tune a LoRA of a model's "
                    "base transformer. Interrupted runs resume. Under torchrun it trains data-parallel "
                    "(e.g. torchrun --nproc_per_node 8 -m muse_core train ...).")
    parser.add_argument("--data", type=Path, default=None, metavar="FOLDER",
                        help="images + captions.jsonl or captions.txt (default for a cascade: generate the shapes dataset)")
    parser.add_argument("-o", "--output", type=Path, default=None, metavar="FOLDER",
                        help="the model folder to write (a cascade)")
    parser.add_argument("--work", type=Path, default=None, metavar="FOLDER",
                        help="checkpoints, token caches and generated data (default: OUTPUT.work, or the LoRA FILE.work)")
    parser.add_argument("--preset", choices=tuple(PRESETS), default="shipped",
                        help="model sizes and schedules (default: shipped = the built-in model's recipe)")
    parser.add_argument("--stages", nargs="+", choices=STAGES, default=list(STAGES), metavar="STAGE",
                        help=f"stages to train (default: all): {', '.join(STAGES)}")
    parser.add_argument("--seed", type=bounded_int(0, 2**31 - 1), default=0)
    parser.add_argument("--threads", type=bounded_int(1, 1024), default=None, metavar="N",
                        help="torch threads per process (default: the machine's cores divided by torchrun's "
                             "processes on it; on a busy machine fewer threads are faster)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")

    defaults, settings = lora_config(), LoraSettings()
    lora = parser.add_argument_group("LoRA fine-tuning", "--lora FILE trains a LoRA on --data instead of a cascade "
                                     "(--work, --seed, --threads and --quiet apply too)")
    lora.add_argument("--lora", type=Path, default=None, metavar="FILE",
                      help="the LoRA to write (.safetensors, diffusers' aMUSEd format: muse --lora, the LoRA Loader "
                           "node and diffusers read it)")
    lora.add_argument("--base", type=Path, default=None, metavar="FOLDER",
                      help=f"the aMUSEd / Muse model folder to fine-tune (default: the built-in model, {DEFAULT_MODEL_DIR})")
    lora.add_argument("--lora-rank", type=bounded_int(1, 1024), default=settings.rank, metavar="R",
                      help=f"rank of the adapter (default: {settings.rank})")
    lora.add_argument("--lora-alpha", type=positive_float, default=settings.alpha, metavar="ALPHA",
                      help=f"the adapter is scaled by alpha / rank; the file has it folded in (default: {settings.alpha:g})")
    lora.add_argument("--lora-targets", nargs="+", default=list(DEFAULT_TARGETS), metavar="NAME",
                      help=f"the layers to adapt, by name or dotted tail (default: {' '.join(DEFAULT_TARGETS)})")
    lora.add_argument("--steps", type=bounded_int(1, 10_000_000), default=defaults.steps,
                      help=f"optimizer steps (default: {defaults.steps})")
    lora.add_argument("--batch-size", type=bounded_int(1, 4096), default=defaults.batch_size, metavar="N",
                      help=f"images per step and process (default: {defaults.batch_size})")
    lora.add_argument("--lr", type=positive_float, default=defaults.lr,
                      help=f"peak learning rate, warmup then cosine (default: {defaults.lr:g})")
    parser.set_defaults(run=run_train)


def positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"must be a number > 0, got {text}")
    return value


def run_train(args) -> None:
    from ..training.loop import training_threads  # noqa: PLC0415  (see add_train)

    if (args.output is None) == (args.lora is None):
        raise UsageError("give -o FOLDER to train a cascade, or --lora FILE to fine-tune a LoRA (one of the two).")
    if args.data is not None and not args.data.is_dir():
        raise UsageError(f"--data {args.data}: no such folder; give a folder with images and captions.jsonl.")
    torch.set_num_threads(training_threads(args.threads))
    try:
        if args.lora is not None:
            run_lora_training(args)
        else:
            run_cascade_training(args)
    except FileNotFoundError as error:  # a data folder without its caption file, or a listed image missing
        raise UsageError(str(error)) from None


def run_cascade_training(args) -> None:
    from ..training import cascade  # noqa: PLC0415  (see add_train)

    work = args.work or args.output.with_name(args.output.name + ".work")
    out = cascade.train_cascade(args.output, work, args.preset, data_dir=args.data, stages=args.stages,
                                seed=args.seed, progress=not args.quiet)
    print(f"wrote {out}")


def run_lora_training(args) -> None:
    from ..training import lora  # noqa: PLC0415  (see add_train)

    if args.data is None:
        raise UsageError("--lora needs --data FOLDER: the images and captions to fine-tune on.")
    base = args.base or DEFAULT_MODEL_DIR
    if not base.is_dir():
        raise UsageError(f"--base {base}: no such folder; give an aMUSEd or Muse model folder "
                         "(transformer/, vqvae/, text_encoder/, tokenizer/).")
    settings = lora.LoraSettings(args.lora_rank, args.lora_alpha, tuple(args.lora_targets))
    try:
        lora.import_peft()
    except ImportError as error:
        raise UsageError(str(error)) from None
    config = lora.lora_config(args.steps, args.batch_size, args.lr, args.seed)
    lora.train_lora(base, args.data, args.lora, settings, config, work_dir=args.work, progress=not args.quiet)
    print(f"wrote {args.lora}")
