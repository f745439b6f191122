"""The Muse node pack for ComfyUI: Muse / aMUSEd masked generative text-to-image as graph nodes.

ComfyUI imports this file from ``custom_nodes/<folder>/``; it also imports cleanly outside ComfyUI
(the engine is ``muse_core``, the node classes are in ``nodes/``).
"""

import os
import sys

_PACK_DIR = os.path.dirname(os.path.abspath(__file__))
if _PACK_DIR not in sys.path:
    sys.path.append(_PACK_DIR)  # so that `import muse_core` works when the pack is not pip-installed

from .nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS  # noqa: E402
from .nodes.comfy_env import install_example_inputs, register_model_folder  # noqa: E402

WEB_DIRECTORY = "./web"

register_model_folder()
install_example_inputs()

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS", "WEB_DIRECTORY"]
