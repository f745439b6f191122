"""Cheap previews of token grids: one colour per code, so a preview costs a table lookup instead of a VQ decode.

The colour of a code is the mean colour of a uniform grid of that code, decoded once per VQ and cached. A large
codebook (aMUSEd's 8192 codes) is too dear to decode whole on a CPU: up to ``FIT_CODES`` codes, spread over the
codebook, are decoded, and a least-squares linear map from codebook vectors to those colours gives the others
(ComfyUI's "latent2rgb" idea). Measured on the embedded VQ: a linear map alone misses flat red, green and blue by up
to 0.35 per channel, the decoded colours by 0.05, which is why decoded codes keep their own colour.
"""

from __future__ import annotations

import weakref

import torch

FIT_CODES = 256  # codes decoded per VQ: every code of the embedded VQ; 16 full-size decodes' work for aMUSEd
FIT_GRID = 4  # tokens per side of each code's uniform grid: on 1 or 2 the zero padding at the borders sets the colour
_BATCH = 64  # codes decoded at once, to bound the decoder's memory

_colours: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # VQ -> its code colours, freed with the VQ


@torch.no_grad()
def fit_code_colours(vq) -> torch.Tensor:
    """``[codebook_size, 3]`` colours in [0, 1] on the CPU: decoded for up to ``FIT_CODES`` codes, the least-squares
    linear map from codebook vectors (with a bias) fitted on those for the rest."""
    size = vq.codebook_size
    decoded = torch.linspace(0, size - 1, min(size, FIT_CODES)).round().long()
    grids = decoded[:, None, None].expand(-1, FIT_GRID, FIT_GRID).to(vq.device)
    measured = torch.cat([vq.decode(batch).mean(dim=(2, 3)).float().cpu() for batch in grids.split(_BATCH)])
    codebook = vq.quantize.embedding.weight.detach().float().cpu()
    features = torch.cat([codebook, torch.ones(size, 1)], dim=1)
    rgb_map = torch.linalg.lstsq(features[decoded], measured).solution  # [embed_dim + 1, 3]
    colours = (features @ rgb_map).clamp_(0, 1)
    colours[decoded] = measured
    return colours


def code_colours(vq) -> torch.Tensor:
    """The colours of ``vq``'s codes, fitted on the first call for this VQ object."""
    if vq not in _colours:
        _colours[vq] = fit_code_colours(vq)
    return _colours[vq]


def colour_preview(vq, ids: torch.Tensor) -> torch.Tensor:
    """``ids [B, h, w]`` (valid codes) -> ``[B, 3, h, w]`` images in [0, 1] on the CPU: one pixel per token."""
    return code_colours(vq)[ids.cpu()].permute(0, 3, 1, 2)
