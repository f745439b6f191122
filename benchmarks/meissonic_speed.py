"""Our Meissonic transformer against the reference code (github viiika/Meissonic ``src/``), one guided
decoding step at a time, side by side in one process, on the same random weights.

One "step" is what each pipeline does per decoding step of a 1024 px image: one transformer pass on batch 2
(unconditional + conditional; random text states ``[2, 77, 1024]`` and pooled vectors ``[2, 1024]`` given
directly, no text encoder; micro-conditions ``[w, h, 0, 0, 6]``), the guidance mix (scale 9) and the unmask
step of a 48-step schedule.

- ours: ``text_context`` once (as our sampler does per generation), then per step ``forward_with_text(ids,
  context, timestep)`` and ``muse_core.sampling.sampler.unmask_step``;
- reference: ``Transformer2DModel.forward`` called as its ``src/pipeline.py`` calls it (``img_ids`` from
  ``_prepare_latent_image_ids``, ``txt_ids`` zeros, a ``long`` timestep tensor: the text projection and the
  conditioning vector are recomputed inside every pass), then ``src/scheduler.py`` ``Scheduler.step``.

Its RoPE ids: the pipeline's rule (halve the token grid at 1024 px, not at other sizes) is right for Meissonic
only at 1024 px; at other sizes the ids of the grid the blocks see are passed, as the rule would at 1024 px.

The weights (real ``MeissonicConfig()`` = the hub's Meissonic, 1B parameters) are random, written once in the
hub's folder layout; ours loads them with ``load_model``, the reference gets a copy of our state dict (the
names are the same). Both run in the same dtype; after one warm-up step each the two alternate,
``--steps`` steps each, every step from the same half-masked token grid. Reported per size and dtype:

- median seconds per step of each, reference / ours, and the projected time of a 48-step image
  (median x 48, Meissonic's default step count; "1024 px at 48 steps");
- the largest absolute difference between the two logits of the same step (and whether the next ids are
  the same: both draw from a generator seeded alike);
- the peak memory of each in a fresh process that loads the weights from disk (ours: ``load_model``;
  reference: ``Transformer2DModel.from_pretrained``) and runs one step: over the whole process, and during
  the step alone (CPU: VmHWM, reset after loading; CUDA: ``torch.cuda.max_memory_allocated``);
- our FLOP/s (``torch.utils.flop_counter``, one step) against a large matrix product of the same dtype
  measured on the same device in the same run, before and after the steps, the faster kept
  (``benchmarks/machine.py``);
- on CPU, the share of the cores other processes (and virtual machines) used meanwhile: on a shared machine,
  how disturbed the row's timings are.

The reference needs diffusers 0.32.2 and transformers 4.46.3; keep them in a folder of their own (``--site``),
which this script puts first on ``sys.path``, then the checkout (``--reference``), only when ``--reference``
is given, and only in its own process: nothing else in the project imports the reference. Without
``--reference`` only our side runs.

Usage::

    pip install --no-deps --target /tmp/meissonic-site diffusers==0.32.2 transformers==4.46.3 \\
        tokenizers==0.20.3 huggingface_hub==0.26.5
    git clone https://github.com/viiika/Meissonic /tmp/Meissonic
    python benchmarks/meissonic_speed.py --reference /tmp/Meissonic --site /tmp/meissonic-site      # CPU, fp32 + bf16
    python benchmarks/meissonic_speed.py --reference /tmp/Meissonic --site /tmp/meissonic-site --device cuda \\
        --steps 5 --json meissonic.json
"""

from __future__ import annotations

import argparse
import functools
import gc
import json
import math
import statistics
import sys
import tempfile
import time
import types
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks import machine  # noqa: E402
from muse_core.loading import load_model  # noqa: E402
from muse_core.models.meissonic import SAMPLING_DEFAULTS, MeissonicConfig, MeissonicTransformer  # noqa: E402
from muse_core.sampling.sampler import generators_for, unmask_step  # noqa: E402
from muse_core.sampling.schedules import scheduler_timestep, temperatures  # noqa: E402

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
FACTOR = 16  # pixels per token side (the VQ)
TEXT_LENGTH = 77  # both pipelines pad prompts to 77 CLIP tokens
SCHEDULE_STEPS = SAMPLING_DEFAULTS["steps"]  # 48: the schedule the steps belong to, and the projection's
GUIDANCE = SAMPLING_DEFAULTS["guidance_scale"]  # 9
TEMPERATURE = (2.0, 0.0)  # both pipelines' default
AESTHETIC = 6.0
SEED = 0
WEIGHTS = "diffusion_pytorch_model.safetensors"


