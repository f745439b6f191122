"""Our sampler against diffusers' AmusedPipeline, side by side in one process, on the same random weights.

For each configuration (amused-256 / amused-512 transformer config, the real aMUSEd VQ, 12 steps,
guidance 10, batch 1 / 4, transformer in fp32 / bf16, VQ in fp32) the two implementations run in
alternation, ``--repeats`` times each, after one warm-up run each. Text embeddings are random tensors
given directly (no tokenizer or text encoder). Reported per configuration:

- median wall time of each, and diffusers / ours;
- whether the generated ids are identical (fp32, batch 1; at batch > 1 the two draw random numbers
  differently by design: ours gives image k the seed ``seed + k``);
- peak memory of each, measured in a fresh process that loads the weights from disk and generates once
  (CPU: peak resident set size; CUDA: ``torch.cuda.max_memory_allocated``);
- our achieved FLOP/s (FLOPs counted by ``torch.utils.flop_counter`` over the transformer passes and the
  VQ decode) as a share of what a large matrix product of the same dtype reaches on the same device in the
  same run, before and after the timed runs, the faster kept ("% of matmul", ``benchmarks/machine.py``).

Usage::

    python benchmarks/amused_speed.py                       # amused-256, batch 1, fp32 and bf16, CPU
    python benchmarks/amused_speed.py --configs 256 512 --batches 1 4 --device cuda --json results.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks import machine  # noqa: E402
from muse_core.loading import load_model  # noqa: E402
from muse_core.models.uvit import MaskedTokenUViT  # noqa: E402
from muse_core.models.vq import VQTokenizer  # noqa: E402
from muse_core.sampling import SamplingOptions, generate  # noqa: E402
from muse_core.text import EncodedPrompts, TextConditioning  # noqa: E402

TRANSFORMER_256 = dict(
    hidden_size=1024, use_bias=False, cond_embed_dim=768, micro_cond_encode_dim=256, micro_cond_embed_dim=1280,
    encoder_hidden_size=768, vocab_size=8256, codebook_size=8192, in_channels=768, block_out_channels=768,
    num_res_blocks=3, downsample=False, upsample=False, block_num_heads=12, num_hidden_layers=22,
    num_attention_heads=16, intermediate_size=2816, layer_norm_eps=1e-6, sample_size=16,
)
CONFIGS = {
    "256": dict(TRANSFORMER_256),
    "512": {**TRANSFORMER_256, "downsample": True, "upsample": True, "sample_size": 32},
}
VQ_CONFIG = dict(
    block_out_channels=[128, 256, 256, 512, 768], down_block_types=["DownEncoderBlock2D"] * 5,
    up_block_types=["UpDecoderBlock2D"] * 5, layers_per_block=2, latent_channels=64, norm_num_groups=32,
    num_vq_embeddings=8192, vq_embed_dim=None, mid_block_add_attention=False, lookup_from_codebook=True,
    force_upcast=True, norm_type="group", act_fn="silu", scaling_factor=0.18215,
)
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
TEXT_LENGTH, TEXT_WIDTH = 77, 768
STEPS, GUIDANCE, FACTOR = 12, 10.0, 16


# ---- weights and inputs -------------------------------------------------------------------------------

def write_weights(folder: Path, config: str) -> None:
    """Random weights of the transformer config and the real VQ config, in diffusers' folder layout."""
    from diffusers import UVit2DModel, VQModel  # noqa: PLC0415

    torch.manual_seed(0)
    transformer = UVit2DModel(**CONFIGS[config])
    with torch.no_grad():
        for parameter in transformer.parameters():
            parameter.normal_(0, 0.02)  # default init zeroes some layers; random everywhere is a fairer test
    transformer.save_pretrained(folder / "transformer")
    VQModel(**VQ_CONFIG).save_pretrained(folder / "vqvae")


def text_inputs(batch: int = 1) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    hidden = torch.randn(2, TEXT_LENGTH, TEXT_WIDTH, generator=generator)
    pooled = torch.randn(2, TEXT_WIDTH, generator=generator)
    return {"hidden": hidden[1:], "pooled": pooled[1:], "negative_hidden": hidden[:1], "negative_pooled": pooled[:1]}


