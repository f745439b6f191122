"""Train a complete Muse cascade into a model folder that ``load_pipeline`` reads.

Stages, each resumable (a stage whose output exists is skipped; an interrupted stage continues from
its checkpoint in ``work_dir/<stage>/``):

1. ``vqvae``: VQ tokenizer at the base resolution;
2. ``super_res_vqvae``: VQ tokenizer at the super-res resolution;
3. ``transformer``: base masked-token transformer, with its T5 text encoder trained jointly (and, if the
   preset has a ``transformer_restart``, a second phase from those weights with a fresh optimizer);
4. ``super_res``: super-res transformer on (low-res ids, high-res ids), text encoder frozen;
5. ``reranker``: a small CLIP model, contrastive with hard negatives.

With the transformer, the preset's recommended sampling settings go to ``sampling.json``.

The data is any caption folder (see ``training.data``); by default the procedural shapes dataset is
generated into ``work_dir/data``. ``PRESETS["shipped"]`` is the embedded default model. On that generated
data a preset may take some stages from the embedded model instead of training them (``reused_stages``: e.g.
its VQs, which tokenise any shapes data alike), so one command retrains only what its recipe changes.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import torch
import torch.distributed as dist
from safetensors.torch import load_file, save_file

from ..loading import load_model
from ..models.super_res import SuperResConfig, SuperResTransformer
from ..models.uvit import MaskedTokenUViT, UViTConfig
from ..models.vq import VQTokenizer
from ..output import atomic_output
from ..pipeline import DEFAULT_MODEL_DIR, SAMPLING_FILE
from ..text.t5 import load_t5_encoder
from .data import (
    CaptionFolder,
    RandomCrops,
    TokenDataset,
    boundary_tokens,
    collate,
    encode_images,
    object_token_masks,
    reordered_captions,
)
from .loop import TrainConfig, setup_distributed, train
from .muse import MaskedTokenObjective, balanced_code_weights
from .text_encoder import new_t5_encoder
from .tokenizer import build_word_tokenizer
from .vq import VQObjective, small_vq_config

STAGES = ("vqvae", "super_res_vqvae", "transformer", "super_res", "reranker")


@dataclasses.dataclass
class CascadePreset:
    base_size: int  # base images are base_size^2 pixels; super-res doubles that
    dataset_size: int  # images generated when no data folder is given
    codebook_size: int
    vq_channels: int
    text_width: int  # T5 d_model = transformer's text and pooled width
    text_layers: int
    width: int  # transformer hidden size (64-wide heads)
    layers: int
    sr_layers: int
    lowres_width: int
    lowres_layers: int
    clip_width: int
    clip_layers: int
    vq: TrainConfig
    sr_vq: TrainConfig
    transformer: TrainConfig
    super_res: TrainConfig
    reranker: TrainConfig
    # A warm restart of the base transformer (and its T5) after ``transformer``: from its weights, with a fresh
    # AdamW and this config's own warmup and cosine, batches and masks drawn with seed + 1 (checkpoints in
    # work_dir/transformer_restart/). None: one phase.
    transformer_restart: TrainConfig | None = None
    # A last phase for inpainting, from the weights before it (fresh AdamW, seed + 2, work_dir/transformer_inpaint/):
    # a share ``inpaint_object_mask_share`` of the images masks one object's box, as inpainting repaints it
    # (MaskedTokenObjective object_mask_share; needs a shapes dataset's scenes). None: no such phase.
    transformer_inpaint: TrainConfig | None = None
    inpaint_object_mask_share: float = 0.25
    # the chance that such an image of a pair is captioned naming its objects the other way round (a hole on
    # either side; MaskedTokenObjective object_caption_reorder). Not shipped: at 0.5 inpainting rose from 66.7%
    # to 75.6% (seed 0), but single objects fell to 92.9% and the reranker's gain to 6.6 points (evaluation.md)
    inpaint_caption_reorder: float = 0.0
    sampling: dict = dataclasses.field(default_factory=dict)  # written to the model's sampling.json
    # Fixes measured on the shapes data (docs/evaluation.md); the defaults are the plain reference recipe:
    vq_patch_consistency: float = 0.0  # the base VQ's VQObjective patch_consistency
    sr_vq_patch_consistency: float = 0.0  # the same for the super-res VQ
    vq_boundary_invariance: float = 0.0  # the base VQ's VQObjective boundary_invariance
    base_positions: str | None = None  # the base U-ViT's position_embedding_type; the super-res one has sincos
    text_lr_scale: float = 1.0  # the T5's learning rate relative to the base transformer's
    text_position_bias_std: float | None = None  # init of the T5's relative position bias (None: transformers')
    clip_speck_negatives: bool = False  # the reranker's ClipObjective speck_negatives
    shape_placement: str = "free"  # where the generated shapes dataset puts shapes (data.shapes.PLACEMENTS)
    base_grid_res_blocks: int = 0  # the base U-ViT's grid_res_blocks (ConvNeXt blocks at the full token grid)
    code_weight_power: float = 0.0  # the base objective weighs each code by frequency^-power (balanced_code_weights)
    boundary_mask_share: float = 0.0  # the base objective's MaskedTokenObjective boundary_mask_share
    image_mean_loss: bool = False  # the base objective's MaskedTokenObjective image_mean_loss
    sr_add_lowres_to_tokens: bool = False  # the super-res model's SuperResConfig add_lowres_to_tokens
    # stages copied from the embedded model (DEFAULT_MODEL_DIR) instead of trained, when the data is the
    # generated shapes dataset (its VQs tokenise any shapes data alike); with a data folder, all are trained
    reused_stages: tuple[str, ...] = ()

    @property
    def sr_size(self) -> int:
        return 2 * self.base_size


PRESETS: dict[str, CascadePreset] = {
    # The first embedded model (2026-11): 64 px base -> 128 px super-res on free-placement shapes. The
    # embedded model still uses its two VQs and its reranker (``shipped`` reuses them).
    "v1": CascadePreset(
        base_size=64, dataset_size=20_000, codebook_size=256, vq_channels=32, text_width=192, text_layers=2,
        width=192, layers=4, sr_layers=2, lowres_width=128, lowres_layers=1, clip_width=128, clip_layers=2,
        vq=TrainConfig(steps=2400, batch_size=16, lr=1e-3, warmup_steps=50, checkpoint_every=200),
        sr_vq=TrainConfig(steps=4800, batch_size=8, lr=1e-3, warmup_steps=50, checkpoint_every=400),
        transformer=TrainConfig(steps=19500, batch_size=32, lr=1e-3, warmup_steps=100, checkpoint_every=250),
        super_res=TrainConfig(steps=1200, batch_size=32, lr=1e-3, warmup_steps=50, checkpoint_every=200),
        # fp32: this small CLIP steps ~1.5x faster without bf16 autocast on an AMX CPU (measured fwd+bwd)
        reranker=TrainConfig(steps=2400, batch_size=64, lr=5e-4, warmup_steps=50, checkpoint_every=200,
                             precision="fp32"),
        sampling={"steps": 24, "guidance_scale": 3.0, "temperature": [1.0, 0.0], "token_temperature": 0.5},
        vq_patch_consistency=1.0, base_positions="sincos", text_lr_scale=0.1, text_position_bias_std=2.0,
        clip_speck_negatives=True,
    ),
    # Seconds on a CPU: for tests and for checking a data folder before a long run.
    "tiny": CascadePreset(
        base_size=16, dataset_size=64, codebook_size=32, vq_channels=8, text_width=32, text_layers=1,
        width=64, layers=1, sr_layers=1, lowres_width=32, lowres_layers=1, clip_width=32, clip_layers=1,
        vq=TrainConfig(steps=4, batch_size=8, warmup_steps=1),
        sr_vq=TrainConfig(steps=4, batch_size=8, warmup_steps=1),
        transformer=TrainConfig(steps=4, batch_size=8, warmup_steps=1),
        super_res=TrainConfig(steps=4, batch_size=8, warmup_steps=1),
        reranker=TrainConfig(steps=4, batch_size=8, warmup_steps=1),
        transformer_restart=TrainConfig(steps=2, batch_size=8, warmup_steps=1),
        transformer_inpaint=TrainConfig(steps=2, batch_size=8, warmup_steps=1), inpaint_caption_reorder=0.5,
        # so that the tests run the options end to end
        vq_patch_consistency=1.0, sr_vq_patch_consistency=1.0, base_positions="sincos", text_lr_scale=0.1,
        text_position_bias_std=2.0, clip_speck_negatives=True, shape_placement="slots", base_grid_res_blocks=1,
        code_weight_power=0.5, vq_boundary_invariance=1.0, boundary_mask_share=0.5,
        image_mean_loss=True, sr_add_lowres_to_tokens=True,
    ),
}
# The embedded default model (muse_core/default_model, v2, 2026-12-04): v1's sizes, VQs and reranker, on slot
# data, which puts the objects where the first sampling steps expect them, with the options that passed the
# boundary-infill gate and a super-res model that reads the low-res layout directly (docs/evaluation.md). Its
# base: 16000 steps, then a warm restart of 12000 at 0.3x the peak learning rate, then 3000 steps with a
# quarter of the images masked as inpainting masks them (inpainting 47% -> 67%).
PRESETS["shipped"] = dataclasses.replace(
    PRESETS["v1"], shape_placement="slots", base_grid_res_blocks=1,
    transformer=dataclasses.replace(PRESETS["v1"].transformer, steps=16000),
    transformer_restart=dataclasses.replace(PRESETS["v1"].transformer, steps=12000, lr=3e-4),
    transformer_inpaint=dataclasses.replace(PRESETS["v1"].transformer, steps=3000, lr=1e-4),
    reused_stages=("vqvae", "super_res_vqvae", "reranker"), boundary_mask_share=0.5, image_mean_loss=True,
    sr_add_lowres_to_tokens=True,
    # v1's token temperature 0.5 for the base (0.1 drew cleaner shapes early in training, 0.5 is better for
    # the final base: 24 steps 86.8% against 84.9%, four seeds); super-res at 0.1 and without guidance: at
    # guidance 3 it dropped objects of the base image; mask-free editing greedy (top-k 1) at guidance 3: the
    # paper's top-k 3 at guidance 4 recoloured a third of the objects (docs/evaluation.md)
    sampling=PRESETS["v1"].sampling | {"super_res": {"guidance_scale": 1.0, "token_temperature": 0.1},
                                       "mask_free": {"guidance_scale": 3.0, "top_k": 1}},
)


def transformer_config(preset: CascadePreset, grid: int, num_layers: int,
                       position_embedding_type: str | None = None, grid_res_blocks: int = 0) -> UViTConfig:
    """A small aMUSEd-style U-ViT; the conv stages halve the grid so attention runs on (grid/2)^2 tokens."""
    channels = preset.width // 2
    return UViTConfig(
        hidden_size=preset.width, use_bias=False, cond_embed_dim=preset.text_width, micro_cond_encode_dim=16,
        micro_cond_embed_dim=80, encoder_hidden_size=preset.text_width, vocab_size=preset.codebook_size + 1,
        codebook_size=preset.codebook_size, in_channels=channels, block_out_channels=channels, num_res_blocks=1,
        downsample=True, upsample=True, block_num_heads=max(1, channels // 64), num_hidden_layers=num_layers,
        num_attention_heads=max(1, preset.width // 64), intermediate_size=3 * preset.width, sample_size=grid,
        position_embedding_type=position_embedding_type, grid_res_blocks=grid_res_blocks,
    )


def super_res_config(preset: CascadePreset, grid: int) -> SuperResConfig:
    return SuperResConfig(
        lowres_codebook_size=preset.codebook_size, lowres_hidden_size=preset.lowres_width,
        lowres_num_layers=preset.lowres_layers, lowres_num_heads=max(1, preset.lowres_width // 64),
        lowres_intermediate_size=3 * preset.lowres_width, add_lowres_to_tokens=preset.sr_add_lowres_to_tokens,
        transformer=transformer_config(preset, grid, preset.sr_layers, position_embedding_type="sincos"),
    )


def train_cascade(out_dir: str | Path, work_dir: str | Path, preset: str | CascadePreset = "shipped",
                  data_dir: str | Path | None = None, stages=STAGES, seed: int = 0, progress: bool = True) -> Path:
    """Train the requested ``stages`` of a cascade into ``out_dir``; returns ``out_dir``."""
    preset = PRESETS[preset] if isinstance(preset, str) else preset
    unknown = set(stages) - set(STAGES)
    if unknown:
        raise ValueError(f"unknown stages {sorted(unknown)}; choose from {list(STAGES)}.")
    out_dir, work_dir = Path(out_dir), Path(work_dir)
    world = setup_distributed()
    reused_stages = preset.reused_stages if data_dir is None else ()  # the embedded VQs know shapes only
    data_dir = Path(data_dir) if data_dir is not None else _shapes_dataset(work_dir / "data", preset, seed, world)
    base_images = CaptionFolder(data_dir, preset.base_size)
    captions = base_images.captions()

    def run(stage: str, objective, dataset, config: TrainConfig, phase_seed: int = seed):
        config = dataclasses.replace(config, seed=phase_seed)
        return train(objective, dataset, config, work_dir / stage, collate, progress, description=stage)

    def done(stage: str) -> bool:
        return stage not in stages or (out_dir / _OUTPUT[stage]).exists()

    for stage in reused_stages:
        if not done(stage) and world.is_main:
            _copy_stage(DEFAULT_MODEL_DIR, out_dir, stage)
    if dist.is_initialized():
        dist.barrier()

    vq_stages = (("vqvae", 4, preset.base_size, preset.vq, preset.vq_patch_consistency, preset.vq_boundary_invariance),
                 ("super_res_vqvae", 8, preset.sr_size, preset.sr_vq, preset.sr_vq_patch_consistency, 0.0))
    for stage, factor, size, config, patch_consistency, boundary_invariance in vq_stages:
        if not done(stage):
            vq = VQTokenizer(small_vq_config(factor, preset.codebook_size, preset.vq_channels))
            vq.to(memory_format=torch.channels_last)  # 2-3x faster convolutions on CPU
            crops = RandomCrops(CaptionFolder(data_dir, size), size // 2, factor)
            objective = VQObjective(vq, patch_consistency=patch_consistency, boundary_invariance=boundary_invariance)
            _export(run(stage, objective, crops, config), world, out_dir, stage)
    if not done("transformer"):
        tokenizer = build_word_tokenizer(captions, "t5", max_length=64)
        text_encoder = new_t5_encoder(tokenizer, preset.text_width, preset.text_layers, max(1, preset.text_width // 64),
                                      2 * preset.text_width, position_bias_std=preset.text_position_bias_std)
        ids = _token_cache(work_dir, out_dir, data_dir, preset, world, "vqvae", preset.base_size, progress)
        model = MaskedTokenUViT(transformer_config(preset, ids.shape[-1], preset.layers, preset.base_positions,
                                                   preset.base_grid_res_blocks))
        weights = balanced_code_weights(ids, preset.codebook_size, preset.code_weight_power)
        objective = MaskedTokenObjective(model, text_encoder, preset.base_size, train_text_encoder=True,
                                         text_encoder_lr_scale=preset.text_lr_scale, code_weights=weights,
                                         boundary_mask_share=preset.boundary_mask_share,
                                         image_mean_loss=preset.image_mean_loss)
        boundaries = _boundary_cache(work_dir, data_dir, world, preset.base_size, ids.shape[-1]) \
            if preset.boundary_mask_share > 0 else None
        dataset = TokenDataset(captions, ids, boundaries=boundaries)
        objective = run("transformer", objective, dataset, preset.transformer)
        if preset.transformer_restart is not None:
            objective = run("transformer_restart", objective, dataset, preset.transformer_restart, seed + 1)
        if preset.transformer_inpaint is not None:
            objective.object_mask_share = preset.inpaint_object_mask_share
            objective.object_caption_reorder = preset.inpaint_caption_reorder
            objects = _object_cache(work_dir, data_dir, world, preset.base_size, ids.shape[-1])
            dataset = TokenDataset(captions, ids, boundaries=boundaries, objects=objects,
                                   reordered_captions=reordered_captions(base_images)
                                   if preset.inpaint_caption_reorder > 0 else None)
            objective = run("transformer_inpaint", objective, dataset, preset.transformer_inpaint, seed + 2)
        _export(objective, world, out_dir, "transformer")
        if world.is_main and preset.sampling:
            (out_dir / SAMPLING_FILE).write_text(json.dumps(preset.sampling, indent=2) + "\n")
    if not done("super_res"):
        lowres = _token_cache(work_dir, out_dir, data_dir, preset, world, "vqvae", preset.base_size, progress)
        highres = _token_cache(work_dir, out_dir, data_dir, preset, world, "super_res_vqvae", preset.sr_size, progress)
        text_encoder = load_t5_encoder(out_dir, max_length=64)
        model = SuperResTransformer(super_res_config(preset, highres.shape[-1]))
        objective = MaskedTokenObjective(model, text_encoder, preset.sr_size, train_text_encoder=False)
        dataset = TokenDataset(captions, highres, lowres)
        _export(run("super_res", objective, dataset, preset.super_res), world, out_dir, "super_res")
    if not done("reranker"):
        from .clip import ClipObjective, new_clip_model  # noqa: PLC0415  (transformers' CLIP is heavy)

        tokenizer = build_word_tokenizer(captions, "clip", max_length=32)
        model = new_clip_model(tokenizer, preset.base_size, preset.clip_width, preset.clip_layers)
        objective = ClipObjective(model, tokenizer, speck_negatives=preset.clip_speck_negatives)
        _export(run("reranker", objective, base_images, preset.reranker), world, out_dir, "reranker")
    return out_dir


_OUTPUT = {
    "vqvae": "vqvae.safetensors", "super_res_vqvae": "super_res_vqvae.safetensors",
    "transformer": "transformer.safetensors", "super_res": "super_res.safetensors", "reranker": "reranker",
}


def _copy_stage(source_dir: Path, out_dir: Path, stage: str) -> None:
    """Copy a finished stage's file or folder; through a temporary name, so a stopped copy is never taken
    for a finished stage."""
    source, target = source_dir / _OUTPUT[stage], out_dir / _OUTPUT[stage]
    partial = target.with_name(target.name + ".partial")
    out_dir.mkdir(parents=True, exist_ok=True)
    if partial.is_dir():
        shutil.rmtree(partial)
    if source.is_dir():
        shutil.copytree(source, partial)
    else:
        shutil.copyfile(source, partial)
    partial.replace(target)


def _export(objective, world, out_dir: Path, stage: str) -> None:
    """Rank 0 writes the stage's files in fp16; the other processes wait until they exist."""
    if world.is_main:
        objective.eval()
        if stage == "reranker":
            objective.export(out_dir / "reranker", dtype=torch.float16)
        else:
            objective.export(out_dir, stage, dtype=torch.float16)
    if dist.is_initialized():
        dist.barrier()


