"""benchmarks/amused_speed.py keeps working: the whole comparison on tiny configs, through the real code."""

import importlib.util
import sys

import pytest

from .helpers import TINY_UVIT, TINY_VQ

ROOT = __import__("pathlib").Path(__file__).resolve().parents[1]


@pytest.fixture
def bench(monkeypatch):
    spec = importlib.util.spec_from_file_location("amused_speed", ROOT / "benchmarks" / "amused_speed.py")
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "amused_speed", module)
    spec.loader.exec_module(module)
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
    assert "| amused-256 | 1 | fp32 |" in bench.table([row])
    bf16 = bench.benchmark("256", "bf16", batch=2, repeats=1, device="cpu", work=tmp_path)
    assert bf16["ids_identical"] is None and "n/a (bf16)" in bench.table([bf16])
