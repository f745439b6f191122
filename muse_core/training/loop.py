"""One training loop for every model: AdamW, warmup + cosine LR, bf16 autocast, DDP, resumable checkpoints.

An objective is an ``nn.Module`` whose ``forward(batch)`` returns ``(loss, logs)``; ``logs`` are floats
shown on the progress bar. Under ``torchrun`` the loop runs data-parallel (NCCL on CUDA, gloo on
CPU): each process draws its own share of every epoch's permutation, gradients are averaged by DDP.

Checkpoints hold no pickle: ``checkpoint/state.safetensors`` has the objective's weights, the
optimizer state flattened to tensors and the RNG state; ``checkpoint/trainer.json`` the step, the
optimizer's param groups and the config. Training resumes exactly where it stopped (same batches).
"""

from __future__ import annotations

import atexit
import dataclasses
import json
import math
import os
from collections.abc import Callable, Iterator
from pathlib import Path

import torch
import torch.distributed as dist
from safetensors.torch import load_file, save_file
from torch import nn

CHECKPOINT_DIR = "checkpoint"


@dataclasses.dataclass
class TrainConfig:
    steps: int
    batch_size: int  # per process
    lr: float = 3e-4
    weight_decay: float = 0.01
    warmup_steps: int = 100
    min_lr_ratio: float = 0.1  # cosine decays to lr * min_lr_ratio
    grad_clip: float = 1.0
    precision: str = "auto"  # "auto" (bf16 autocast where the hardware has bf16 matrix units), "bf16", "fp32"
    checkpoint_every: int = 500
    seed: int = 0

    def __post_init__(self):
        if self.steps < 1 or self.batch_size < 1:
            raise ValueError(f"steps and batch_size must be >= 1, got {self.steps} and {self.batch_size}.")
        if self.precision not in ("auto", "bf16", "fp32"):
            raise ValueError(f"precision must be 'auto', 'bf16' or 'fp32', got {self.precision!r}.")