def _shapes_dataset(folder: Path, preset: CascadePreset, seed: int, world) -> Path:
    from ..data.shapes import write_dataset  # noqa: PLC0415

    if world.is_main and not (folder / "captions.jsonl").is_file():
        write_dataset(folder, preset.dataset_size, seed=seed, size=preset.sr_size, placement=preset.shape_placement)
    if dist.is_initialized():
        dist.barrier()
    return folder


def _token_cache(work_dir: Path, out_dir: Path, data_dir: Path, preset: CascadePreset, world,
                 vq_name: str, resolution: int, progress: bool) -> torch.Tensor:
    """The dataset's ids under the exported (fp16-rounded) VQ, computed once and kept in work_dir."""
    def compute() -> torch.Tensor:
        vq = load_model(VQTokenizer, out_dir / _OUTPUT[vq_name], dtype=torch.float32, device=world.device)
        return encode_images(vq, CaptionFolder(data_dir, resolution), progress=progress)

    return _cached(work_dir / f"tokens_{vq_name}.safetensors", "ids", compute, world, resolution=resolution)


def _boundary_cache(work_dir: Path, data_dir: Path, world, resolution: int, grid: int) -> torch.Tensor:
    """The dataset's boundary tokens (``boundary_tokens``) on a ``grid``^2 token grid, computed once."""
    def compute() -> torch.Tensor:
        return boundary_tokens(CaptionFolder(data_dir, resolution), resolution // grid).to(torch.uint8)

    return _cached(work_dir / f"boundaries_{resolution}px_{grid}.safetensors", "boundaries", compute, world).bool()


def _object_cache(work_dir: Path, data_dir: Path, world, resolution: int, grid: int) -> torch.Tensor:
    """The dataset's object boxes (``object_token_masks``) on a ``grid``^2 token grid, computed once."""
    def compute() -> torch.Tensor:
        return object_token_masks(CaptionFolder(data_dir, resolution), resolution // grid).to(torch.uint8)

    return _cached(work_dir / f"objects_{resolution}px_{grid}.safetensors", "objects", compute, world).bool()


def _cached(path: Path, key: str, compute, world, **metadata) -> torch.Tensor:
    """``compute()``'s tensor, saved at ``path`` by rank 0 the first time and read back by every rank."""
    if world.is_main and not path.is_file():
        tensor = compute()
        with atomic_output(path, overwrite=True) as temporary:  # an interrupted run must not leave half a cache
            save_file({key: tensor}, str(temporary), metadata={k: json.dumps(v) for k, v in metadata.items()})
    if dist.is_initialized():
        dist.barrier()
    return load_file(path)[key]
