"""Training: VQ tokenizers, text encoder, base and super-res transformers, CLIP reranker; LoRAs (``lora``).

Every model is trained by one generic loop (``loop.train``) driving an *objective*: an ``nn.Module``
whose ``forward(batch)`` returns ``(loss, logs)``. ``cascade.train_cascade`` chains the stages into
a complete model folder (the layout ``muse_core.pipeline.load_pipeline`` reads).
"""
