"""The `muse` command on a tiny random aMUSEd-layout folder (16 x 16 px native: 8 x 8 tokens, VQ factor 2)."""

import runpy
import shutil
import sys

import numpy as np
import pytest
from PIL import Image

from muse_core import cli, save_model

from .helpers import PIPE_UVIT, tiny_super_res

FAST = ["--steps", "2", "--quiet"]


@pytest.fixture
def model(amused_folder):
    return amused_folder[0]


@pytest.fixture
def cascade(model, clip_reranker_setup):
    """The tiny folder plus a 2x super-res stage (16 -> 32 px, sharing the VQ) and a CLIP reranker."""
    save_model(tiny_super_res(uvit={**PIPE_UVIT, "sample_size": 16}), model / "super_res.safetensors")
    shutil.copytree(clip_reranker_setup[2], model / "reranker")
    return model


def write_image(path, width=16, height=16, mode="RGB", seed=0):
    channels = len(mode)
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, channels), dtype=np.uint8)
    Image.fromarray(pixels.squeeze(-1) if channels == 1 else pixels, mode).save(path)
    return path


def pixels(path):
    return np.asarray(Image.open(path).convert("RGB"))


def run(args, capsys):
    code = cli.main([str(a) for a in args])
    return code, capsys.readouterr()


def test_generate_numbers_outputs_and_seeds_images_consecutively(model, tmp_path, capsys):
    out = tmp_path / "new" / "folder" / "cat.png"
    code, captured = run(["generate", "a cat", "--model", model, *FAST, "-n", 3, "--batch-size", 2, "-o", out], capsys)
    assert code == 0, captured.err
    names = ["cat.png", "cat_1.png", "cat_2.png"]
    assert sorted(p.name for p in out.parent.iterdir()) == names
    assert all(Image.open(out.parent / name).size == (16, 16) for name in names)  # native: sample_size 8 x factor 2
    assert f"wrote {out.parent / 'cat_2.png'} (seed 2)" in captured.out
    # Image k is seed + k: the third image alone, from seed 2.
    single = tmp_path / "single.png"
    assert run(["generate", "a cat", "--model", model, *FAST, "--seed", 2, "-o", single], capsys)[0] == 0
    assert np.array_equal(pixels(single), pixels(out.parent / "cat_2.png"))


def test_generate_size_precision_and_progress_bar(model, tmp_path, capsys):
    out = tmp_path / "wide.jpg"
    args = ["generate", "a cat", "--model", model, "--steps", 2, "--width", 24, "--height", 12, "-o", out,
            "--dtype", "bf16", "--attention", "math", "--negative", "blurry", "--temperature", "1,0.5",
            "--guidance-schedule", "linear"]
    code, captured = run(args, capsys)
    assert code == 0, captured.err
    assert Image.open(out).size == (24, 12)
    assert "generating" in captured.err and "2/2" in captured.err  # the tqdm bar


def test_model_folder_sampling_json_gives_the_defaults(model, tmp_path, capsys):
    explicit = tmp_path / "explicit.png"
    flags = ["--steps", 3, "--guidance", 2, "--temperature", "1,0", "--token-temperature", 0.5]
    assert run(["generate", "a cat", "--model", model, *flags, "-o", explicit], capsys)[0] == 0
    (model / "sampling.json").write_text(
        '{"steps": 3, "guidance_scale": 2.0, "temperature": [1.0, 0.0], "token_temperature": 0.5}')
    from_file = tmp_path / "from_file.png"
    code, captured = run(["generate", "a cat", "--model", model, "-o", from_file], capsys)
    assert code == 0 and "3/3" in captured.err
    assert np.array_equal(pixels(explicit), pixels(from_file))
    code, captured = run(["generate", "a cat", "--model", model, "--steps", 2, "-o", tmp_path / "two.png"], capsys)
    assert code == 0 and "2/2" in captured.err  # a flag wins over the file


def test_mask_schedule_flag_replaces_the_commands_default(model, tmp_path, capsys):
    def generate(name, *flags, command="generate", inputs=()):
        out = tmp_path / f"{name}.png"
        code, captured = run([command, *inputs, "a cat", "--model", model, "--steps", 3, "--quiet", *flags, "-o", out],
                             capsys)
        assert code == 0, captured.err
        return pixels(out)

    default = generate("default")  # cosine
    assert np.array_equal(default, generate("cosine", "--mask-schedule", "cosine"))
    assert not np.array_equal(default, generate("square", "--mask-schedule", "square"))
    image = write_image(tmp_path / "photo.png")
    inpaint = {"command": "inpaint", "inputs": (image, "--mask", write_image(tmp_path / "mask.png", mode="L"))}
    default = generate("inpaint", **inpaint)  # linear
    assert np.array_equal(default, generate("linear", "--mask-schedule", "linear", **inpaint))
    assert not np.array_equal(default, generate("cos", "--mask-schedule", "cosine", **inpaint))