class Ours:
    name = "ours"

    def __init__(self, folder: Path, dtype: torch.dtype, device: str):
        self.model = load_model(MaskedTokenUViT, folder / "transformer", dtype=dtype, device=device)
        self.vq = load_model(VQTokenizer, folder / "vqvae", dtype=torch.float32, device=device)
        text = text_inputs()
        mask = torch.ones(1, TEXT_LENGTH, dtype=torch.bool)
        self.prompts = EncodedPrompts(TextConditioning(text["hidden"], mask, text["pooled"]),
                                      TextConditioning(text["negative_hidden"], mask, text["negative_pooled"]), ["x"])

    def __call__(self, batch: int, size: int) -> tuple[torch.Tensor, torch.Tensor]:
        ids = generate(self.model, None, self.prompts, height=size, width=size, downsample_factor=FACTOR,
                       num_images_per_prompt=batch, options=SamplingOptions(steps=STEPS, guidance_scale=GUIDANCE))
        return ids, self.vq.decode(ids)


class Diffusers:
    name = "diffusers"

    def __init__(self, folder: Path, dtype: torch.dtype, device: str):
        from diffusers import AmusedScheduler, UVit2DModel, VQModel  # noqa: PLC0415
        from diffusers.pipelines.deprecated.amused import AmusedPipeline  # noqa: PLC0415

        transformer = UVit2DModel.from_pretrained(folder / "transformer", torch_dtype=dtype).to(device)
        vqvae = VQModel.from_pretrained(folder / "vqvae").to(device)
        scheduler = AmusedScheduler(mask_token_id=transformer.config.vocab_size - 1)
        self.pipe = AmusedPipeline(vqvae=vqvae, tokenizer=None, text_encoder=None, transformer=transformer,
                                   scheduler=scheduler)
        self.pipe.set_progress_bar_config(disable=True)
        self.text = {k: v.to(device, dtype) for k, v in text_inputs().items()}
        self.device = device

    def __call__(self, batch: int, size: int) -> tuple[torch.Tensor, torch.Tensor]:
        final = {}
        images = self.pipe(
            prompt_embeds=self.text["pooled"], encoder_hidden_states=self.text["hidden"],
            negative_prompt_embeds=self.text["negative_pooled"],
            negative_encoder_hidden_states=self.text["negative_hidden"], num_images_per_prompt=batch,
            height=size, width=size, num_inference_steps=STEPS, guidance_scale=GUIDANCE, output_type="pt",
            generator=torch.Generator(self.device).manual_seed(0),
            callback=lambda step, timestep, latents: final.update(ids=latents),
        ).images
        return final["ids"], images


IMPLEMENTATIONS = {"ours": Ours, "diffusers": Diffusers}


# ---- measurements -------------------------------------------------------------------------------------

def timed(run, batch: int, size: int, device: str) -> tuple[float, torch.Tensor]:
    machine.synchronize(device)
    start = time.perf_counter()
    with torch.inference_mode():
        ids, _ = run(batch, size)
    machine.synchronize(device)
    return time.perf_counter() - start, ids.cpu()


def count_flops(ours: Ours, batch: int, size: int) -> float:
    """FLOPs of one generation: STEPS guided transformer passes (batch x 2) and one VQ decode."""
    grid = size // FACTOR
    ids = torch.full((2 * batch, grid, grid), ours.model.mask_token_id, device=ours.model.device)
    text = TextConditioning.cat([ours.prompts.negative, ours.prompts.positive]).repeat_interleave(batch)
    text = text.to(ours.model.device, ours.model.dtype)
    micro = torch.tensor([[size, size, 0, 0, 6.0]], device=ours.model.device, dtype=ours.model.dtype).repeat(2 * batch, 1)
    with torch.inference_mode():
        _, transformer_flops = machine.count_flops(
            lambda: ours.model(ids, text.hidden_states, text.pooled, micro, text.attention_mask))
        _, vq_flops = machine.count_flops(lambda: ours.vq.decode(ids[:batch].clamp(max=ours.vq.codebook_size - 1)))
    return STEPS * transformer_flops + vq_flops


def child_peak_memory(folder: Path, implementation: str, dtype: str, batch: int, size: int, device: str) -> int:
    """Peak bytes of a fresh process that loads one implementation and generates once."""
    return int(machine.memory_child_output(__file__, implementation, folder, dtype, batch, size, device))


