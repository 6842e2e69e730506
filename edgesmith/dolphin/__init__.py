"""Dolphin (arXiv 2408.15518): a long context compressed by a small encoder into K memory vectors
for the main decoder. A compressor + decoder pair, not a pass.

``options`` (the typed options, no torch), ``model`` (the pair), ``backbone`` (the two LMs and the
pair's identity), ``projector``, ``lora``, ``tokens`` (padding and id checks), ``train`` (training
and the perplexity figure), ``folder`` (a trained pair on disk) and ``export`` (the two bundles).
Nothing is imported here, so importing ``edgesmith.dolphin.options`` stays free of torch.
"""
