"""muse_core: a pure-PyTorch engine for Muse-style masked generative text-to-image models."""

__version__ = "0.1.0"