def memory_child(implementation: str, folder: str, dtype: str, batch: str, size: str, device: str) -> None:
    run = IMPLEMENTATIONS[implementation](Path(folder), DTYPES[dtype], device)
    with torch.inference_mode():
        run(int(batch), int(size))
    machine.synchronize(device)
    print(machine.peak_memory_bytes(device))


def benchmark(config: str, dtype: str, batch: int, repeats: int, device: str, work: Path) -> dict:
    folder = work / f"amused-{config}"
    if not (folder / "transformer").is_dir():
        write_weights(folder, config)
    size = CONFIGS[config]["sample_size"] * FACTOR
    runs = [IMPLEMENTATIONS[name](folder, DTYPES[dtype], device) for name in ("ours", "diffusers")]
    snapshot = machine.cpu_snapshot()
    matmul = machine.matmul_rate(DTYPES[dtype], device)
    times = {run.name: [] for run in runs}
    ids = {}
    for repeat in range(repeats + 1):  # the first round warms up
        for run in runs:
            seconds, ids[run.name] = timed(run, batch, size, device)
            if repeat:
                times[run.name].append(seconds)
    median = {name: statistics.median(values) for name, values in times.items()}
    flops = count_flops(runs[0], batch, size)
    matmul = max(matmul, machine.matmul_rate(DTYPES[dtype], device), key=lambda rate: rate["flops_per_s"])
    others = machine.others_cpu_share(snapshot, machine.cpu_snapshot())
    del runs
    memory = {name: child_peak_memory(folder, name, dtype, batch, size, device) for name in IMPLEMENTATIONS}
    identical = bool(torch.equal(ids["ours"], ids["diffusers"])) if batch == 1 else None
    return {
        "config": f"amused-{config}", "size": size, "batch": batch, "dtype": dtype, "device": device,
        "steps": STEPS, "repeats": repeats, "seconds": median, "all_seconds": times,
        "speedup": median["diffusers"] / median["ours"], "ids_identical": identical,
        "peak_memory_bytes": memory, "flops": flops, "achieved_flops_per_s": flops / median["ours"],
        "matmul_flops_per_s": matmul["flops_per_s"], "matmul_source": matmul["source"], "others_cpu_share": others,
    }


def table(rows: list[dict]) -> str:
    lines = ["| config | batch | dtype | ours (s) | diffusers (s) | diffusers / ours | ids identical "
             "| peak mem ours / diffusers (GiB) | TFLOP/s ours / matmul (%) |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        identical = {True: "yes", False: "NO", None: "n/a (batch RNG)"}[r["ids_identical"]] if r["dtype"] == "fp32" else "n/a (bf16)"
        mem = r["peak_memory_bytes"]
        lines.append(
            f"| {r['config']} | {r['batch']} | {r['dtype']} | {r['seconds']['ours']:.2f} | {r['seconds']['diffusers']:.2f} | "
            f"{r['speedup']:.2f}x | {identical} | {mem['ours'] / 2**30:.2f} / {mem['diffusers'] / 2**30:.2f} | "
            f"{machine.percent_of_matmul(r['achieved_flops_per_s'], r['matmul_flops_per_s'])} |"
        )
    return "\n".join(lines)


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--memory-child":
        memory_child(*sys.argv[2:])
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--configs", nargs="+", default=["256"], choices=sorted(CONFIGS))
    parser.add_argument("--batches", nargs="+", type=int, default=[1])
    parser.add_argument("--dtypes", nargs="+", default=["fp32", "bf16"], choices=sorted(DTYPES))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", choices=["cpu", "cuda"])
    parser.add_argument("--work", type=Path, help="folder for the random weights (default: a temporary folder)")
    parser.add_argument("--json", type=Path, help="also write every measurement to this file")
    args = parser.parse_args()

    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        work = args.work or Path(scratch)
        for config in args.configs:
            for batch in args.batches:
                for dtype in args.dtypes:
                    rows.append(benchmark(config, dtype, batch, args.repeats, args.device, work))
                    print(table(rows[-1:]).splitlines()[-1], flush=True)
    name = machine.machine_name(args.device)
    print(f"\n{name}, torch {torch.__version__}, {time.strftime('%Y-%m-%d')}; matmul: {machine.matmul_description(args.device)}\n")
    print(table(rows))
    if args.json:
        args.json.write_text(json.dumps({"machine": name, "torch": torch.__version__, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
