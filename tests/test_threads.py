"""`muse train` chooses its torch thread count deliberately (docs/training.md)."""

import os

import pytest
import torch

from muse_core import cli
from muse_core.training import cascade
from muse_core.training.loop import training_threads


def test_cores_are_shared_out_between_torchrun_processes(monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(8)), raising=False)
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    assert training_threads() == 8
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "8")
    assert training_threads() == 1  # one process per core: one thread each
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "16")
    assert training_threads() == 1
    assert training_threads(3) == 3  # --threads wins
    with pytest.raises(ValueError, match="threads must be >= 1"):
        training_threads(0)


def test_cli_sets_the_thread_count_before_training(monkeypatch, tmp_path):
    seen = {}
    monkeypatch.setattr(cascade, "train_cascade", lambda *a, **k: seen.setdefault("threads", torch.get_num_threads()))
    before = torch.get_num_threads()
    try:
        assert cli.main(["train", "-o", str(tmp_path / "m"), "--threads", "1", "--quiet"]) == 0
    finally:
        torch.set_num_threads(before)
    assert seen == {"threads": 1}
