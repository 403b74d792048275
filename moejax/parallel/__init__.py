"""The device mesh (folded attention/MoE views) and where tensors live on it."""
from moejax.parallel.mesh import problems

__all__ = ["problems"]
