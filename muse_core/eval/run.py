"""The evaluation behind ``muse eval``: the held-out shapes prompts under several settings, each image
scored by the programmatic checker (accuracy = share of prompts whose image passes ``check``). This is
the runner; its results (``EvalReport``) and their table and JSON are in ``report.py``.

Rows (``SETTINGS``, by key):

    steps4, steps8, steps12, steps24   text-to-image with the default guidance
    no_guidance                        12 steps, classifier-free guidance off
    best_of                            12 steps, N samples per prompt (8 by default), the CLIP reranker
                                       keeps one (compare with steps12; "oracle" = any of the N passes)
    super_res                          the steps12 base images through the super-res stage, checked there
    inpaint                            scenes with >= 2 objects: the rendered truth with one object masked
                                       out (a rectangle), repainted under the full caption
    maskfree                           single objects recoloured by mask-free editing ("a red circle" ->
                                       "a blue circle"); passes when the checker finds the new scene and
                                       the object moved less than MOVE_TOLERANCE

Seeds: in every row, sample j of the row's k-th prompt uses ``seed + k * samples_per_prompt + j``,
so results do not depend on ``batch_size``.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from collections.abc import Callable

import torch
from tqdm import tqdm

from ..data.shapes import CATEGORIES, SHAPE_COLOURS, Scene, eval_scenes, object_mask, render
from ..editing import INPAINT_MASK_SCHEDULE, edit_tokens, inpaint
from ..sampling import SUPER_RES_STEPS, SamplingOptions, generate, super_resolve
from .checker import DetectedObject, check, detect
from .report import EvalReport, EvalRow, format_table  # noqa: F401  (format_table: still importable from here)

MOVE_TOLERANCE = 0.1  # how far (share of the image side) an edited object's centroid may move


@dataclasses.dataclass(frozen=True)
class Setting:
    key: str
    label: str
    kind: str  # a key of Evaluator.RUNNERS: generate | super_res | inpaint | maskfree
    steps: int = 12
    guided: bool = True
    samples: int = 1  # samples per prompt; > 1: the reranker keeps one


SETTINGS = {setting.key: setting for setting in (
    Setting("steps4", "4 steps", "generate", steps=4),
    Setting("steps8", "8 steps", "generate", steps=8),
    Setting("steps12", "12 steps", "generate"),
    Setting("steps24", "24 steps", "generate", steps=24),
    Setting("no_guidance", "12 steps, no guidance", "generate", guided=False),
    Setting("best_of", "12 steps, best of 8 by CLIP", "generate", samples=8),
    Setting("super_res", f"12 steps + super-res ({SUPER_RES_STEPS} steps)", "super_res"),
    Setting("inpaint", "inpaint one object, 12 steps", "inpaint"),
    Setting("maskfree", "mask-free recolouring", "maskfree"),
)}


def select(scenes: list[Scene], limit: int | None) -> list[Scene]:
    """The first ``limit`` scenes of each category (all when None), in their original order."""
    if limit is None:
        return list(scenes)
    if limit < 1:
        raise ValueError(f"limit={limit}: give at least 1 scene per category, or None for all.")
    taken = dict.fromkeys(CATEGORIES, 0)
    chosen = []
    for scene in scenes:
        if taken.get(scene.category, 0) < limit:
            taken[scene.category] = taken.get(scene.category, 0) + 1
            chosen.append(scene)
    return chosen


def accuracy_by_category(results: list[tuple[str, bool]]) -> dict[str, float | None]:
    def share(values):
        return sum(values) / len(values) if values else None

    table = {category: share([ok for c, ok in results if c == category]) for category in CATEGORIES}
    table["overall"] = share([ok for _, ok in results])
    return table


def skipped(setting: Setting, note: str) -> EvalRow:
    return EvalRow(setting.key, setting.label, accuracy_by_category([]), 0, note)


def channels_last(image: torch.Tensor) -> torch.Tensor:
    return image.permute(1, 2, 0)


def rendered(scenes: list[Scene], size: int) -> torch.Tensor:
    """Ground-truth renders as a float [B, 3, size, size] batch in [0, 1]."""
    return torch.stack([torch.from_numpy(render(scene, size)).permute(2, 0, 1).float() / 255 for scene in scenes])


def recoloured(scene: Scene, index: int) -> Scene:
    """The single-object scene with another colour, chosen by ``index`` so all colours get used."""
    shape = scene.shapes[0]
    others = [colour for colour in SHAPE_COLOURS if colour != shape.colour]
    return scene.replace(shapes=[dataclasses.replace(shape, colour=others[index % len(others)])])


def stayed_in_place(before: DetectedObject, after: DetectedObject) -> bool:
    return abs(after.cx - before.cx) <= MOVE_TOLERANCE and abs(after.cy - before.cy) <= MOVE_TOLERANCE


def every_scene(scene: Scene) -> bool:
    return True


def always_available(pipe) -> str | None:
    return None


@dataclasses.dataclass(frozen=True)
class Runner:
    """How the evaluator runs one kind of setting (``Evaluator.RUNNERS``)."""

    # an Evaluator method (self, setting, positions, scenes, row, side_passes) -> whether each scene passed
    step: Callable[..., list[bool]]
    suits: Callable[[Scene], bool] = every_scene  # the scenes this kind applies to
    unavailable: Callable[..., str | None] = always_available  # why the pipeline cannot run it; None if it can


class Evaluator:
    """Runs one setting at a time over batches of scenes; keeps the steps12 ids for the super-res row."""

    def __init__(self, pipe, scorer, size: int, seed: int, guidance_scale: float | None, batch_size: int,
                 edit_iterations: int | None, progress: bool):
        self.pipe, self.scorer, self.size, self.seed = pipe, scorer, size, seed
        self.guidance_scale, self.batch_size = guidance_scale, batch_size
        self.edit_iterations, self.progress = edit_iterations, progress
        self.base_ids: dict[int, torch.Tensor] = {}  # scene position -> steps12 ids [h, w]

    def options(self, setting: Setting, first_seed: int, super_res: bool = False, **overrides) -> SamplingOptions:
        """The setting's options over the model's recommended ones (with ``super_res``: its super-res stage's)."""
        guidance = self.guidance_scale if setting.guided else 1.0  # None: the recommended guidance
        values = dict(steps=setting.steps, guidance_scale=guidance, seed=first_seed) | overrides
        recommended = self.pipe.super_res_sampling_options if super_res else self.pipe.sampling_options
        return recommended(**values)

    def batches(self, setting: Setting, scenes: list[Scene]):
        """Yields (positions, scenes) batches of at most batch_size images, with a progress bar."""
        prompts_per_batch = max(1, self.batch_size // setting.samples)
        with tqdm(total=len(scenes), desc=setting.label, unit="prompt", disable=not self.progress) as bar:
            for first in range(0, len(scenes), prompts_per_batch):
                batch = scenes[first:first + prompts_per_batch]
                yield list(range(first, first + len(batch))), batch
                bar.update(len(batch))

    def run(self, setting: Setting, scenes: list[Scene]) -> EvalRow:
        runner = self.RUNNERS[setting.kind]
        if setting.samples > 1 and self.scorer is None:
            return skipped(setting, "skipped: no CLIP reranker given")
        if (reason := runner.unavailable(self.pipe)) is not None:
            return skipped(setting, f"skipped: {reason}")
        scenes = [scene for scene in scenes if runner.suits(scene)]
        if not scenes:
            return skipped(setting, f"skipped: no scene suits {setting.kind}")
        row = EvalRow(setting.key, setting.label, {}, len(scenes))
        results, side_passes = [], Counter()  # side_passes: secondary checks, reported as shares in row.extra
        for positions, batch in self.batches(setting, scenes):
            passed = runner.step(self, setting, positions, batch, row, side_passes)
            results += [(scene.category, ok) for scene, ok in zip(batch, passed)]
        row.accuracy = accuracy_by_category(results)
        row.extra.update({name: count / len(scenes) for name, count in side_passes.items()})
        return row

    def generate_ids(self, setting: Setting, positions: list[int], prompts: list[str]) -> torch.Tensor:
        options = self.options(setting, self.seed + positions[0] * setting.samples)
        return generate(self.pipe.transformer, self.pipe.text_encoder, prompts, height=self.size, width=self.size,
                        downsample_factor=self.pipe.vq.downsample_factor, num_images_per_prompt=setting.samples,
                        options=options)

    def run_generate(self, setting, positions, scenes, row, side_passes) -> list[bool]:
        prompts = [scene.caption for scene in scenes]
        ids = self.generate_ids(setting, positions, prompts)
        if setting.key == "steps12":
            self.base_ids.update(zip(positions, ids.cpu()))
        images = self.pipe.vq.decode(ids).cpu()
        passed = []
        for k, scene in enumerate(scenes):
            candidates = images[k * setting.samples:(k + 1) * setting.samples]
            if setting.samples == 1:
                passed.append(check(channels_last(candidates[0]), scene).passed)
                continue
            best = self.scorer.rerank(candidates, scene.caption).best_index
            checks = [check(channels_last(image), scene).passed for image in candidates]
            passed.append(checks[best])
            side_passes["oracle (any of the samples)"] += any(checks)
        return passed

    def run_super_res(self, setting, positions, scenes, row, side_passes) -> list[bool]:
        prompts = [scene.caption for scene in scenes]
        if all(p in self.base_ids for p in positions):
            low = torch.stack([self.base_ids[p] for p in positions])
        else:
            low = self.generate_ids(setting, positions, prompts)
        pipe = self.pipe
        vq = pipe.super_res_vq
        options = self.options(setting, self.seed + positions[0], super_res=True, steps=SUPER_RES_STEPS)
        high = super_resolve(pipe.super_res, pipe.text_encoder, low.to(pipe.super_res.device), prompts,
                             grid_scale=pipe.super_res_grid_scale, downsample_factor=vq.downsample_factor, options=options)
        images = vq.decode(high).cpu()
        row.note = f"checked at {images.shape[-1]} px; super-res guidance {options.guidance_scale:g}"
        return [check(channels_last(image), scene).passed for image, scene in zip(images, scenes)]

    def run_inpaint(self, setting, positions, scenes, row, side_passes) -> list[bool]:
        source = rendered(scenes, self.size)
        masks = torch.stack([torch.from_numpy(object_mask(scene, p % len(scene.shapes), self.size))
                             for p, scene in zip(positions, scenes)])
        options = self.options(setting, self.seed + positions[0], mask_schedule=INPAINT_MASK_SCHEDULE)
        result = inpaint(self.pipe.transformer, self.pipe.vq, self.pipe.text_encoder, source, masks,
                         [scene.caption for scene in scenes], options=options)
        images = result.images.cpu()
        changed = ((images != source).any(dim=1) & (masks < 0.5)).sum().item()
        row.extra["changed_pixels_outside_mask"] = row.extra.get("changed_pixels_outside_mask", 0) + changed
        return [check(channels_last(image), scene).passed for image, scene in zip(images, scenes)]

    def run_maskfree(self, setting, positions, scenes, row, side_passes) -> list[bool]:
        targets = [recoloured(scene, p) for p, scene in zip(positions, scenes)]
        source = rendered(scenes, self.size)
        ids = self.pipe.vq.encode(source)
        settings = self.pipe.mask_free_settings(iterations=self.edit_iterations)
        edited = edit_tokens(self.pipe.transformer, self.pipe.text_encoder, ids, [t.caption for t in targets],
                             height=self.size, width=self.size, **settings, seed=self.seed + positions[0])
        images = self.pipe.vq.decode(edited).cpu()
        passed = []
        for image, original, target in zip(images, source, targets):
            found = detect(channels_last(image))
            ok = check(channels_last(image), target, found).passed  # exactly one object, in the new colour
            side_passes["recoloured"] += ok
            before = detect(channels_last(original)).objects[0]
            passed.append(ok and stayed_in_place(before, found.objects[0]))
        row.note = (f"{settings['iterations']} iterations, fraction {settings['fraction']:g}, guidance "
                    f"{settings['guidance_scale']:g}, top-k {settings['top_k']}; passes = recoloured and moved <= "
                    f"{MOVE_TOLERANCE}")
        return passed

    RUNNERS = {  # setting kind -> how it is run
        "generate": Runner(run_generate),
        "super_res": Runner(run_super_res, unavailable=lambda pipe: None if pipe.super_res is not None
                            else "the pipeline has no super-res stage"),
        "inpaint": Runner(run_inpaint, suits=lambda scene: len(scene.shapes) >= 2),
        "maskfree": Runner(run_maskfree, suits=lambda scene: scene.category == "single"),
    }


def evaluate(pipe, scorer=None, *, scenes: list[Scene] | None = None, batch_size: int = 16,
             settings: list[str] | None = None, progress: bool = True, limit: int | None = None, seed: int = 0,
             size: int | None = None, guidance_scale: float | None = None,
             best_of: int = 8, edit_iterations: int | None = None) -> EvalReport:
    """Accuracy of ``pipe`` (a MusePipeline) on the shapes prompts, one row per setting.

    scenes: default ``eval_scenes()``; limit: the first N per category (quick runs); settings: keys of
    ``SETTINGS`` (default all); size: base image side (default: the transformer's native size);
    guidance_scale: every guided row's (default: the model's recommended one; in the super_res row, its super-res
    stage's); scorer: a ClipScorer for the best_of row (skipped if None); best_of: samples per prompt in that row;
    edit_iterations: of mask-free editing (default: the model's ``mask_free`` settings, else the paper's 100).
    """
    settings = list(SETTINGS) if settings is None else list(settings)
    unknown = [key for key in settings if key not in SETTINGS]
    if unknown:
        raise ValueError(f"unknown evaluation settings {unknown}; choose from {list(SETTINGS)}.")
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}.")
    scenes = select(eval_scenes() if scenes is None else scenes, limit)
    size = size or pipe.native_size
    evaluator = Evaluator(pipe, scorer, size, seed, guidance_scale, batch_size, edit_iterations, progress)
    # steps12 first (in table order otherwise), so super_res reuses its base images
    order = sorted(settings, key=lambda key: key != "steps12")
    chosen = {key: SETTINGS[key] for key in order}
    if "best_of" in chosen:
        if best_of < 2:
            raise ValueError(f"best_of={best_of}: the reranker needs at least 2 samples per prompt to choose from.")
        chosen["best_of"] = dataclasses.replace(chosen["best_of"], label=f"12 steps, best of {best_of} by CLIP",
                                                samples=best_of)
    rows = {key: evaluator.run(setting, scenes) for key, setting in chosen.items()}
    base_guidance = pipe.sampling_options(guidance_scale=guidance_scale).guidance_scale
    return EvalReport([rows[key] for key in settings], size, seed, base_guidance)