# ---- weights and inputs -------------------------------------------------------------------------------

def hub_config(config: MeissonicConfig) -> dict:
    """The reference's constructor arguments (= the hub's transformer/config.json) for ``config``."""
    fields = config.to_dict()
    fields.pop("sample_size")  # ours only: the hub's configs have none
    return {"patch_size": 1, "in_channels": 64, **fields}  # two fields the reference's model does not use


def write_weights(folder: Path, config: MeissonicConfig) -> None:
    """Seeded random weights in the hub's folder layout (fp32): norm gains near 1, every matrix and kernel with
    standard deviation 1 / sqrt(fan-in), biases small, so that every layer matters to the logits."""
    from safetensors.torch import save_file  # noqa: PLC0415

    with torch.device("meta"):
        names = {name: value.shape for name, value in MeissonicTransformer(config).state_dict().items()}
    generator = torch.Generator().manual_seed(SEED)
    tensors = {}
    for name, shape in names.items():
        noise = torch.randn(shape, generator=generator)
        if "norm" in name and name.endswith("weight") and len(shape) == 1:
            tensors[name] = 1 + 0.1 * noise
        elif len(shape) >= 2:
            tensors[name] = noise / math.sqrt(math.prod(shape[1:]))
        else:
            tensors[name] = 0.02 * noise
    folder.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(folder / WEIGHTS))
    (folder / "config.json").write_text(json.dumps({"_class_name": "Transformer2DModel", **hub_config(config)}, indent=2))


def read_config(folder: Path) -> MeissonicConfig:
    return MeissonicConfig.from_dict(json.loads((folder / "config.json").read_text()))


def make_inputs(config: MeissonicConfig, size: int) -> dict[str, torch.Tensor]:
    """The same inputs for both sides: a half-masked token grid, text states and pooled vectors for
    [unconditional, conditional], the micro-conditions of one image."""
    grid = size // FACTOR
    generator = torch.Generator().manual_seed(1)
    ids = torch.randint(0, config.codebook_size, (1, grid, grid), generator=generator)
    ids[torch.rand(ids.shape, generator=generator) < 0.5] = config.mask_token_id
    return {
        "ids": ids,
        "hidden": torch.randn(2, TEXT_LENGTH, config.joint_attention_dim, generator=generator),
        "pooled": torch.randn(2, config.pooled_projection_dim, generator=generator),
        "micro": torch.tensor([[size, size, 0, 0, AESTHETIC]]),  # [width, height, crop top, crop left, aesthetic]
    }


# ---- the two implementations --------------------------------------------------------------------------

