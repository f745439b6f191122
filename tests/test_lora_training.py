"""`muse train --lora`: a LoRA fine-tuned with PEFT, written so that our loader and diffusers' read the model it trained."""

from __future__ import annotations

import os
import sys

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors import safe_open
from safetensors.torch import load_file

from muse_core import cli, load_pipeline
from muse_core.data.shapes import write_dataset
from muse_core.loading.lora import apply_lora
from muse_core.pipeline import DEFAULT_MODEL_DIR
from muse_core.training import lora
from muse_core.training.data import CaptionFolder, encode_images
from muse_core.training.loop import TrainConfig

from .helpers import PIPE_UVIT, uvit_inputs
from .reference import relative_max_diff

pytest.importorskip("peft")
# Every linear kind of the U-ViT that diffusers' UVit2DModel shares, so each is placed by name on both sides.
TARGETS = ("to_q", "to_k", "to_v", "to_out.0", "linear_1", "linear_2", "encoder_proj")
# The file's W + B'A is formed in float32 and rounded once per weight, where PEFT adds B(Ax) as a separate
# branch, and diffusers' U-ViT rounds differently from ours: measured 6e-6 (ours) and 2.5e-6 (diffusers) of
# the largest logit through the tiny model's random std-0.2 weights; 5x that is allowed. A scale left out of
# the file would be off by two thirds of the LoRA's effect, which training makes ~0.9 here.
RTOL = 3e-5


@pytest.fixture(autouse=True)
def one_thread():
    """One torch thread (on shared CPUs a thread waiting for a busy core stalls every op), and the count the
    other tests had afterwards (`muse train` sets it for the process)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def caption_folder(folder, count: int, size: int):
    """Random images with captions of the tiny CLIP tokenizer's letters, in a captions.txt."""
    rng = np.random.default_rng(0)
    (folder / "images").mkdir(parents=True)
    lines = []
    for k in range(count):
        Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(folder / "images" / f"{k}.png")
        lines.append(f"images/{k}.png\t{'a cat' if k % 2 else 'a cab'}")
    (folder / "captions.txt").write_text("\n".join(lines) + "\n")
    return folder


def test_file_reproduces_the_trained_model_in_our_loader_and_in_diffusers(amused_folder, tmp_path):
    from diffusers.loaders import AmusedLoraLoaderMixin  # noqa: PLC0415  (a test-only reference)

    folder, reference, _, _ = amused_folder
    native = load_pipeline(folder).native_size
    data = caption_folder(tmp_path / "data", 4, native)
    settings = lora.LoraSettings(rank=4, alpha=12, targets=TARGETS)  # scale 3: the fold must be exactly alpha / r
    config = TrainConfig(steps=4, batch_size=2, lr=1e-2, warmup_steps=1, precision="fp32")
    out = tmp_path / "style.safetensors"
    trained = lora.train_lora(folder, data, out, settings, config, progress=False)

    with safe_open(str(out), framework="pt") as f:
        keys, header = set(f.keys()), f.metadata()
    assert header == {"format": "pt"}  # what diffusers' save writes: no alpha, so every reader takes scale 1
    umask = os.umask(0)
    os.umask(umask)
    assert out.stat().st_mode & 0o777 == 0o666 & ~umask  # readable as any file the user writes
    assert keys and all(k.startswith("transformer.") and k.endswith((".lora_A.weight", ".lora_B.weight")) for k in keys)
    checkpoint = load_file(tmp_path / "style.safetensors.work" / "checkpoint" / "state.safetensors")
    assert all("lora_" in k for k in checkpoint if k.startswith("model."))  # the adapter alone, not the base

    ids, hidden, pooled, micro = uvit_inputs(PIPE_UVIT)
    with torch.no_grad():
        expected = trained(ids, hidden, pooled, micro)
        ours = load_pipeline(folder).transformer
        base = ours(ids, hidden, pooled, micro)
        apply_lora(ours, out)
        patched = ours(ids, hidden, pooled, micro)
        # diffusers' two-call load (AmusedPipeline has no load_lora_weights), as a user of its files does it
        state_dict, alphas = AmusedLoraLoaderMixin.lora_state_dict(str(out))
        AmusedLoraLoaderMixin.load_lora_into_transformer(state_dict, alphas, reference)
        theirs = reference(ids, hidden, pooled, micro)
    assert relative_max_diff(base, expected) > 100 * RTOL  # training changed the model
    assert relative_max_diff(patched, expected) <= RTOL
    assert relative_max_diff(theirs, expected) <= RTOL


def test_a_longer_rerun_continues_from_the_adapter_checkpoint(amused_folder, tmp_path, monkeypatch):
    folder = amused_folder[0]
    data = caption_folder(tmp_path / "data", 2, load_pipeline(folder).native_size)
    config = TrainConfig(steps=2, batch_size=2, warmup_steps=1, precision="fp32", checkpoint_every=1)
    lora.train_lora(folder, data, tmp_path / "a.safetensors", config=config, work_dir=tmp_path / "work", progress=False)
    calls = []
    forward = lora.LoraObjective.forward
    monkeypatch.setattr(lora.LoraObjective, "forward", lambda self, batch: calls.append(1) or forward(self, batch))
    config.steps = 3
    lora.train_lora(folder, data, tmp_path / "b.safetensors", config=config, work_dir=tmp_path / "work", progress=False)
    assert len(calls) == 1  # steps 1-2 came from the checkpoint, whose base weights were loaded from the folder again


