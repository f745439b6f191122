"""Model definitions: base U-ViT, Muse super-resolution transformer, VQ tokenizer."""
