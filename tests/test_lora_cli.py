"""`--lora FILE[:STRENGTH]` on `muse generate` and the image commands, on the embedded model."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from torch import nn

from muse_core import cli, load_pipeline
from muse_core.cli.arguments import split_lora
from muse_core.pipeline import DEFAULT_MODEL_DIR

from .test_lora_nodes import write_lora

FAST = ["--steps", "2", "--quiet"]


@pytest.fixture(scope="module")
def loras(tmp_path_factory):
    """style (transformer and text encoder) and other (transformer) LoRAs for the embedded model."""
    folder = tmp_path_factory.mktemp("loras")
    pipe = load_pipeline(DEFAULT_MODEL_DIR)
    write_lora(folder / "style.safetensors", {"transformer": pipe.transformer, "text_encoder": pipe.text_encoder.model})
    write_lora(folder / "other.safetensors", {"transformer": pipe.transformer}, seed=1)
    return folder


@pytest.fixture
def applied(monkeypatch):
    """The (file name, strength) of every LoRA the command applies, in order."""
    calls = []
    real = cli.arguments.apply_lora

    def spy(pipe, path, strength):
        calls.append((Path(path).name, strength))
        return real(pipe, path, strength)

    monkeypatch.setattr(cli.arguments, "apply_lora", spy)
    return calls


def run(args, capsys):
    code = cli.main([str(a) for a in args])
    return code, capsys.readouterr()


def generate(out, capsys, *lora_args):
    code, captured = run(["generate", "a red circle", *FAST, "-o", out, *lora_args], capsys)
    assert code == 0, captured.err
    return np.asarray(Image.open(out))


@pytest.mark.parametrize("text, path, strength", [
    ("style.safetensors", "style.safetensors", 1.0),
    ("style.safetensors:0.5", "style.safetensors", 0.5),
    ("runs/a:b/style.safetensors", "runs/a:b/style.safetensors", 1.0),  # a ':' inside the path
    ("runs/a:b/style.safetensors:-1.5", "runs/a:b/style.safetensors", -1.5),
    ("style.safetensors:x", "style.safetensors:x", 1.0),  # no number after the ':': all of it is the path
])
def test_file_and_strength_split_at_a_last_colon_followed_by_a_number(text, path, strength):
    assert split_lora(text) == (Path(path), strength)


def test_generate_applies_each_lora_in_order(loras, tmp_path, capsys, applied):
    base = generate(tmp_path / "base.png", capsys)
    assert np.array_equal(generate(tmp_path / "zero.png", capsys, "--lora", f"{loras / 'style.safetensors'}:0"), base)
    both = generate(tmp_path / "both.png", capsys, "--lora", f"{loras / 'style.safetensors'}:0.5",
                    "--lora", f"{loras / 'other.safetensors'}:-0.5")
    assert applied == [("style.safetensors", 0.0), ("style.safetensors", 0.5), ("other.safetensors", -0.5)]
    assert not np.array_equal(both, base)


def test_image_commands_take_loras(loras, tmp_path, capsys, applied):
    image = tmp_path / "in.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(image)
    code, captured = run(["img2img", image, "a blue square", *FAST, "-o", tmp_path / "out.png",
                          "--lora", loras / "style.safetensors"], capsys)
    assert code == 0, captured.err
    assert applied == [("style.safetensors", 1.0)]


@pytest.fixture
def no_loading(monkeypatch):
    def load_pipeline(*args, **kwargs):
        raise AssertionError("the model was loaded before the --lora argument was checked")

    monkeypatch.setattr(cli.arguments, "load_pipeline", load_pipeline)


@pytest.mark.parametrize("lora, message", [
    ("gone.safetensors", "gone.safetensors: no such LoRA file"),
    ("style.safetensors:nan", "the strength must be a number from -10 to 10, got nan; write FILE:STRENGTH"),
    ("style.safetensors:11", "the strength must be a number from -10 to 10, got 11"),
    ("style.safetensors:O.8", "read as .safetensors only.*meant as a strength: it must be a number"),
    ("lora.bin", "read as .safetensors only"),
    ("model.safetensors", "holds no LoRA weights"),
    ("broken.safetensors", "not a readable safetensors file"),
])
def test_bad_lora_arguments_are_refused_before_the_model_loads(loras, tmp_path, capsys, no_loading, lora, message):
    shutil.copy(loras / "style.safetensors", tmp_path / "style.safetensors")
    shutil.copy(DEFAULT_MODEL_DIR / "vqvae.safetensors", tmp_path / "model.safetensors")
    (tmp_path / "broken.safetensors").write_bytes(b"not a safetensors file")
    code, captured = run(["generate", "a red circle", "-o", tmp_path / "out.png", "--lora", tmp_path / lora], capsys)
    assert code == 2
    assert captured.err.startswith("muse: error: --lora") and len(captured.err.splitlines()) == 1
    assert re.search(message, captured.err), captured.err


def test_a_lora_for_another_model_is_refused_after_loading(tmp_path, capsys):
    write_lora(tmp_path / "foreign.safetensors", {"transformer": nn.Sequential(nn.Linear(3, 5))})
    code, captured = run(["generate", "a red circle", *FAST, "-o", tmp_path / "out.png",
                          "--lora", tmp_path / "foreign.safetensors"], capsys)
    assert code == 2 and "not a LoRA for this model" in captured.err and "transformer.0" in captured.err
    assert not (tmp_path / "out.png").exists()
