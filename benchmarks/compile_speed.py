"""torch.compile of the per-step forward (``MuseModel.compile_steps``, the loaders' ``compile``, ``muse --compile``)
against eager mode, side by side in one process, on the same model.

Models (``--models``):

- ``embedded``: the embedded model's base U-ViT (``muse_core/default_model``, loaded with ``load_pipeline``),
  64 px, its ``sampling.json`` settings (24 steps), the prompt encoded by its T5;
- ``embedded-sr``: the embedded model's super-res transformer, 64 -> 128 px, 8 steps, on low-res ids the base
  model made (eager);
- ``amused-256``: the amused-256 transformer config (``benchmarks/amused_speed.py``) with seeded random weights,
  256 px, aMUSEd's 12 steps, random 77 x 768 text states given directly (no text encoder, no VQ).

For each model the eager forward and the compiled one (``compile_steps``, then kept side by side) run:

- the compile time: the first compiled step's wall time less a compiled step's median (inductor's compilation
  of the forward for this batch and grid);
- seconds per guided step (a transformer pass on batch 2 x images, the guidance mix), ``--steps`` of each,
  alternating eager / compiled after the compile; the medians and eager / compiled;
- whole generations (``--repeats`` of each, alternating): their medians, whether the ids are equal, and the
  largest logit difference of one step; "break-even" is the number of steps after which the compile has paid
  for itself (compile time / seconds saved per step).

Usage::

    python benchmarks/compile_speed.py                                    # embedded, fp32, CPU
    python benchmarks/compile_speed.py --models embedded embedded-sr amused-256 --threads 1
    python benchmarks/compile_speed.py --device cuda --dtype bf16 --models embedded embedded-sr amused-256
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks import machine  # noqa: E402
from benchmarks.amused_speed import CONFIGS as AMUSED_CONFIGS  # noqa: E402
from benchmarks.amused_speed import FACTOR as AMUSED_FACTOR  # noqa: E402
from benchmarks.amused_speed import text_inputs  # noqa: E402
from muse_core.models.uvit import MaskedTokenUViT, UViTConfig  # noqa: E402
from muse_core.pipeline import DEFAULT_MODEL_DIR, load_pipeline  # noqa: E402
from muse_core.sampling import SUPER_RES_STEPS, GuidedModel, SamplingOptions, encode_prompts, generate, super_resolve  # noqa: E402
from muse_core.sampling.generate import micro_conditions  # noqa: E402
from muse_core.text import EncodedPrompts, TextConditioning  # noqa: E402

MODELS = ("embedded", "embedded-sr", "amused-256")
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
PROMPT = "two red circles on a blue background"


@dataclasses.dataclass
class Case:
    """One model to compile: its guided step on a fixed input, and a whole generation."""

    name: str
    model: torch.nn.Module
    guided: GuidedModel
    step_ids: torch.Tensor  # [batch, h, w]: the guided step doubles it
    guidance: float
    size: str
    steps: int  # of a generation
    generate: object  # () -> ids

    def step(self) -> torch.Tensor:
        return self.guided(self.step_ids, self.guidance, 0)


def guided_step_inputs(model, cond, uncond, micro, grid, lowres_context=None):
    guided = GuidedModel(model, cond, uncond, micro, lowres_context=lowres_context)
    ids = torch.full((len(cond), *grid), model.mask_token_id, dtype=torch.long, device=model.device)
    return guided, ids


def embedded_cases(names, dtype, device, batch) -> list[Case]:
    pipe = load_pipeline(DEFAULT_MODEL_DIR, dtype=dtype, device=device)
    options = pipe.sampling_options()
    size, factor = pipe.native_size, pipe.vq.downsample_factor
    cond, uncond = encode_prompts(pipe.text_encoder, PROMPT, None, batch, options.guided)

    def base():
        return generate(pipe.transformer, pipe.text_encoder, PROMPT, height=size, width=size, downsample_factor=factor,
                        num_images_per_prompt=batch, options=options)

    cases = []
    if "embedded" in names:
        guided, ids = guided_step_inputs(pipe.transformer, cond, uncond, micro_conditions(size, size, batch, options),
                                         (size // factor, size // factor))
        cases.append(Case("embedded", pipe.transformer, guided, ids, options.guidance_scale, f"{size} px",
                          options.steps, base))
    if "embedded-sr" in names:
        with torch.no_grad():
            lowres = base()
        sr_options = pipe.sampling_options(steps=SUPER_RES_STEPS)
        scale, sr_factor = pipe.super_res_grid_scale, pipe.super_res_vq.downsample_factor
        sr_size = scale * lowres.shape[-1] * sr_factor
        with torch.no_grad():
            context = pipe.super_res.encode_lowres(lowres)
        guided, ids = guided_step_inputs(pipe.super_res, cond, uncond, micro_conditions(sr_size, sr_size, batch, sr_options),
                                         (sr_size // sr_factor, sr_size // sr_factor), lowres_context=context)

        def super_res():
            return super_resolve(pipe.super_res, pipe.text_encoder, lowres, PROMPT, grid_scale=scale,
                                 downsample_factor=sr_factor, options=sr_options)

        cases.append(Case("embedded-sr", pipe.super_res, guided, ids, sr_options.guidance_scale,
                          f"{size} -> {sr_size} px", sr_options.steps, super_res))
    return cases


def amused_case(dtype, device, batch) -> Case:
    """The amused-256 transformer config with seeded random weights (no file: no diffusers needed)."""
    torch.manual_seed(0)
    model = MaskedTokenUViT(UViTConfig(**AMUSED_CONFIGS["256"]))
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.normal_(0, 0.02)
    model = model.to(device, dtype).eval()
    text = text_inputs()
    mask = torch.ones(1, text["hidden"].shape[1], dtype=torch.bool)
    prompts = EncodedPrompts(TextConditioning(text["hidden"], mask, text["pooled"]),
                             TextConditioning(text["negative_hidden"], mask, text["negative_pooled"]), ["x"])
    options = SamplingOptions()
    size = AMUSED_CONFIGS["256"]["sample_size"] * AMUSED_FACTOR
    cond, uncond = encode_prompts(None, prompts, None, batch, options.guided)
    grid = (size // AMUSED_FACTOR, size // AMUSED_FACTOR)
    guided, ids = guided_step_inputs(model, cond, uncond, micro_conditions(size, size, batch, options), grid)

    def run():
        return generate(model, None, prompts, height=size, width=size, downsample_factor=AMUSED_FACTOR,
                        num_images_per_prompt=batch, options=options)

    return Case("amused-256", model, guided, ids, options.guidance_scale, f"{size} px", options.steps, run)


@contextlib.contextmanager
def forward(model, function):
    """Run ``model`` with ``function`` as its per-step forward (the eager method or the compiled one)."""
    before = model.__dict__.get("forward_with_text")
    model.forward_with_text = function
    try:
        yield
    finally:
        if before is None:
            del model.forward_with_text
        else:
            model.forward_with_text = before


def timed(work, device) -> tuple[float, torch.Tensor]:
    machine.synchronize(device)
    start = time.perf_counter()
    with torch.no_grad():
        result = work()
    machine.synchronize(device)
    return time.perf_counter() - start, result


def benchmark(case: Case, steps: int, repeats: int, device: str, backend: str) -> dict:
    model = case.model
    eager = model.forward_with_text
    timed(case.step, device)  # warm-up
    if backend == "inductor":
        model.compile_steps()  # what the loaders' compile widget and `muse --compile` call
    else:  # another backend (the tests use "eager": dynamo's tracing without inductor, quick)
        model.forward_with_text = torch.compile(eager, backend=backend)
    compiled = model.forward_with_text
    snapshot = machine.cpu_snapshot()
    with forward(model, compiled):
        first, compiled_logits = timed(case.step, device)
    with forward(model, eager):
        _, eager_logits = timed(case.step, device)
    seconds = {"eager": [], "compiled": []}
    for _ in range(steps):
        for mode, function in (("eager", eager), ("compiled", compiled)):
            with forward(model, function):
                seconds[mode].append(timed(case.step, device)[0])
    generation = {"eager": [], "compiled": []}
    ids = {}
    for _ in range(repeats):
        for mode, function in (("eager", eager), ("compiled", compiled)):
            with forward(model, function):
                elapsed, ids[mode] = timed(case.generate, device)
            generation[mode].append(elapsed)
    others = machine.others_cpu_share(snapshot, machine.cpu_snapshot())
    step = {mode: statistics.median(values) for mode, values in seconds.items()}
    saved = step["eager"] - step["compiled"]
    compile_seconds = max(0.0, first - step["compiled"])
    return {
        "model": case.name, "size": case.size, "batch": len(case.step_ids), "dtype": str(model.dtype).removeprefix("torch."),
        "device": device, "backend": backend, "compile_seconds": compile_seconds, "first_compiled_step_seconds": first,
        "step_seconds": step, "all_step_seconds": seconds, "step_speedup": step["eager"] / step["compiled"],
        "generation_steps": case.steps, "generation_seconds": {m: statistics.median(v) for m, v in generation.items()},
        "all_generation_seconds": generation, "ids_equal": bool(torch.equal(ids["eager"], ids["compiled"])),
        "logits_max_abs_diff": float((compiled_logits - eager_logits).abs().max()),
        "break_even_steps": compile_seconds / saved if saved > 0 else None, "others_cpu_share": others,
    }


def table(rows: list[dict]) -> str:
    lines = ["| model | size | batch | dtype | compile (s) | eager (ms/step) | compiled (ms/step) | eager / compiled "
             "| generation eager / compiled (s) | ids equal | logits max abs diff | break-even (steps) | CPU used by others |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        step, gen = r["step_seconds"], r["generation_seconds"]
        even = "never" if r["break_even_steps"] is None else f"{r['break_even_steps']:.0f}"
        others = "n/a" if r["others_cpu_share"] is None else f"{100 * r['others_cpu_share']:.0f}%"
        lines.append(
            f"| {r['model']} | {r['size']} | {r['batch']} | {r['dtype']} | {r['compile_seconds']:.1f} | "
            f"{1e3 * step['eager']:.1f} | {1e3 * step['compiled']:.1f} | {r['step_speedup']:.2f}x | "
            f"{gen['eager']:.2f} / {gen['compiled']:.2f} ({r['generation_steps']} steps) | "
            f"{'yes' if r['ids_equal'] else 'NO'} | {r['logits_max_abs_diff']:.1e} | {even} | {others} |")
    return "\n".join(lines)


GPU_COMMAND = f"python benchmarks/compile_speed.py --device cuda --dtype bf16 --models {' '.join(MODELS)} --json compile_cuda.json"


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=["embedded"], choices=MODELS)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", choices=["cpu", "cuda"])
    parser.add_argument("--dtype", default="fp32", choices=sorted(DTYPES), help="the transformers' dtype (default fp32)")
    parser.add_argument("--batch", type=int, default=1, help="images per generation (a guided step runs 2 x batch)")
    parser.add_argument("--steps", type=int, default=10, help="measured steps of each, after the compile")
    parser.add_argument("--repeats", type=int, default=2, help="measured generations of each")
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's own choice)")
    parser.add_argument("--backend", default="inductor", help="torch.compile backend (default inductor, what the pack uses)")
    parser.add_argument("--json", type=Path, help="also write every measurement to this file")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    dtype = DTYPES[args.dtype]
    cases = embedded_cases(args.models, dtype, args.device, args.batch) if {"embedded", "embedded-sr"} & set(args.models) else []
    if "amused-256" in args.models:
        cases.append(amused_case(dtype, args.device, args.batch))
    rows = []
    for case in cases:
        rows.append(benchmark(case, args.steps, args.repeats, args.device, args.backend))
        print(table(rows[-1:]).splitlines()[-1], flush=True)
    name = machine.machine_name(args.device)
    print(f"\n{name}, torch {torch.__version__}, {time.strftime('%Y-%m-%d')}, backend {args.backend}\n")
    print(table(rows))
    if args.device == "cpu":
        print(f"\nOn a GPU:\n    {GPU_COMMAND}")
    if args.json:
        args.json.write_text(json.dumps({"machine": name, "torch": torch.__version__, "rows": rows}, indent=2))
    return rows


if __name__ == "__main__":
    main()