def masked_token_loss(pipe, ids: torch.Tensor, captions: list[str], rate: float = 0.9, draws: int = 4) -> float:
    """Cross-entropy on a fixed random ``rate`` of each image's tokens: how well the model restores them."""
    g = torch.Generator().manual_seed(0)
    cond = pipe.text_encoder.encode(captions)
    micro = pipe.transformer.default_micro_conds(pipe.native_size, pipe.native_size, len(ids))
    losses = []
    for _ in range(draws):
        masked = torch.rand(ids.shape, generator=g) < rate
        with torch.no_grad():
            logits = pipe.transformer(torch.where(masked, pipe.transformer.mask_token_id, ids), cond.hidden_states,
                                      cond.pooled, micro, cond.attention_mask)
        losses.append(torch.nn.functional.cross_entropy(logits.permute(0, 2, 3, 1)[masked], ids[masked]).item())
    return sum(losses) / draws


def test_a_lora_on_a_few_shapes_images_learns_them(tmp_path, capsys):
    """The embedded model restores 90%-masked tokens of 8 new shapes images better with a LoRA trained on them."""
    data = tmp_path / "shapes"
    write_dataset(data, 8, seed=5, size=64)
    out = tmp_path / "shapes.safetensors"
    code = cli.main(["train", "--lora", str(out), "--data", str(data), "--steps", "100", "--batch-size", "4",
                     "--lr", "3e-3", "--lora-targets", "to_q", "to_k", "to_v", "to_out.0", "proj", "net.2",
                     "--threads", "1", "--quiet"])
    assert code == 0, capsys.readouterr().err
    pipe = load_pipeline(DEFAULT_MODEL_DIR)
    images = CaptionFolder(data, pipe.native_size)
    ids, captions = encode_images(pipe.vq, images, progress=False).long(), images.captions()
    before = masked_token_loss(pipe, ids, captions)
    apply_lora(pipe, out)  # through the file, as a user gets it
    after = masked_token_loss(pipe, ids, captions)
    # measured 1.015 -> 0.870 (-14%); a LoRA that learnt nothing stays at 1.015
    assert after < 0.92 * before, (before, after)


@pytest.fixture
def nothing_loads(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("a model was loaded before the options were checked")

    monkeypatch.setattr(lora, "load_pipeline", refuse)


@pytest.mark.parametrize("options, message", [
    (["--lora-rank", "0"], "argument --lora-rank: must be from 1 to 1024, got 0"),
    (["--lora-alpha", "0"], "argument --lora-alpha: must be a number > 0, got 0"),
    (["--lora-alpha", "-2"], "argument --lora-alpha: must be a number > 0, got -2"),
    (["--data", "{tmp}/no_such_folder"], "--data {tmp}/no_such_folder: no such folder"),
    (["--base", "{tmp}/no_such_model"], "--base {tmp}/no_such_model: no such folder"),
    (["--lora", "{tmp}/out.pt"], "a LoRA is written as a .safetensors file"),
    (["--lora", "{tmp}/exists.safetensors"], "exists.safetensors already exists"),
    (["-o", "{tmp}/model"], "give -o FOLDER to train a cascade, or --lora FILE"),
])
def test_bad_options_are_refused_before_any_model_loads(tmp_path, capsys, nothing_loads, options, message):
    data = caption_folder(tmp_path / "data", 2, 16)
    (tmp_path / "exists.safetensors").write_bytes(b"")
    args = ["train", "--lora", str(tmp_path / "out.safetensors"), "--data", str(data), "--threads", "1", "--quiet",
            *(option.format(tmp=tmp_path) for option in options)]
    assert cli.main(args) == 2
    assert message.format(tmp=tmp_path) in capsys.readouterr().err


def test_missing_peft_is_named_with_its_install_command(tmp_path, capsys, nothing_loads, monkeypatch):
    monkeypatch.setitem(sys.modules, "peft", None)  # `import peft` now raises ImportError
    args = ["train", "--lora", str(tmp_path / "out.safetensors"), "--data", str(caption_folder(tmp_path / "d", 2, 16)),
            "--threads", "1"]
    assert cli.main(args) == 2
    assert "LoRA training needs the peft package, which the pack does not install: pip install peft" \
        in capsys.readouterr().err


def test_unknown_target_is_refused_before_any_training(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(lora, "encode_images", lambda *a, **k: pytest.fail("the data was encoded"))
    args = ["train", "--lora", str(tmp_path / "out.safetensors"), "--data", str(caption_folder(tmp_path / "d", 2, 16)),
            "--lora-targets", "to_q", "to_qq", "--threads", "1", "--quiet"]
    assert cli.main(args) == 2
    err = capsys.readouterr().err
    assert "LoRA targets ['to_qq']" in err and "to_out.0" in err  # names the bad one and the names there are
    assert not (tmp_path / "out.safetensors").exists()
