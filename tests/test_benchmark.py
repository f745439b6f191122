"""The benchmarks keep working: benchmarks/amused_speed.py's whole comparison on tiny configs, through the real
code, and benchmarks/meissonic_speed.py on a tiny config (our side only: its reference needs diffusers 0.32,
which the test environment does not have); benchmarks/compile_speed.py on the embedded model (slow)."""

import copy
import importlib.util
import re
import sys

import pytest
import torch

from muse_core.models.meissonic import MeissonicConfig

from .helpers import TINY_UVIT, TINY_VQ

ROOT = __import__("pathlib").Path(__file__).resolve().parents[1]
TINY_MEISSONIC = MeissonicConfig(num_layers=1, num_single_layers=1, attention_head_dim=8, num_attention_heads=2,
                                 joint_attention_dim=32, pooled_projection_dim=16, axes_dims_rope=(2, 2, 4),
                                 vocab_size=72, codebook_size=64)


def load_benchmark(monkeypatch, name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, name, module)
    spec.loader.exec_module(module)
    monkeypatch.setattr(module.machine, "MATMUL_SIZE", {"cpu": 128})  # the measured matmul rate: a small product here
    return module


@pytest.fixture
def bench(monkeypatch):
    module = load_benchmark(monkeypatch, "amused_speed")
    # The benchmark's text is 77 x 768 and its VQ factor 16: a tiny transformer and a 5-level tiny VQ.
    tiny = {**TINY_UVIT, "encoder_hidden_size": 768, "cond_embed_dim": 768, "sample_size": 2}
    monkeypatch.setattr(module, "CONFIGS", {"256": tiny})
    monkeypatch.setattr(module, "VQ_CONFIG", {**TINY_VQ, "block_out_channels": (8,) * 5, "norm_num_groups": 4,
                                              "down_block_types": ("DownEncoderBlock2D",) * 5,
                                              "up_block_types": ("UpDecoderBlock2D",) * 5})
    return module


def test_benchmark_compares_with_diffusers(bench, tmp_path):
    row = bench.benchmark("256", "fp32", batch=1, repeats=1, device="cpu", work=tmp_path)
    assert row["ids_identical"] is True, "our sampler must give diffusers' ids in fp32"
    assert row["size"] == 32 and set(row["seconds"]) == {"ours", "diffusers"}
    assert all(value > 0 for value in row["peak_memory_bytes"].values())
    assert row["flops"] > 0 and 0 < row["achieved_flops_per_s"]
    assert row["matmul_flops_per_s"] > 0 and "128 x 128 float32 matmul" in row["matmul_source"]
    assert "| amused-256 | 1 | fp32 |" in bench.table([row]) and "TFLOP/s ours / matmul (%)" in bench.table([row])
    bf16 = bench.benchmark("256", "bf16", batch=2, repeats=1, device="cpu", work=tmp_path)
    assert bf16["ids_identical"] is None and "n/a (bf16)" in bench.table([bf16])
    assert "bfloat16 matmul" in bf16["matmul_source"]


def test_matmul_rate_and_flop_count(monkeypatch):
    machine = load_benchmark(monkeypatch, "amused_speed").machine
    assert machine.matmul_rate(torch.float32, "cpu")["flops_per_s"] > 0
    assert machine.percent_of_matmul(1.5e11, 3e11) == "0.150 / 0.300 (50%)"
    q = torch.randn(1, 2, 16, 8)
    _, flops = machine.count_flops(lambda: torch.nn.functional.scaled_dot_product_attention(q, q, q))
    assert flops == 4 * 2 * 16 * 16 * 8, "the CPU attention kernel is counted (torch's counter alone gives 0)"


@pytest.fixture
def meissonic_bench(monkeypatch):
    return load_benchmark(monkeypatch, "meissonic_speed")


def test_meissonic_benchmark_runs_our_side_without_the_reference(meissonic_bench, tmp_path):
    row = meissonic_bench.benchmark(TINY_MEISSONIC, "fp32", size=64, steps=1, device="cpu", work=tmp_path)
    assert set(row["seconds"]) == {"ours"} and row["ratio"] is None and row["logits_max_abs_diff"] is None
    assert row["tokens"] == 4 and row["projected_seconds"]["ours"] == 48 * row["seconds"]["ours"]
    peak = row["peak_memory_bytes"]["ours"]
    assert set(row["peak_memory_bytes"]) == {"ours"} and 0 < peak["step"] <= peak["total"]
    assert row["flops_per_step"] > 0 and row["matmul_flops_per_s"] > 0 and 0 <= row["others_cpu_share"] <= 1
    line = meissonic_bench.table([row]).splitlines()[-1]
    assert line.startswith("| 64 | fp32 | 1 |") and "n/a (not run)" in line
    assert not any(name == "src" or name.startswith("src.") for name in sys.modules), "the reference was imported"


class SecondCopyOfOurs:
    """Stands in for the reference side (not importable here): a copy of our runner under the reference's name, so
    the comparison's bookkeeping (alternation, logits difference, ratio, table) runs; it says nothing of the reference."""

    name = "reference"

    def __init__(self, ours, dtype, device, inputs):
        self.copy = copy.deepcopy(ours)

    def step(self, step):
        return self.copy.step(step)


def test_meissonic_benchmark_compares_two_sides_with_a_stand_in(meissonic_bench, tmp_path):
    row = meissonic_bench.benchmark(TINY_MEISSONIC, "fp32", size=64, steps=2, device="cpu", work=tmp_path,
                                    reference=SecondCopyOfOurs, memory=False)
    assert len(row["all_seconds"]["ours"]) == len(row["all_seconds"]["reference"]) == 2
    # Two runs of one model are not always bitwise equal on every CPU (an AMD EPYC gave 1.5e-6: its kernels
    # reduce in another order from call to call); the bookkeeping is what is tested here.
    assert row["logits_max_abs_diff"] <= 1e-5 and row["next_ids_equal"] is True and row["ratio"] > 0
    line = meissonic_bench.table([row]).splitlines()[-1]
    # the difference in scientific notation: 0.0e+00 where the runs were bitwise equal, e.g. 1.5e-06 where not
    assert re.search(r"\| \d\.\de[+-]\d\d \(largest", line) and "| yes |" in line and "not measured" in line


@pytest.mark.slow
def test_compile_benchmark_compares_eager_and_compiled(monkeypatch, capsys):
    """benchmarks/compile_speed.py on the embedded model, with dynamo's "eager" backend (tracing without
    inductor's compilation, which takes minutes on a CPU): every measurement is there and the ids agree.
    About 30 s on the 2-core CPU, most of it dynamo's tracing, hence slow (torch.compile's other tests are too)."""
    bench = load_benchmark(monkeypatch, "compile_speed")
    before = torch.get_num_threads()
    try:
        (row,) = bench.main(["--models", "embedded", "--backend", "eager", "--steps", "1", "--repeats", "1",
                             "--threads", "1"])
    finally:
        torch.set_num_threads(before)
    assert row["ids_equal"] is True and row["logits_max_abs_diff"] == 0.0
    assert row["model"] == "embedded" and row["batch"] == 1 and row["generation_steps"] == 24
    assert row["compile_seconds"] >= 0 and all(row["step_seconds"][mode] > 0 for mode in ("eager", "compiled"))
    out = capsys.readouterr().out
    assert "| embedded | 64 px | 1 | float32 |" in out and bench.GPU_COMMAND in out
    assert "--device cuda --dtype bf16" in bench.GPU_COMMAND
