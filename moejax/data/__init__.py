"""Tokens for training: Megatron indexed datasets, bundled and synthetic sources, Grain batches."""
from moejax.data.checks import problems

__all__ = ["problems"]
