"""Live previews follow ComfyUI's preview setting, read at every run: ``none`` decodes nothing per step, ``latent2rgb``
and ``auto`` colour each token from a table fitted once per VQ, ``taesd`` decodes every step in full."""

from __future__ import annotations

import enum
import weakref
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from muse_core import preview as muse_preview
from muse_core.models.vq import VQConfig, VQTokenizer

from .comfy_harness import decoding, pack_module

STEPS, BATCH = 4, 2
FINAL_DECODE = (BATCH, 16, 16)  # the node's output images: the embedded model at 64 px has 16 x 16 tokens
STEP_DECODE = (1, 16, 16)  # a full-decode preview: the first image only


class LatentPreviewMethod(enum.Enum):  # comfy.cli_args.LatentPreviewMethod
    NoPreviews = "none"
    Auto = "auto"
    Latent2RGB = "latent2rgb"
    TAESD = "taesd"


@pytest.fixture(scope="module")
def embedded(pack):
    return pack.NODE_CLASS_MAPPINGS["MuseModelLoader"]().load("embedded", "auto", "auto", "auto")


@pytest.fixture(scope="module")
def conditioning(pack, embedded):
    return pack.NODE_CLASS_MAPPINGS["MuseTextEncode"]().encode(embedded[2], "two red circles on a blue background", "")[0]


@pytest.fixture
def comfyui(pack, monkeypatch):
    """ComfyUI stood in for: a recorded progress bar per node run, and ``comfy.cli_args.args``, whose
    ``preview_method`` a test sets as ``--preview-method`` or, per prompt, ``latent_preview.set_preview_method`` do."""
    comfy_env = pack_module("comfy_env")
    bars = []

    class ProgressBar:
        def __init__(self, total):
            self.total, self.updates = total, []
            bars.append(self)

        def update_absolute(self, value, total=None, preview=None):
            self.updates.append((value, preview))

    args = SimpleNamespace(preview_method=LatentPreviewMethod.NoPreviews)  # ComfyUI's default
    monkeypatch.setattr(comfy_env, "comfy_utils", SimpleNamespace(ProgressBar=ProgressBar))
    monkeypatch.setattr(comfy_env, "cli_args", SimpleNamespace(args=args))
    return SimpleNamespace(bars=bars, args=args)


@pytest.fixture
def decodes(monkeypatch):
    """The shapes of the ids every VQ decode is called with."""
    calls = []
    decode = VQTokenizer.decode

    def counted(self, ids, *args, **kwargs):
        calls.append(tuple(ids.shape))
        return decode(self, ids, *args, **kwargs)

    monkeypatch.setattr(VQTokenizer, "decode", counted)
    return calls


def sample(pack, embedded, conditioning):
    return pack.NODE_CLASS_MAPPINGS["MuseSampler"]().sample(*embedded[:2], conditioning, 64, 64, BATCH, 1.0,
                                                            **decoding(steps=STEPS))


def previews(bar) -> list:
    """The preview images of a progress bar's updates (None where an update had none)."""
    assert [value for value, _ in bar.updates] == list(range(1, STEPS + 1)), "the bar advances every step"
    return [None if shown is None else shown[1] for _, shown in bar.updates]


def test_none_decodes_nothing_per_step_and_sends_no_preview(pack, embedded, conditioning, comfyui, decodes):
    comfyui.args.preview_method = LatentPreviewMethod.NoPreviews
    sample(pack, embedded, conditioning)
    assert decodes == [FINAL_DECODE]
    assert previews(comfyui.bars[0]) == [None] * STEPS


