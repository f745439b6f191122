"""Text encoders: prompts -> TextConditioning (per-token hidden states, attention mask, pooled vector).

- ``load_clip_encoder``: aMUSEd's conditioning (CLIP-L/14 penultimate states + projected pooled output).
- ``load_t5_encoder``: Muse's conditioning (T5 encoder last states; pooled = masked mean).
"""

from .clip import CLIPTextEncoder, load_clip_encoder
from .conditioning import EncodedPrompts, TextConditioning, TextEncoder
from .t5 import T5TextEncoder, load_t5_encoder

__all__ = [
    "CLIPTextEncoder",
    "EncodedPrompts",
    "T5TextEncoder",
    "TextConditioning",
    "TextEncoder",
    "load_clip_encoder",
    "load_t5_encoder",
]