@dataclasses.dataclass(frozen=True)
class Distributed:
    rank: int = 0
    world_size: int = 1
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def setup_distributed() -> Distributed:
    """Read torchrun's environment; a plain ``python`` run is a world of one."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = torch.device("cuda", local_rank) if torch.cuda.is_available() else torch.device("cpu")
    if world_size > 1 and not dist.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
        # A group still alive at interpreter shutdown can abort the process ("terminate called without
        # an active exception": gloo's threads outlive Python), so it is closed while Python still runs.
        atexit.register(_close_process_group)
    return Distributed(int(os.environ.get("RANK", "0")), world_size, device)


def training_threads(requested: int | None = None) -> int:
    """Torch threads for this process: ``requested``, else this machine's cores shared out evenly between the
    processes torchrun started on it (one each when there are as many processes as cores).

    Deliberate, not torch's default: on 2 cores a shipped base step took 0.44 s with 2 threads and 0.78 s with 1
    when idle, but 17.0 s against 1.25 s once another process held a core (a thread waiting for a core stalls
    every parallel op); docs/performance.md, benchmarks/training_threads.py.
    """
    if requested is not None:
        if requested < 1:
            raise ValueError(f"threads must be >= 1, got {requested}.")
        return requested
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(1, cores // int(os.environ.get("LOCAL_WORLD_SIZE", "1")))


def _close_process_group() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def has_bf16_matrix_units(device: torch.device) -> bool:
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    try:  # Intel AMX: bf16 matmuls ~8x faster than fp32 on this kind of CPU
        return "amx_bf16" in Path("/proc/cpuinfo").read_text()
    except OSError:
        return False


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    if precision == "bf16" or (precision == "auto" and has_bf16_matrix_units(device)):
        return torch.bfloat16
    return None


def learning_rate(config: TrainConfig, step: int) -> float:
    if step < config.warmup_steps:
        return config.lr * (step + 1) / config.warmup_steps
    progress = (step - config.warmup_steps) / max(1, config.steps - config.warmup_steps)
    cosine = 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
    return config.lr * (config.min_lr_ratio + (1 - config.min_lr_ratio) * cosine)


def batch_indices(size: int, config: TrainConfig, world: Distributed, start_step: int) -> Iterator[list[int]]:
    """Batches of dataset indices for this process, from ``start_step`` on.

    Epoch e is a permutation seeded by (seed, e); process r takes every world_size-th index, so the
    processes see disjoint data and a resumed run sees the batches it would have seen.
    """
    per_epoch = size // (config.batch_size * world.world_size)
    if per_epoch == 0:
        raise ValueError(
            f"the dataset has {size} samples, fewer than one batch ({config.batch_size} x {world.world_size} "
            "processes); lower the batch size or add data."
        )
    epoch, offset = divmod(start_step, per_epoch)
    while True:
        order = torch.randperm(size, generator=torch.Generator().manual_seed(config.seed * 100_003 + epoch))
        mine = order[world.rank :: world.world_size].tolist()
        for b in range(offset, per_epoch):
            yield mine[b * config.batch_size : (b + 1) * config.batch_size]
        epoch, offset = epoch + 1, 0


def to_device(batch, device: torch.device):
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, dict):
        return {k: to_device(v, device) for k, v in batch.items()}
    return batch


def train(objective: nn.Module, dataset, config: TrainConfig, out_dir: str | Path,
          collate: Callable[[list], dict], progress: bool = True, description: str = "train") -> nn.Module:
    """Train ``objective`` on ``dataset`` (indexable, with len) for ``config.steps`` optimizer steps.

    Resumes from ``out_dir/checkpoint`` when present. Returns the objective (unwrapped from DDP),
    trained, on the training device; the caller exports it.
    """
    world = setup_distributed()
    out_dir = Path(out_dir)
    torch.manual_seed(config.seed + world.rank)  # objectives draw masks and dropouts from the global RNG
    objective.to(world.device)
    named = [(name, p) for name, p in objective.named_parameters() if p.requires_grad]
    parameters = [p for _, p in named]
    # An objective may scale some parameters' learning rate (``learning_rate_scale(name)``); no weight
    # decay on norms and biases.
    scale_of = getattr(objective, "learning_rate_scale", lambda name: 1.0)
    groups: dict[tuple[bool, float], list] = {}
    for name, p in named:
        groups.setdefault((p.ndim >= 2, scale_of(name)), []).append(p)
    optimizer = torch.optim.AdamW(
        [{"params": ps, "weight_decay": config.weight_decay if decay else 0.0, "lr_scale": scale}
         for (decay, scale), ps in groups.items()],
        lr=config.lr, betas=(0.9, 0.99), fused=True,  # fused: one kernel per step instead of ~10 ops per tensor
    )
    start = load_checkpoint(out_dir, objective, optimizer, world)
    model = objective
    if world.world_size > 1:
        model = nn.parallel.DistributedDataParallel(objective, device_ids=[world.device.index] if world.device.type == "cuda" else None)
    amp = autocast_dtype(config.precision, world.device)
    bar = _progress_bar(config.steps, start, description, enabled=progress and world.is_main)
    smoothed: dict[str, float] = {}
    model.train()
    for step, indices in zip(range(start, config.steps), batch_indices(len(dataset), config, world, start)):
        batch = to_device(collate([dataset[i] for i in indices]), world.device)
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(config, step) * group.get("lr_scale", 1.0)  # absent in older checkpoints
        with torch.autocast(world.device.type, dtype=amp or torch.float32, enabled=amp is not None):
            loss, logs = model(batch)
        if not torch.isfinite(loss):
            raise FloatingPointError(
                f"{description}: loss is {loss.item()} at step {step}; lower the learning rate or use precision='fp32'."
            )
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if config.grad_clip:
            nn.utils.clip_grad_norm_(parameters, config.grad_clip)
        optimizer.step()
        for key, value in {"loss": loss.item(), **logs}.items():
            smoothed[key] = value if key not in smoothed else 0.9 * smoothed[key] + 0.1 * value
        if bar is not None:
            bar.set_postfix({k: f"{v:.4g}" for k, v in smoothed.items()}, refresh=False)
            bar.update(1)
        done = step + 1
        if done % config.checkpoint_every == 0 or done == config.steps:
            save_checkpoint(out_dir, objective, optimizer, done, config, world)
    if bar is not None:
        bar.close()
    return objective


def _progress_bar(total: int, start: int, description: str, enabled: bool):
    if not enabled:
        return None
    from tqdm.auto import tqdm  # noqa: PLC0415

    return tqdm(total=total, initial=start, desc=description, unit="step", dynamic_ncols=True)


# --- checkpoints ------------------------------------------------------------------------------------


def save_checkpoint(out_dir: Path, objective: nn.Module, optimizer: torch.optim.Optimizer, step: int,
                    config: TrainConfig, world: Distributed) -> None:
    if not world.is_main:
        return
    folder = out_dir / CHECKPOINT_DIR
    folder.mkdir(parents=True, exist_ok=True)
    tensors = {f"model.{k}": v.detach().cpu().contiguous() for k, v in objective.state_dict().items()}
    optim_state = optimizer.state_dict()
    for index, state in optim_state["state"].items():
        for name, value in state.items():
            tensors[f"optim.{index}.{name}"] = torch.as_tensor(value).detach().cpu().contiguous()
    tensors["rng.cpu"] = torch.get_rng_state()
    _dedupe_shared(tensors)
    # Write then rename, so an interrupted save never leaves a half-written checkpoint behind.
    save_file(tensors, folder / "state.safetensors.tmp")
    info = {"step": step, "param_groups": optim_state["param_groups"], "config": dataclasses.asdict(config)}
    (folder / "trainer.json.tmp").write_text(json.dumps(info, indent=1))
    os.replace(folder / "state.safetensors.tmp", folder / "state.safetensors")
    os.replace(folder / "trainer.json.tmp", folder / "trainer.json")


def _dedupe_shared(tensors: dict[str, torch.Tensor]) -> None:
    """safetensors refuses tensors sharing memory (tied embeddings): store such copies separately."""
    seen: set[int] = set()
    for key, tensor in tensors.items():
        pointer = tensor.untyped_storage().data_ptr()
        if pointer in seen:
            tensors[key] = tensor.clone()
        seen.add(pointer)


def load_checkpoint(out_dir: Path, objective: nn.Module, optimizer: torch.optim.Optimizer, world: Distributed) -> int:
    """Restore a checkpoint if one exists; returns the step to continue from (0 for a fresh run)."""
    folder = out_dir / CHECKPOINT_DIR
    if not (folder / "trainer.json").is_file():
        return 0
    info = json.loads((folder / "trainer.json").read_text())
    tensors = load_file(folder / "state.safetensors")
    model_state = {k.removeprefix("model."): v for k, v in tensors.items() if k.startswith("model.")}
    missing, unexpected = objective.load_state_dict(model_state, strict=False)
    if missing or unexpected:
        raise ValueError(
            f"{folder}: the checkpoint does not fit this model (missing {missing[:3]}, unexpected {unexpected[:3]}); "
            "it belongs to another configuration. Use a new output folder or delete the checkpoint."
        )
    state: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in tensors.items():
        if key.startswith("optim."):
            _, index, name = key.split(".", 2)
            state.setdefault(int(index), {})[name] = value
    saved_scales = [group.get("lr_scale", 1.0) for group in info["param_groups"]]
    scales = [group["lr_scale"] for group in optimizer.param_groups]
    if saved_scales != scales:
        raise ValueError(
            f"{folder}: the checkpoint was trained with learning-rate scales {saved_scales} per parameter group, this "
            f"run asks for {scales} (e.g. another text_lr_scale); resume with the same options or delete the checkpoint."
        )
    optimizer.load_state_dict({"state": state, "param_groups": info["param_groups"]})
    torch.set_rng_state(tensors["rng.cpu"])
    if world.rank:  # each process continues its own random stream
        torch.manual_seed(int(torch.randint(0, 2**31, (1,))) + world.rank)
    return int(info["step"])
