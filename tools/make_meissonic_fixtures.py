"""Write the golden Meissonic fixtures of tests/test_meissonic.py by running the reference code once.

The reference (github viiika/Meissonic, ``src/``) cannot be installed at test time, so its behaviour is
kept as data: two tiny seeded random models in the hub's folder layout (Meissonic-like with 2x2
downsampling, Monetico-like without), the reference's logits for fixed inputs, and the token ids its
pipelines (text-to-image, img2img, inpainting) produce for fixed prompts and seeds.

It needs what the reference imports, in a scratch folder kept off the project's environment:

    pip install --no-deps --target /tmp/meissonic-site diffusers==0.32.2 transformers==4.46.3 \\
        tokenizers==0.20.3 huggingface_hub==0.26.5
    git clone https://github.com/viiika/Meissonic /tmp/Meissonic   # fixtures made at commit aeba85e
    python tools/make_meissonic_fixtures.py --reference /tmp/Meissonic --site /tmp/meissonic-site

Nothing of the reference is copied: this script only imports it and saves what it computes.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "tests" / "fixtures" / "meissonic"
TEXT_LENGTH = 77  # the reference pipelines pad prompts to 77 tokens
TEXT_WIDTH, POOLED_WIDTH = 32, 16
TRANSFORMER = dict(patch_size=1, in_channels=8, num_layers=2, num_single_layers=2, attention_head_dim=8,
                   num_attention_heads=2, joint_attention_dim=TEXT_WIDTH, pooled_projection_dim=POOLED_WIDTH,
                   guidance_embeds=False, axes_dims_rope=(2, 2, 4), vocab_size=72, codebook_size=64)
MASK_TOKEN = TRANSFORMER["vocab_size"] - 1
VQ = dict(block_out_channels=(8,) * 5, down_block_types=("DownEncoderBlock2D",) * 5,
          up_block_types=("UpDecoderBlock2D",) * 5, layers_per_block=1, latent_channels=4, norm_num_groups=4,
          num_vq_embeddings=64, vq_embed_dim=4, mid_block_add_attention=False, lookup_from_codebook=True,
          force_upcast=True)  # factor 16, as the real VQ
# (folder, downsample, the pixel size its pipeline runs at: the reference's RoPE ids are right only there)
MODELS = (("meissonic_tiny", True, 1024), ("monetico_tiny", False, 512))


# The hub's MeissonFlow/Meissonic transformer/config.json (= train/train_meissonic.py's from-scratch model)
REAL_TRANSFORMER = dict(patch_size=1, in_channels=64, num_layers=14, num_single_layers=28, attention_head_dim=128,
                        num_attention_heads=8, joint_attention_dim=1024, pooled_projection_dim=1024,
                        guidance_embeds=False, axes_dims_rope=(16, 56, 56), vocab_size=8256, codebook_size=8192,
                        downsample=True, upsample=True)


def write_real_key_list(path: Path) -> None:
    """Every state-dict name and shape of the reference model at the real config (built on the meta device)."""
    from src.transformer import Transformer2DModel  # noqa: PLC0415

    with torch.device("meta"):
        model = Transformer2DModel(**REAL_TRANSFORMER)
    path.write_text(json.dumps({k: list(v.shape) for k, v in model.state_dict().items()}, separators=(",", ":")) + "\n")


def randomize(module, seed: int, std: float = 0.2):
    sys.path.insert(0, str(ROOT))
    from tests.reference import randomize_  # noqa: PLC0415

    return randomize_(module, seed=seed, std=std).eval()


def write_model_folder(folder: Path, downsample: bool, seed: int) -> None:
    import transformers  # noqa: PLC0415
    from diffusers import VQModel  # noqa: PLC0415
    from src.transformer import Transformer2DModel  # noqa: PLC0415

    sys.path.insert(0, str(ROOT))
    from tests.helpers import write_clip_tokenizer  # noqa: PLC0415

    folder.mkdir(parents=True)
    transformer = randomize(Transformer2DModel(**TRANSFORMER, downsample=downsample, upsample=downsample), seed)
    transformer.save_pretrained(folder / "transformer")
    randomize(VQModel(**VQ), seed + 1, std=0.1).save_pretrained(folder / "vqvae")
    clip = transformers.CLIPTextConfig(
        vocab_size=64, hidden_size=TEXT_WIDTH, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
        max_position_embeddings=TEXT_LENGTH, projection_dim=POOLED_WIDTH, bos_token_id=0, eos_token_id=1,
        pad_token_id=1)
    randomize(transformers.CLIPTextModelWithProjection(clip), seed + 2, std=0.1).save_pretrained(folder / "text_encoder")
    tokenizer = write_clip_tokenizer(folder / "tokenizer")
    config = json.loads((tokenizer / "tokenizer_config.json").read_text())
    (tokenizer / "tokenizer_config.json").write_text(json.dumps({**config, "model_max_length": TEXT_LENGTH}))
    (folder / "scheduler").mkdir()
    (folder / "scheduler" / "scheduler_config.json").write_text(
        json.dumps({"_class_name": "Scheduler", "mask_token_id": MASK_TOKEN, "masking_schedule": "cosine"}))
    (folder / "model_index.json").write_text(json.dumps({
        "_class_name": "Pipeline", "scheduler": ["src.scheduler", "Scheduler"],
        "text_encoder": ["transformers", "CLIPTextModelWithProjection"], "tokenizer": ["transformers", "CLIPTokenizer"],
        "transformer": ["src.transformer", "Transformer2DModel"], "vqvae": ["diffusers", "VQModel"]}, indent=1))


def load_reference(folder: Path, pipeline_module: str, pipeline_class: str):
    import importlib  # noqa: PLC0415

    import transformers  # noqa: PLC0415
    from diffusers import VQModel  # noqa: PLC0415
    from src.scheduler import Scheduler  # noqa: PLC0415
    from src.transformer import Transformer2DModel  # noqa: PLC0415

    pipeline = getattr(importlib.import_module(pipeline_module), pipeline_class)
    return pipeline(
        VQModel.from_pretrained(folder / "vqvae"),
        tokenizer=transformers.CLIPTokenizer.from_pretrained(folder / "tokenizer"),
        text_encoder=transformers.CLIPTextModelWithProjection.from_pretrained(folder / "text_encoder"),
        transformer=Transformer2DModel.from_pretrained(folder / "transformer"),
        scheduler=Scheduler.from_pretrained(folder / "scheduler"),
    )


def reference_logits(pipe, grid: int, downsample: bool) -> dict[str, torch.Tensor]:
    """The transformer's logits for fixed random inputs (two images, different micro-conditions)."""
    from src.pipeline import _prepare_latent_image_ids  # noqa: PLC0415

    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(0, TRANSFORMER["codebook_size"], (2, grid, grid), generator=generator)
    ids[torch.rand(ids.shape, generator=generator) < 0.5] = MASK_TOKEN
    inputs = {
        "ids": ids,
        "hidden_states": torch.randn(2, TEXT_LENGTH, TEXT_WIDTH, generator=generator),
        "pooled": torch.randn(2, POOLED_WIDTH, generator=generator),
        "micro_conds": torch.tensor([[1024.0, 1024, 0, 0, 6], [768, 512, 16, 32, 5.5]]),
        "timestep": torch.tensor([7]),
    }
    inner = grid // 2 if downsample else grid  # the grid the blocks see; _prepare_latent_image_ids halves its input
    with torch.no_grad():
        logits = pipe.transformer(
            hidden_states=inputs["ids"], encoder_hidden_states=inputs["hidden_states"],
            pooled_projections=inputs["pooled"], micro_conds=inputs["micro_conds"], timestep=inputs["timestep"],
            img_ids=_prepare_latent_image_ids(2, 2 * inner, 2 * inner, "cpu", torch.float32),
            txt_ids=torch.zeros(TEXT_LENGTH, 3))
    return {**{f"forward.{k}": v for k, v in inputs.items()}, "forward.logits": logits}


