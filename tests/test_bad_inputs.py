"""The project's battery of hostile inputs to the API and the `muse` command: each is refused early, with a
message that names the problem, and no file is ever half-written or lost. (Model files and node inputs:
test_bad_model_files.py and test_bad_node_inputs.py.)"""

import math
import struct
import subprocess
import sys
import zlib

import numpy as np
import pytest
import safetensors.torch
import torch
from PIL import Image

from muse_core import cli
from muse_core.editing import edit_tokens, inpaint, outpaint
from muse_core.image_files import read_image, read_mask
from muse_core.limits import MAX_IMAGES, MAX_PIXELS_PER_SIDE, MAX_SEED
from muse_core.loading import save_model
from muse_core.output import OutputError, atomic_output
from muse_core.pipeline import load_pipeline
from muse_core.sampling import SamplingOptions, generate, img2img

NAN, INF = math.nan, math.inf


@pytest.fixture
def pipe(amused_folder):
    return load_pipeline(amused_folder[0])


def run_cli(args, capsys):
    code = cli.main([str(a) for a in args])
    return code, capsys.readouterr().err


def refuse_model_loading(monkeypatch):
    """Make loading a model an error, to prove a check runs before it."""
    def fail(*args, **kwargs):
        raise AssertionError("the model was loaded before the input was checked")
    monkeypatch.setattr(cli.arguments, "load_pipeline", fail)


# ---- 1. saving is atomic ----


def test_failed_write_keeps_the_existing_file_and_leaves_no_partial_file(tmp_path):
    target = tmp_path / "out.png"
    target.write_bytes(b"the user's earlier image")
    with pytest.raises(OutputError, match=r"cannot write .*out.png: No space left on device; nothing was written "
                                          r"\(the existing file is unchanged\)"):
        with atomic_output(target, overwrite=True) as temporary:
            temporary.write_bytes(b"half an ima")
            raise OSError(28, "No space left on device")
    assert target.read_bytes() == b"the user's earlier image"
    assert [p.name for p in tmp_path.iterdir()] == ["out.png"]


def test_a_file_that_appears_meanwhile_is_not_replaced_without_overwrite(tmp_path):
    target = tmp_path / "out.png"
    with pytest.raises(OutputError, match="already exists"):
        with atomic_output(target) as temporary:
            temporary.write_bytes(b"new")
            target.write_bytes(b"appeared meanwhile")
    assert target.read_bytes() == b"appeared meanwhile" and len(list(tmp_path.iterdir())) == 1


