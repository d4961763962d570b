"""Torch-free foundations: class sets, the ModelSpec that travels with every model,
image loading, numpy preprocessing and post-processing."""
