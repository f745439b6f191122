"""Input definitions several nodes share, so a widget means the same thing (and has the same default)
on every node that shows it."""

from __future__ import annotations

from muse_core.limits import MAX_SEED, MAX_STEPS
from muse_core.sampling.schedules import GUIDANCE_SCHEDULES, MASK_SCHEDULES

from .runtime import ATTENTION_BACKENDS, DEVICES, DTYPES


def combo(choices, **options) -> tuple:
    """A combo input (a list widget). Its choices go out as a list because ComfyUI's /prompt checks a
    value against a combo's choices only when they are a list: with a tuple, any value gets through
    to run time."""
    return (list(choices), options)


def model_options(what: str) -> dict:
    return {
        "dtype": combo(DTYPES, default="auto", tooltip=(
            f"Precision of the {what} weights. auto: fp32 on the CPU, bf16 (else fp16) on a GPU. "
            "bf16 / fp16 halve the memory; only fp32 reproduces reference results bit for bit.")),
        "device": combo(DEVICES, default="auto", tooltip=(
            "auto: run on ComfyUI's device (the GPU when there is one) and rest on the offload device "
            "between runs; cpu: always run on the CPU (saves GPU memory, slower).")),
    }


COMPILE = ("BOOLEAN", {"default": False, "tooltip": (
    "torch.compile the transformer's per-step forward: faster steps after a one-off compilation on the first "
    "run (minutes on a CPU, less on a GPU), kept while ComfyUI keeps this loader's output; a new image size "
    "compiles once more. Worth it for many runs or many steps.")})


ATTENTION = combo(ATTENTION_BACKENDS, default="auto", tooltip=(
    "Attention kernel. auto: xformers on a GPU when it is installed, else PyTorch SDPA; math: the plain "
    "formula (slow, for checking)."))


def seed() -> tuple:
    return ("INT", {"default": 0, "min": 0, "max": MAX_SEED, "control_after_generate": True,
                    "tooltip": "Random seed; image k of a batch uses seed + k, so it can be made again alone."})


def decoding_options(steps: int = 12, guidance: float = 10.0, mask_schedule: str = "cosine") -> dict:
    """Steps, guidance and temperature of iterative parallel decoding (defaults: aMUSEd's)."""
    return {
        "steps": ("INT", {"default": steps, "min": 1, "max": MAX_STEPS, "tooltip": (
            "Decoding steps: each predicts every masked token at once and keeps the most confident. "
            "Muse: 24 base / 8 super-res; aMUSEd: 12.")}),
        "guidance": ("FLOAT", {"default": guidance, "min": 0.0, "max": 100.0, "step": 0.1, "round": 0.01, "tooltip": (
            "Classifier-free guidance scale; <= 1 turns guidance off (one model pass per step instead "
            "of two). Small or undertrained models want 2-4.")}),
        "guidance_schedule": combo(GUIDANCE_SCHEDULES, default="constant", tooltip=(
            "constant: the same scale every step; linear: rises from 1 (no guidance) to the scale over the steps (Muse).")),
        "temperature_start": ("FLOAT", {"default": 2.0, "min": 0.0, "max": 20.0, "step": 0.05, "tooltip": (
            "Randomness in choosing which tokens to keep at the first step (linear to temperature_end).")}),
        "temperature_end": ("FLOAT", {"default": 0.0, "min": 0.0, "max": 20.0, "step": 0.05, "tooltip": (
            "Randomness in choosing which tokens to keep at the last step.")}),
        "mask_schedule": combo(MASK_SCHEDULES, default=mask_schedule, tooltip=(
            "How many tokens stay masked after each step. cosine: Muse / aMUSEd; linear: aMUSEd inpainting.")),
        "token_temperature": ("FLOAT", {"default": 1.0, "min": 0.01, "max": 100.0, "step": 0.05, "tooltip": (
            "Softmax temperature of the sampled tokens: 1 samples plainly (aMUSEd); below 1 favours the likelier "
            "codes (fewer stray specks on small models).")}),
    }


SAMPLING_FROM = ("widgets", "model")


def from_model(sampling_from: str | None) -> bool:
    """Whether a node's ``sampling_from`` input asks for the model's recommended settings."""
    choice = sampling_from or "widgets"  # None: a workflow saved before the input existed
    if choice not in SAMPLING_FROM:
        raise ValueError(f"sampling_from must be one of {SAMPLING_FROM}, got {choice!r}.")
    return choice == "model"


def sampling_from(kept: str = "") -> dict:
    """The optional input that chooses between the widgets and the model's recommended settings.

    Optional, and "widgets" when absent: workflows saved before it existed keep their behaviour."""
    also = f" ({kept} still comes from its widget)" if kept else ""
    return {"sampling_from": combo(SAMPLING_FROM, tooltip=(
        "widgets: decode with the steps, guidance and temperature widgets. model: with the settings the loaded "
        "model recommends (its folder's sampling.json, e.g. the embedded model's; aMUSEd's defaults when it has "
        f"none), whatever those widgets say{also}. The seed always comes from its widget; the saved workflow "
        "records this choice."))}