@pytest.mark.parametrize("method", [LatentPreviewMethod.Latent2RGB, LatentPreviewMethod.Auto])
def test_colour_previews_fit_once_and_never_decode_per_step(pack, embedded, conditioning, comfyui, decodes,
                                                            monkeypatch, method):
    monkeypatch.setattr(muse_preview, "_colours", weakref.WeakKeyDictionary())  # this VQ not fitted yet
    comfyui.args.preview_method = method
    sample(pack, embedded, conditioning)
    fit, final = decodes[:-1], decodes[-1]
    assert fit and all(shape[1:] == (muse_preview.FIT_GRID,) * 2 for shape in fit), "only the one fit decodes"
    assert final == FINAL_DECODE
    decodes.clear()
    _, images = sample(pack, embedded, conditioning)
    assert decodes == [FINAL_DECODE], "the second run reuses the fitted colours"
    shown = previews(comfyui.bars[1])
    assert all(image.size == (64, 64) for image in shown), "enlarged to the image's size"
    # the checkerboard's two greys exactly (a decoded image may hold a few neutral pixels of its own)
    levels = [int(grey * 255) for grey in pack_module("previews").CHECKER]
    grey = [np.mean((np.ptp(pixels, axis=2) == 0) & np.isin(pixels[..., 0], levels))
            for pixels in (np.asarray(image, dtype=np.int16) for image in shown)]
    assert grey[0] > 0.5 and grey[-1] == 0, "still-masked cells are a grey checkerboard, and none is left at the end"
    last, final_image = np.asarray(shown[-1], dtype=np.float32) / 255, images[0].numpy()
    colour_error = np.abs(last.mean(axis=(0, 1)) - final_image.mean(axis=(0, 1))).max()
    assert colour_error < 0.06, "the last preview has the image's mean colour (measured: off by 0.042)"


def test_taesd_decodes_every_preview_in_full(pack, embedded, conditioning, comfyui, decodes):
    comfyui.args.preview_method = LatentPreviewMethod.TAESD
    _, images = sample(pack, embedded, conditioning)
    assert decodes == [STEP_DECODE] * STEPS + [FINAL_DECODE]
    last = np.asarray(previews(comfyui.bars[0])[-1], dtype=np.int16)
    # two decodes of the same ids (the last step's and the final one), equal up to float rounding: one 8-bit level
    image = (images[0].numpy() * 255).round().astype(np.int16)
    assert np.abs(last - image).max() <= 1, "the last preview is the image"


def test_the_setting_is_read_at_every_run(pack, embedded, conditioning, comfyui):
    """One process, as in ComfyUI: the front end's per-prompt choice rewrites args.preview_method between prompts."""
    for method in (LatentPreviewMethod.NoPreviews, LatentPreviewMethod.Latent2RGB, LatentPreviewMethod.NoPreviews):
        comfyui.args.preview_method = method
        sample(pack, embedded, conditioning)
    sent = [[image is not None for image in previews(bar)] for bar in comfyui.bars]
    assert sent == [[False] * STEPS, [True] * STEPS, [False] * STEPS]


@pytest.mark.parametrize("rgb", [(1, 0, 0), (0, 1, 0), (0, 0, 1), (1, 1, 0), (1, 1, 1), (0, 0, 0)])
def test_code_colours_reproduce_flat_images(embedded, rgb):
    """A flat image's tokens, coloured from the table, have the mean colour of their full decode within 0.08 per
    channel (measured: at most 0.051; a linear map from codebook vectors alone misses by up to 0.35)."""
    vq = embedded[1].model
    ids = vq.encode(torch.tensor(rgb, dtype=torch.float32)[None, :, None, None].expand(1, 3, 64, 64))
    cheap = muse_preview.colour_preview(vq, ids).mean(dim=(2, 3))[0]
    full = vq.decode(ids).mean(dim=(2, 3))[0]
    assert (cheap - full).abs().max() < 0.08, (cheap, full)


def test_colour_preview_is_enlarged_to_the_image_but_not_past_comfyuis_preview_size(pack, comfyui):
    """aMUSEd-like factor 16: a 16 x 16 grid shows at the image's 256 px, a 64 x 64 grid (1024 px) at 512 px."""
    previews_module = pack_module("previews")
    vq = VQTokenizer(VQConfig(block_out_channels=(8,) * 5, down_block_types=("DownEncoderBlock2D",) * 5,
                              up_block_types=("UpDecoderBlock2D",) * 5, norm_num_groups=4, latent_channels=4,
                              num_vq_embeddings=16)).eval()
    draw = previews_module.preview_drawer(vq, 16, "latent2rgb")
    assert draw(torch.randint(0, 17, (1, 16, 16))).size == (256, 256)
    assert draw(torch.randint(0, 17, (1, 64, 64))).size == (512, 512)
