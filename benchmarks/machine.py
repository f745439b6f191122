"""What the benchmarks measure the machine with: the rate of a large matrix product in a given dtype, measured
in the same run on the same device, the FLOPs of a piece of work, and the machine's name.

Achieved FLOP/s are reported against ``matmul_rate``, not against a datasheet or ``/proc/cpuinfo`` figure:
a product of two ``size x size`` matrices is about the best a dtype's kernels reach on that device, whatever
its vendor, its vector units, the threads torch uses or the neighbours of a shared machine, so "% of matmul"
says how far a model is from what its matrix products could do here, now.
"""

from __future__ import annotations

import os
import platform
import re
import subprocess
import sys
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count

# Side of the square matrices, and timed products (after one warm-up), per device type. On CUDA a 4096
# product is too short to fill a large GPU; 8192 runs a few ms.
MATMUL_SIZE = {"cpu": 4096, "cuda": 8192}
MATMUL_REPEATS = {"cpu": 3, "cuda": 20}


def synchronize(device: str | torch.device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def _matmul_settings(device: str | torch.device) -> tuple[int, int]:
    kind = torch.device(device).type
    return MATMUL_SIZE.get(kind, MATMUL_SIZE["cpu"]), MATMUL_REPEATS.get(kind, MATMUL_REPEATS["cpu"])


def matmul_rate(dtype: torch.dtype, device: str | torch.device) -> dict:
    """Best FLOP/s of ``a @ b`` for two ``size x size`` matrices of ``dtype`` on ``device``.

    Returns ``{"flops_per_s", "size", "repeats", "source"}``; ``source`` is a short description for a report."""
    size, repeats = _matmul_settings(device)
    generator = torch.Generator().manual_seed(0)
    a = torch.randn(size, size, generator=generator).to(device, dtype)
    b = torch.randn(size, size, generator=generator).to(device, dtype)
    out = torch.empty(size, size, device=device, dtype=dtype)
    best = float("inf")
    with torch.inference_mode():
        for repeat in range(repeats + 1):  # the first product warms up
            synchronize(device)
            start = time.perf_counter()
            torch.mm(a, b, out=out)
            synchronize(device)
            if repeat:
                best = min(best, time.perf_counter() - start)
    rate = 2 * size**3 / best
    name = str(dtype).removeprefix("torch.")
    return {"flops_per_s": rate, "size": size, "repeats": repeats,
            "source": f"{size} x {size} {name} matmul, best of {repeats}: {rate / 1e12:.3f} TFLOP/s"}


def matmul_description(device: str | torch.device) -> str:
    """What ``matmul_rate`` measures on ``device``, for a report's header."""
    size, repeats = _matmul_settings(device)
    return f"{size} x {size} product of the same dtype, best of {repeats}, measured before and after each row"


def percent_of_matmul(achieved: float, matmul: float) -> str:
    """A table cell: ``"0.141 / 0.240 (59%)"`` (TFLOP/s achieved / of the matmul, and the share)."""
    return f"{achieved / 1e12:.3f} / {matmul / 1e12:.3f} ({100 * achieved / matmul:.0f}%)"


def _sdpa_flops(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    return sdpa_flop_count(query_shape, key_shape, value_shape)


# torch's counter has no formula for the CPU kernel of scaled_dot_product_attention (it counts it as 0)
_EXTRA_FORMULAS = {torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: _sdpa_flops}


def count_flops(work) -> tuple[object, int]:
    """``work()``'s result and the FLOPs of its matrix products, convolutions and attention
    (``torch.utils.flop_counter``, with the CPU attention kernel counted too)."""
    with FlopCounterMode(display=False, custom_mapping=_EXTRA_FORMULAS) as counter:
        result = work()
    return result, counter.get_total_flops()


def peak_memory_bytes(device: str | torch.device) -> int:
    """This process's peak memory: CUDA's max allocated, or on a CPU the peak resident set."""
    if torch.device(device).type == "cuda":
        return torch.cuda.max_memory_allocated()
    # VmHWM: this process's own peak (getrusage's maxrss also counts the parent's, inherited at fork)
    return int(re.search(r"^VmHWM:\s*(\d+) kB", Path("/proc/self/status").read_text(), re.M).group(1)) * 1024


def reset_peak_memory(device: str | torch.device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    else:
        Path("/proc/self/clear_refs").write_text("5")  # VmHWM := the current resident set


def memory_child_output(script: str, *args: object) -> str:
    """Run ``python script --memory-child args...`` in a fresh process, so that the peak it measures is its
    own and not that of whatever this process already loaded; the last line it printed."""
    command = [sys.executable, script, "--memory-child", *map(str, args)]
    return subprocess.run(command, check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1]


def cpu_snapshot() -> tuple[float, float, float] | None:
    """(wall seconds, core-seconds the whole machine has been busy, core-seconds of this process and its
    children) now, or None without ``/proc/stat``; two of them give :func:`others_cpu_share`."""
    stat = Path("/proc/stat")
    if not stat.exists():
        return None
    # user nice system idle iowait irq softirq steal (guest time is inside user); steal = other virtual machines
    values = [int(value) for value in stat.read_text().splitlines()[0].split()[1:9]]
    busy = (sum(values) - values[3] - values[4]) / os.sysconf("SC_CLK_TCK")
    own = os.times()
    return time.perf_counter(), busy, own.user + own.system + own.children_user + own.children_system


def others_cpu_share(start, end) -> float | None:
    """The share of all cores that other processes (and other virtual machines) used between two snapshots:
    0 on a quiet machine; on a shared one, how much the timings between them were disturbed."""
    if start is None or end is None:
        return None
    wall, busy, own = (b - a for a, b in zip(start, end))
    return max(0.0, busy - own) / (wall * (os.cpu_count() or 1))


def machine_name(device: str | torch.device) -> str:
    """The GPU's name, or the CPU's model name and the thread count torch uses."""
    if torch.device(device).type == "cuda":
        return torch.cuda.get_device_name(device)
    cpuinfo = Path("/proc/cpuinfo")
    found = re.search(r"^model name\s*:\s*(.+)$", cpuinfo.read_text(), re.M) if cpuinfo.exists() else None
    name = found.group(1).strip() if found else platform.processor() or platform.machine()
    return f"{name}, {torch.get_num_threads()} threads"