def test_generate_with_reranking_and_super_resolution(cascade, tmp_path, capsys):
    out = tmp_path / "best.png"
    args = ["generate", "a cat", "--model", cascade, *FAST, "--sr", "--sr-steps", 2, "--rerank", 2, "-n", 2, "-o", out]
    code, captured = run(args, capsys)
    assert code == 0, captured.err
    assert Image.open(out).size == Image.open(tmp_path / "best_1.png").size == (32, 32)
    assert captured.out.count("best of 2") == 2


def test_super_res_uses_its_stages_settings_unless_a_flag_is_given(cascade, tmp_path, capsys, monkeypatch):
    (cascade / "sampling.json").write_text('{"guidance_scale": 3.0, "super_res": {"guidance_scale": 1.5}}')
    used = []  # (guidance of the base, of the super-res stage) per run
    for name in ("generate", "super_resolve"):
        real = getattr(cli.generate, name)
        monkeypatch.setattr(cli.generate, name, lambda *a, real=real, **k: used.append(k["options"].guidance_scale)
                            or real(*a, **k))
    for flags in ((), ("--guidance", 2)):
        code, captured = run(["generate", "a cat", "--model", cascade, *FAST, "--sr", "--sr-steps", 2, *flags,
                              "-o", tmp_path / "x.png", "--overwrite"], capsys)
        assert code == 0, captured.err
    assert used == [3.0, 1.5, 2.0, 2.0]


def test_inpaint_keeps_pixels_outside_the_mask(model, tmp_path, capsys):
    image = write_image(tmp_path / "photo.png")
    mask = np.zeros((16, 16), np.uint8)
    mask[4:10, 2:9] = 255
    Image.fromarray(mask).save(tmp_path / "mask.png")
    out = tmp_path / "fixed.png"
    code, captured = run(["inpaint", image, "--mask", tmp_path / "mask.png", "a cat", "--model", model, *FAST,
                          "-o", out], capsys)
    assert code == 0, captured.err
    keep = mask == 0
    assert np.array_equal(pixels(out)[keep], pixels(image)[keep])


def test_inpaint_reads_transparent_pixels_as_the_mask(model, tmp_path, capsys, monkeypatch):
    rgba = np.asarray(Image.open(write_image(tmp_path / "photo.png", mode="RGBA"))).copy()
    rgba[..., 3] = 255
    rgba[0:6, 0:6, 3] = 0  # the area to regenerate
    Image.fromarray(rgba).save(tmp_path / "photo.png")
    monkeypatch.chdir(tmp_path)  # the default output lands in the current folder
    code, captured = run(["inpaint", "photo.png", "a cat", "--model", model, *FAST], capsys)
    assert code == 0, captured.err
    keep = rgba[..., 3] == 255
    assert np.array_equal(pixels(tmp_path / "photo_inpaint.png")[keep], rgba[..., :3][keep])


def test_outpaint_grows_the_canvas_by_margins_rounded_up(model, tmp_path, capsys):
    image = write_image(tmp_path / "photo.png")
    out = tmp_path / "wide.png"
    code, captured = run(["outpaint", image, "a cat", "--left", 3, "--top", 2, "--model", model, *FAST, "-o", out],
                         capsys)
    assert code == 0, captured.err
    assert Image.open(out).size == (16 + 4, 16 + 2)


def test_mask_free_edit_with_a_mask_keeps_pixels_outside_it(model, tmp_path, capsys):
    image = write_image(tmp_path / "photo.png")
    mask = np.zeros((16, 16), np.uint8)
    mask[8:, :] = 255
    Image.fromarray(mask).save(tmp_path / "mask.png")
    out = tmp_path / "edited.png"
    args = ["edit", image, "a cat", "--iterations", 2, "--fraction", 0.3, "--mask", tmp_path / "mask.png",
            "--model", model, "--quiet", "-n", 2, "-o", out]
    code, captured = run(args, capsys)
    assert code == 0, captured.err
    for path in (out, tmp_path / "edited_1.png"):
        assert np.array_equal(pixels(path)[:8], pixels(image)[:8])