def write_lora(pipe, golden: dict, folder: Path) -> None:
    """A LoRA as Meissonic's training saves it (PEFT adapter, diffusers' LoraLoaderMixin: keys under ``unet.``,
    no alphas), and the reference's logits with the adapter active (PEFT's scale lora_alpha / r = 2)."""
    import peft  # noqa: PLC0415
    from diffusers.loaders import LoraLoaderMixin  # noqa: PLC0415

    model = pipe.transformer
    model.add_adapter(peft.LoraConfig(r=4, lora_alpha=8, target_modules=["to_q", "to_k", "to_v"],
                                      init_lora_weights=False))
    generator = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "lora_B" in name:  # PEFT starts B at zero; a random B makes the LoRA matter
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.1)
    LoraLoaderMixin.save_lora_weights(folder, unet_lora_layers=peft.utils.get_peft_model_state_dict(model))
    from src.pipeline import _prepare_latent_image_ids  # noqa: PLC0415

    ids = golden["forward.ids"]
    inner = ids.shape[-1] // 2 if model.config.downsample else ids.shape[-1]
    with torch.no_grad():
        golden["lora.logits"] = model(
            hidden_states=ids, encoder_hidden_states=golden["forward.hidden_states"],
            pooled_projections=golden["forward.pooled"], micro_conds=golden["forward.micro_conds"],
            timestep=golden["forward.timestep"], img_ids=_prepare_latent_image_ids(2, 2 * inner, 2 * inner, "cpu",
                                                                                  torch.float32),
            txt_ids=torch.zeros(TEXT_LENGTH, 3))