class Ours:
    name = "ours"

    def __init__(self, folder: Path, dtype: torch.dtype, device: str, inputs: dict):
        self.model = load_model(MeissonicTransformer, folder, dtype=dtype, device=device)
        self.device = device
        self.ids = inputs["ids"].to(device)
        micro = inputs["micro"].repeat(2, 1).to(device, dtype)
        with torch.inference_mode():  # once per generation, as GuidedModel does
            self.context = self.model.text_context(inputs["hidden"].to(device, dtype), inputs["pooled"].to(device, dtype),
                                                   micro)
        self.temperatures = temperatures(TEMPERATURE, SCHEDULE_STEPS).to(device)

    def step(self, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(logits [2, K, h, w], next ids [1, h, w]) of decoding step ``step``: GuidedModel's pass and mix, then
        the sampler's unmask step."""
        ids = self.ids
        logits = self.model.forward_with_text(torch.cat([ids, ids]), self.context, scheduler_timestep(step, SCHEDULE_STEPS))
        uncond, cond = logits.float().chunk(2)
        next_ids = unmask_step(uncond + GUIDANCE * (cond - uncond), ids, step, SCHEDULE_STEPS, self.model.mask_token_id,
                               generators_for(SEED, 1, ids.device), self.temperatures[step])
        return logits, next_ids


def load_reference(reference: Path, site: Path | None) -> types.SimpleNamespace:
    """Import the reference: ``site`` (diffusers 0.32.2, transformers 4.46.3) first on ``sys.path``, then the
    checkout. The only place the reference is imported."""
    if "diffusers" in sys.modules or "transformers" in sys.modules:
        raise RuntimeError("diffusers / transformers were imported before the reference's own versions")
    sys.path[:0] = [str(path) for path in (site, reference) if path is not None]
    from src.pipeline import _prepare_latent_image_ids  # noqa: PLC0415
    from src.scheduler import Scheduler  # noqa: PLC0415
    from src.transformer import Transformer2DModel  # noqa: PLC0415

    return types.SimpleNamespace(Transformer2DModel=Transformer2DModel, Scheduler=Scheduler,
                                 prepare_latent_image_ids=_prepare_latent_image_ids)


class Reference:
    name = "reference"

    def __init__(self, code: types.SimpleNamespace, model, dtype: torch.dtype, device: str, inputs: dict):
        self.model = model.eval()
        self.device = device
        self.downsample = model.config.downsample
        self.ids = inputs["ids"].to(device)
        self.hidden = inputs["hidden"].to(device, dtype)
        self.pooled = inputs["pooled"].to(device, dtype)
        self.micro = inputs["micro"].to(device, dtype).expand(2, -1)
        self.prepare_ids = code.prepare_latent_image_ids
        self.scheduler = code.Scheduler(mask_token_id=model.config.vocab_size - 1)
        self.scheduler.set_timesteps(SCHEDULE_STEPS, TEMPERATURE, device)

    @classmethod
    def copying(cls, code, ours: Ours, dtype: torch.dtype, device: str, inputs: dict) -> Reference:
        """The reference model with a copy of our model's weights."""
        with torch.device("meta"):
            model = code.Transformer2DModel(**hub_config(ours.model.config))
        model.load_state_dict({k: v.clone() for k, v in ours.model.state_dict().items()}, strict=True, assign=True)
        return cls(code, model, dtype, device, inputs)

    @classmethod
    def from_pretrained(cls, code, folder: Path, dtype: torch.dtype, device: str, inputs: dict) -> Reference:
        """The reference model as its users load it."""
        return cls(code, code.Transformer2DModel.from_pretrained(folder, torch_dtype=dtype).to(device), dtype, device,
                   inputs)

    def step(self, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        timestep = self.scheduler.timesteps[step]
        model_input = torch.cat([self.ids] * 2)
        # src/pipeline.py at 1024 px: ids of half the token grid (its rule passes twice the grid elsewhere,
        # right only without downsampling); the same ids at any size here
        side = model_input.shape[-1] if self.downsample else 2 * model_input.shape[-1]
        img_ids = self.prepare_ids(model_input.shape[0], side, side, model_input.device, model_input.dtype)
        txt_ids = torch.zeros(self.hidden.shape[1], 3).to(device=self.hidden.device, dtype=self.hidden.dtype)
        logits = self.model(hidden_states=model_input, micro_conds=self.micro, pooled_projections=self.pooled,
                            encoder_hidden_states=self.hidden, img_ids=img_ids, txt_ids=txt_ids,
                            timestep=torch.tensor([timestep], device=model_input.device, dtype=torch.long))
        uncond, cond = logits.chunk(2)
        guided = uncond + GUIDANCE * (cond - uncond)
        generator = torch.Generator(self.ids.device).manual_seed(SEED)
        next_ids = self.scheduler.step(model_output=guided, timestep=timestep, sample=self.ids, generator=generator).prev_sample
        return logits, next_ids


# ---- measurements -------------------------------------------------------------------------------------

def timed(run, step: int, device: str) -> tuple[float, tuple[torch.Tensor, torch.Tensor]]:
    machine.synchronize(device)
    start = time.perf_counter()
    with torch.inference_mode():
        out = run.step(step)
    machine.synchronize(device)
    return time.perf_counter() - start, out


def memory_child(implementation: str, folder: str, dtype: str, size: str, device: str, reference: str, site: str,
                 threads: str) -> None:
    """In a fresh process: load one implementation from ``folder``, run one step; print its peaks as JSON."""
    folder, size = Path(folder), int(size)
    torch.set_num_threads(int(threads))
    if implementation == "reference":  # first: the reference's diffusers must be the first one imported
        code = load_reference(Path(reference), Path(site) if site else None)
    inputs = make_inputs(read_config(folder), size)
    if implementation == "ours":
        run = Ours(folder, DTYPES[dtype], device, inputs)
    else:
        run = Reference.from_pretrained(code, folder, DTYPES[dtype], device, inputs)
    loaded = machine.peak_memory_bytes(device)
    machine.reset_peak_memory(device)
    with torch.inference_mode():
        run.step(0)
    machine.synchronize(device)
    step = machine.peak_memory_bytes(device)
    print(json.dumps({"total": max(loaded, step), "step": step}))


def child_peak_memory(implementation: str, folder: Path, dtype: str, size: int, device: str,
                      reference: Path | None, site: Path | None) -> dict[str, int]:
    return json.loads(machine.memory_child_output(__file__, implementation, folder, dtype, size, device, reference or "",
                                                  site or "", torch.get_num_threads()))


def benchmark(config: MeissonicConfig, dtype: str, size: int, steps: int, device: str, work: Path,
              reference=None, memory: bool = True, reference_paths: tuple[Path | None, Path | None] = (None, None)) -> dict:
    """One row. ``reference``: None (ours only) or a factory ``(ours, dtype, device, inputs) -> runner`` whose
    runner has ``name`` and ``step``; ``reference_paths`` (checkout, site) are for its memory child."""
    if size % (2 * FACTOR if config.downsample else FACTOR):
        raise ValueError(f"size {size} must be a multiple of {2 * FACTOR if config.downsample else FACTOR}")
    folder = work / "transformer"
    if not (folder / "config.json").is_file():
        write_weights(folder, config)
    inputs = make_inputs(config, size)
    torch_dtype = DTYPES[dtype]
    ours = Ours(folder, torch_dtype, device, inputs)
    runs = [ours] if reference is None else [ours, reference(ours, torch_dtype, device, inputs)]
    times = {run.name: [] for run in runs}
    outputs, flops = {}, None
    snapshot = machine.cpu_snapshot()
    matmul = machine.matmul_rate(torch_dtype, device)
    for repeat in range(steps + 1):  # the first round warms up (and counts our FLOPs)
        for run in runs:
            if repeat == 0 and run is ours:
                with torch.inference_mode():
                    outputs[run.name], flops = machine.count_flops(lambda run=run: run.step(0))
                continue
            seconds, outputs[run.name] = timed(run, repeat, device)
            if repeat:
                times[run.name].append(seconds)
    median = {name: statistics.median(values) for name, values in times.items()}
    matmul = max(matmul, machine.matmul_rate(torch_dtype, device), key=lambda rate: rate["flops_per_s"])
    others = machine.others_cpu_share(snapshot, machine.cpu_snapshot())
    compared = reference is not None
    if compared:
        (ours_logits, ours_ids), (ref_logits, ref_ids) = outputs["ours"], outputs[runs[1].name]
        difference = (ours_logits.float() - ref_logits.float()).abs().max().item()
        largest = ref_logits.float().abs().max().item()
        ids_equal = bool(torch.equal(ours_ids.cpu(), ref_ids.cpu()))
    del runs, ours, outputs
    gc.collect()
    peaks = {}
    if memory:
        names = ["ours", "reference"] if compared else ["ours"]
        peaks = {name: child_peak_memory(name, folder, dtype, size, device, *reference_paths) for name in names}
    tokens = (size // FACTOR // (2 if config.downsample else 1)) ** 2
    return {
        "size": size, "tokens": tokens, "sequence": tokens + TEXT_LENGTH, "dtype": dtype, "device": device,
        "steps": steps, "schedule_steps": SCHEDULE_STEPS, "seconds": median, "all_seconds": times,
        "ratio": median["reference"] / median["ours"] if compared else None,
        "projected_seconds": {name: SCHEDULE_STEPS * value for name, value in median.items()},
        "logits_max_abs_diff": difference if compared else None, "logits_max_abs": largest if compared else None,
        "next_ids_equal": ids_equal if compared else None,
        "peak_memory_bytes": peaks, "flops_per_step": flops, "achieved_flops_per_s": flops / median["ours"],
        "matmul_flops_per_s": matmul["flops_per_s"], "matmul_source": matmul["source"],
        "others_cpu_share": others, "threads": torch.get_num_threads(),
    }


# ---- report -------------------------------------------------------------------------------------------

HEADER = ("| px | dtype | steps | ours (s/step) | reference (s/step) | reference / ours | logits max abs diff "
          "| next ids equal | peak mem ours / reference (GiB) | of it in the step | 48 steps ours / reference (s) "
          "| TFLOP/s ours / matmul (%) | CPU used by others |")


def table(rows: list[dict]) -> str:
    lines = [HEADER, "|" + "---|" * (HEADER.count("|") - 1)]
    for r in rows:
        compared = r["ratio"] is not None
        missing = "n/a (not run)"
        mem = r["peak_memory_bytes"]

        def pair(values: dict, fmt: str) -> str:
            ours = format(values["ours"], fmt)
            return f"{ours} / {format(values['reference'], fmt) if 'reference' in values else missing}"

        def gib(key: str) -> str:
            if not mem:
                return "not measured"
            return pair({name: value[key] / 2**30 for name, value in mem.items()}, ".2f")

        if compared:
            diff = f"{r['logits_max_abs_diff']:.1e} (largest {r['logits_max_abs']:.1f})"
            ids = "yes" if r["next_ids_equal"] else "no"
        else:
            diff = ids = missing
        lines.append(
            f"| {r['size']} | {r['dtype']} | {r['steps']} | {r['seconds']['ours']:.2f} | "
            f"{format(r['seconds']['reference'], '.2f') if compared else missing} | "
            f"{format(r['ratio'], '.2f') + 'x' if compared else missing} | {diff} | {ids} | {gib('total')} | {gib('step')} | "
            f"{pair(r['projected_seconds'], '.0f')} | {machine.percent_of_matmul(r['achieved_flops_per_s'], r['matmul_flops_per_s'])} | "
            f"{'n/a' if r['others_cpu_share'] is None else format(r['others_cpu_share'], '.0%')} |"
        )
    return "\n".join(lines)


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--memory-child":
        memory_child(*sys.argv[2:])
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reference", type=Path, help="a checkout of github viiika/Meissonic (without it: ours only)")
    parser.add_argument("--site", type=Path, help="a folder holding diffusers 0.32.2 and transformers 4.46.3 for the reference")
    parser.add_argument("--size", nargs="+", type=int, default=[1024], help="image side in pixels (default 1024)")
    parser.add_argument("--dtypes", nargs="+", default=["fp32", "bf16"], choices=sorted(DTYPES))
    parser.add_argument("--steps", type=int, default=2, help="measured steps of each, after one warm-up step each")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", choices=["cpu", "cuda"])
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's own choice)")
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory child processes")
    parser.add_argument("--work", type=Path, help="folder for the random weights (default: a temporary folder)")
    parser.add_argument("--json", type=Path, help="also write every measurement to this file")
    args = parser.parse_args()
    if args.steps < 1:
        parser.error("--steps must be at least 1")
    if args.threads:
        torch.set_num_threads(args.threads)

    reference = None
    if args.reference is not None:
        reference = functools.partial(Reference.copying, load_reference(args.reference, args.site))
    config = MeissonicConfig()
    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        work = args.work or Path(scratch)
        for size in args.size:
            for dtype in args.dtypes:
                rows.append(benchmark(config, dtype, size, args.steps, args.device, work, reference,
                                      memory=not args.no_memory, reference_paths=(args.reference, args.site)))
                print(table(rows[-1:]).splitlines()[-1], flush=True)
    name = machine.machine_name(args.device)
    print(f"\n{name}, torch {torch.__version__}, {time.strftime('%Y-%m-%d')}; matmul: {machine.matmul_description(args.device)}\n")
    print(table(rows))
    if args.json:
        args.json.write_text(json.dumps({"machine": name, "torch": torch.__version__, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