def test_mask_free_edit_defaults_come_from_the_models_sampling_json(model, tmp_path, capsys):
    image = write_image(tmp_path / "photo.png")

    def edit(name, *flags):
        out = tmp_path / f"{name}.png"
        code, captured = run(["edit", image, "a cat", "--model", model, *flags, "-o", out], capsys)
        assert code == 0, captured.err
        return pixels(out), captured.err

    explicit, _ = edit("explicit", "--iterations", 3, "--fraction", 0.3, "--guidance", 2, "--top-k", 1)
    (model / "sampling.json").write_text('{"mask_free": {"iterations": 3, "fraction": 0.3, "guidance_scale": 2.0, '
                                         '"top_k": 1}}')
    from_file, err = edit("from_file")
    assert np.array_equal(explicit, from_file) and "3/3" in err
    flagged, err = edit("flagged", "--iterations", 2)
    assert "2/2" in err and not np.array_equal(flagged, from_file)  # a flag wins over the file


def test_img2img_and_resize(model, tmp_path, capsys):
    image = write_image(tmp_path / "odd.png", width=17, height=15)
    out = tmp_path / "out.png"
    args = ["img2img", image, "a cat", "--strength", 0.5, "--model", model, *FAST, "-o", out]
    code, captured = run(args, capsys)
    assert code == 2 and "17x15, not a multiple of the model's VQ factor 2: use 16x16" in captured.err
    assert not out.exists()
    code, captured = run([*args, "--resize"], capsys)
    assert code == 0, captured.err
    assert Image.open(out).size == (16, 16)


def test_existing_files_are_never_replaced_without_overwrite(model, tmp_path, capsys):
    out = tmp_path / "keep.png"
    out.write_bytes(b"precious")
    code, captured = run(["generate", "a cat", "--model", model, *FAST, "-o", out], capsys)
    assert code == 2 and "keep.png already exists" in captured.err
    assert out.read_bytes() == b"precious"
    assert run(["generate", "a cat", "--model", model, *FAST, "-o", out, "--overwrite"], capsys)[0] == 0
    assert Image.open(out).size == (16, 16)


@pytest.mark.parametrize("command, message", [
    (["generate", "a cat", "--model", "{tmp}/missing"], "--model {tmp}/missing: no such folder"),
    (["generate", "a cat", "--steps", "0"], "argument --steps: must be from 1 to 1000, got 0"),
    (["generate", "  ", "--model", "{tmp}"], "the prompt is empty"),
    (["generate", "a cat", "-o", "{tmp}/out.xyz", "--model", "{tmp}"], "unknown image type '.xyz'"),
    (["inpaint", "{tmp}/missing.png", "--mask", "{tmp}/mask.png", "a cat"], "missing.png: no such image file"),
    (["inpaint", "{tmp}/photo.png", "--mask", "{tmp}/mask.png", "a cat"], "resize the mask to 16x16"),
    (["inpaint", "{tmp}/photo.png", "a cat"], "no --mask given and {tmp}/photo.png has no alpha channel"),
    (["outpaint", "{tmp}/photo.png", "a cat"], "give at least one of --left, --right, --top, --bottom"),
])
def test_bad_input_is_one_line_and_exit_code_2(command, message, tmp_path, capsys):
    write_image(tmp_path / "photo.png")
    write_image(tmp_path / "mask.png", width=8, height=8, mode="L")
    code, captured = run([part.format(tmp=tmp_path) for part in command], capsys)
    assert code == 2
    assert message.format(tmp=tmp_path) in captured.err.strip().splitlines()[-1]
    assert "Traceback" not in captured.err and not list(tmp_path.glob("out*"))


def test_missing_default_model_is_explained(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(cli.arguments, "DEFAULT_MODEL_DIR", tmp_path / "default_model")
    code, captured = run(["generate", "a cat", "-o", tmp_path / "out.png"], capsys)
    assert code == 2 and "built-in model is not installed" in captured.err and "--model" in captured.err


def test_model_stages_that_are_missing_are_named(model, tmp_path, capsys):
    code, captured = run(["generate", "a cat", "--model", model, *FAST, "--sr", "-o", tmp_path / "a.png"], capsys)
    assert code == 2 and "has no super-resolution stage (super_res/)" in captured.err
    code, captured = run(["generate", "a cat", "--model", model, "--rerank", 2, "-o", tmp_path / "a.png"], capsys)
    assert code == 2 and "--rerank needs a CLIP model in" in captured.err
    assert not (tmp_path / "a.png").exists()


def test_python_dash_m_runs_the_command(monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["muse", "--help"])
    with pytest.raises(SystemExit) as exit_info:
        runpy.run_module("muse_core", run_name="__main__")
    assert exit_info.value.code == 0 and "inpaint" in capsys.readouterr().out