def upsample_cells(cells: torch.Tensor, factor: int = 16) -> torch.Tensor:
    """Images and masks are stored one value per 16 x 16 cell (uint8); the pipelines get them full size."""
    return cells.float().div(255).repeat_interleave(factor, -1).repeat_interleave(factor, -2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reference", type=Path, required=True, help="a checkout of github viiika/Meissonic")
    parser.add_argument("--site", type=Path, required=True, help="a folder with diffusers 0.32.2 and transformers 4.46")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    sys.path[:0] = [str(args.site), str(args.reference)]
    torch.set_num_threads(1)  # the fixtures are compared at the tests' thread count too (last-bit kernels)
    if args.out.exists():
        shutil.rmtree(args.out)
    from safetensors.torch import save_file  # noqa: PLC0415

    args.out.mkdir(parents=True)
    write_real_key_list(args.out / "real_keys.json")

    for seed, (name, downsample, size) in enumerate(MODELS):
        folder = args.out / name
        write_model_folder(folder, downsample, seed=10 * seed)
        pipe = load_reference(folder, "src.pipeline", "Pipeline")
        golden = reference_logits(pipe, 16 if downsample else 8, downsample)
        runs = {"default": {}, "negative": {"negative_prompt": "a dog"}, "unguided": {"guidance_scale": 1.0}}
        for run, kwargs in runs.items():
            for image_seed in (0, 1):
                generator = torch.Generator().manual_seed(image_seed)
                golden[f"generate.{run}.seed{image_seed}"] = pipe(
                    "a cat", height=size, width=size, generator=generator, output_type="latent", **kwargs).images
        grid = size // 16
        golden["image_cells"] = torch.randint(0, 256, (1, 3, grid, grid), dtype=torch.uint8,
                                              generator=torch.Generator().manual_seed(seed))
        image = upsample_cells(golden["image_cells"])
        img2img = load_reference(folder, "src.pipeline_img2img", "Img2ImgPipeline")
        noised = {}
        add_noise = img2img.scheduler.add_noise

        def recording_add_noise(sample, timesteps, generator=None, add_noise=add_noise, noised=noised):
            noised["ids"] = sample.clone()
            noised["noised"] = add_noise(sample, timesteps, generator=generator)
            return noised["noised"]

        img2img.scheduler.add_noise = recording_add_noise
        golden["img2img.ids"] = img2img("a cat", image=image, generator=torch.Generator().manual_seed(0),
                                        output_type="latent").images
        golden["img2img.encoded"], golden["img2img.noised"] = noised["ids"], noised["noised"]
        golden["inpaint.mask_cells"] = torch.zeros(1, 1, grid, grid, dtype=torch.uint8)
        golden["inpaint.mask_cells"][..., grid // 4: grid // 2, grid // 8: 3 * grid // 4] = 255  # any token rule agrees
        mask = upsample_cells(golden["inpaint.mask_cells"])
        inpaint = load_reference(folder, "src.pipeline_inpaint", "InpaintPipeline")
        golden["inpaint.ids"] = inpaint("a cat", image=image, mask_image=mask,
                                        generator=torch.Generator().manual_seed(0), output_type="latent").images
        if downsample:  # one LoRA fixture is enough: the file format does not depend on the architecture
            write_lora(pipe, golden, args.out / "lora")
        golden = {k: v.int() if v.dtype == torch.long else v for k, v in golden.items()}  # ids: half the bytes
        save_file({k: v.contiguous() for k, v in golden.items()}, str(folder / "golden.safetensors"))
        print(name, {k: tuple(v.shape) for k, v in golden.items()})


if __name__ == "__main__":
    main()