def test_file_size_limit_mid_save_keeps_the_overwritten_image(amused_folder, tmp_path):
    """A real failed write: RLIMIT_FSIZE makes the PNG encoder's write fail half-way (EFBIG)."""
    (tmp_path / "outputs").mkdir()
    target = tmp_path / "outputs" / "out.png"
    Image.new("RGB", (16, 16), (1, 2, 3)).save(target)
    before = target.read_bytes()
    limit = "import resource; resource.setrlimit(resource.RLIMIT_FSIZE, (200, 200)); "
    code = (f"{limit}import sys; from muse_core import cli; sys.exit(cli.main(['generate', 'a cat', '--model', "
            f"{str(amused_folder[0])!r}, '--steps', '1', '--quiet', '--overwrite', '--width', '256', '--height', "
            f"'256', '-o', {str(target)!r}]))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.returncode == 1, result.stderr
    assert result.stderr.strip().count("\n") == 0  # one line, no traceback
    assert "File too large; nothing was written (the existing file is unchanged)" in result.stderr
    assert target.read_bytes() == before and [p.name for p in target.parent.iterdir()] == ["out.png"]


# ---- 2. NaN and infinity ----


@pytest.mark.parametrize("field, value", [
    ("guidance_scale", NAN), ("guidance_scale", INF), ("temperature", NAN), ("temperature", (2.0, INF)),
    ("token_temperature", NAN), ("token_temperature", INF), ("aesthetic_score", NAN), ("steps", 2.5),
])
def test_sampling_options_refuse_non_finite_values(field, value):
    with pytest.raises(ValueError, match=f"^{field} must be"):
        SamplingOptions(**{field: value})


def test_strength_and_fraction_refuse_nan(pipe):
    ids = torch.zeros(1, 8, 8, dtype=torch.long)
    with pytest.raises(ValueError, match=r"strength must be a finite number"):
        img2img(pipe.transformer, pipe.text_encoder, ids, "a cat", strength=NAN, height=16, width=16)
    with pytest.raises(ValueError, match=r"fraction must be a finite number"):
        edit_tokens(pipe.transformer, pipe.text_encoder, ids, "a cat", height=16, width=16, fraction=NAN)


# ---- 3. upper bounds in the API ----


def test_api_limits(pipe):
    kw = dict(height=16, width=16, downsample_factor=2)
    with pytest.raises(ValueError, match=f"num_images_per_prompt must be from 1 to {MAX_IMAGES}, got 10000000"):
        generate(pipe.transformer, pipe.text_encoder, "a cat", num_images_per_prompt=10**7, **kw)
    with pytest.raises(ValueError, match=r"the number of images \(prompts x num_images_per_prompt\)"):
        generate(pipe.transformer, pipe.text_encoder, ["a cat"] * 10, num_images_per_prompt=101, **kw)
    for seed in (-1, 2**70, MAX_SEED + 1):
        with pytest.raises(ValueError, match=f"seed must be from 0 to {MAX_SEED}"):
            SamplingOptions(seed=seed)
    image = torch.rand(1, 3, 16, 16)
    with pytest.raises(ValueError, match="the outpainted width=100000016 is 50000008 tokens per side"):
        outpaint(pipe.transformer, pipe.vq, pipe.text_encoder, image, "a cat", left=10**8)


def test_cli_and_node_ranges_come_from_the_api_limits():
    from nodes.widgets import seed  # noqa: PLC0415  (nodes import only when the pack is on the path, as here)

    assert seed()[1]["max"] == MAX_SEED
    assert cli.build_parser().parse_args(["generate", "x", "--seed", str(MAX_SEED)]).seed == MAX_SEED
    with pytest.raises(SystemExit):
        cli.build_parser().parse_args(["generate", "x", "--seed", str(MAX_SEED + 1)])


# ---- 4. masks and images out of range ----


@pytest.mark.parametrize("mask, message", [
    (torch.full((16, 16), 255.0), r"the mask must have values in \[0, 1\], got values from 255 to 255"),
    (torch.full((16, 16), -1.0), r"the mask must have values in \[0, 1\]"),
    (torch.full((16, 16), NAN), "the mask: NaN values found"),
])
def test_inpaint_refuses_masks_out_of_range(pipe, mask, message):
    with pytest.raises(ValueError, match=message):
        inpaint(pipe.transformer, pipe.vq, pipe.text_encoder, torch.rand(1, 3, 16, 16), mask, "a cat")


def test_images_with_nan_are_refused(pipe):
    image = torch.rand(1, 3, 16, 16)
    image[0, 1, 3, 4] = NAN
    with pytest.raises(ValueError, match="the input images: NaN values found"):
        inpaint(pipe.transformer, pipe.vq, pipe.text_encoder, image, torch.ones(16, 16), "a cat")
    with pytest.raises(ValueError, match="the images to VQ-encode: NaN values found"):
        pipe.vq.encode(image)


# ---- 5. image files ----


def png_header_only(path, width, height):
    """A PNG whose header claims ``width`` x ``height`` (no pixel data): Pillow opens it lazily from the header."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IEND", b""))
    return path


def test_huge_image_is_refused_from_its_header_before_loading(tmp_path, monkeypatch, capsys):
    refuse_model_loading(monkeypatch)
    image = png_header_only(tmp_path / "huge.png", 10000, 10000)
    code, err = run_cli(["img2img", image, "a cat", "-o", tmp_path / "o.png"], capsys)
    assert code == 2 and err.strip() == (f"muse: error: {image} is 10000x10000; no model tokenizes more than "
                                         f"{MAX_PIXELS_PER_SIDE} pixels per side: shrink or crop it first.")


def test_decompression_bomb_is_a_clear_error(tmp_path, monkeypatch, capsys):
    refuse_model_loading(monkeypatch)
    image = png_header_only(tmp_path / "bomb.png", 15000, 15000)
    code, err = run_cli(["inpaint", image, "a cat", "-o", tmp_path / "o.png"], capsys)
    assert code == 2 and "bomb.png: the image is too large to be used" in err and "Traceback" not in err


def test_16_bit_greyscale_png_is_read_to_scale(tmp_path):
    levels = np.array([[0, 16384, 32768, 65535]], dtype=np.uint16).repeat(4, axis=0)
    Image.fromarray(levels).save(tmp_path / "grey16.png")
    assert Image.open(tmp_path / "grey16.png").mode == "I;16"
    image, alpha = read_image(tmp_path / "grey16.png")
    expected = torch.from_numpy(levels.astype(np.float32) / 65535)
    assert alpha is None and image.shape == (1, 3, 4, 4)
    torch.testing.assert_close(image[0], expected.expand(3, -1, -1), rtol=0, atol=1e-7)  # float32 rounding only
    torch.testing.assert_close(read_mask(tmp_path / "grey16.png"), expected, rtol=0, atol=1e-7)


def test_a_folder_given_as_image_has_its_own_message(tmp_path, monkeypatch, capsys):
    refuse_model_loading(monkeypatch)
    code, err = run_cli(["edit", tmp_path, "a cat", "-o", tmp_path / "o.png"], capsys)
    assert code == 2 and f"{tmp_path} is a folder, not an image file" in err


# ---- 6. text that is not valid UTF-8 ----


def test_undecodable_prompt_bytes_are_refused_before_loading(tmp_path, monkeypatch, capsys):
    refuse_model_loading(monkeypatch)
    prompt = b"a red circle \xff\xfe".decode("utf-8", "surrogateescape")  # what Python makes of such argv bytes
    code, err = run_cli(["generate", prompt, "-o", tmp_path / "o.png"], capsys)
    assert code == 2 and "the prompt is not valid UTF-8 text (an undecodable byte at character 13)" in err
    code, err = run_cli(["generate", "a cat", "--negative", prompt, "-o", tmp_path / "o.png"], capsys)
    assert code == 2 and "--negative is not valid UTF-8 text" in err


def test_text_encoder_refuses_undecodable_text(pipe):
    with pytest.raises(ValueError, match="a prompt is not valid UTF-8 text"):
        pipe.text_encoder.encode(["a cat", "bad \udcff"])


def test_save_model_is_atomic_too(pipe, tmp_path, monkeypatch):
    target = save_model(pipe.vq, tmp_path / "saved" / "vq.safetensors")
    before = target.read_bytes()

    def half_write(tensors, filename, metadata=None):
        open(filename, "wb").write(b"half")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(safetensors.torch, "save_file", half_write)
    with pytest.raises(OutputError, match="No space left on device; nothing was written"):
        save_model(pipe.vq, target)
    assert target.read_bytes() == before and [p.name for p in target.parent.iterdir()] == ["vq.safetensors"]
