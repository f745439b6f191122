"""ComfyUI node classes over muse_core, one module per concern; this module gathers their mappings."""

from . import editing, loaders, lora, rerank, sampling, text, vq

_MODULES = (loaders, lora, text, vq, sampling, editing, rerank)

NODE_CLASS_MAPPINGS = {name: cls for module in _MODULES for name, cls in module.NODE_CLASS_MAPPINGS.items()}
NODE_DISPLAY_NAME_MAPPINGS = {name: title for module in _MODULES for name, title in module.NODE_DISPLAY_NAME_MAPPINGS.items()}
