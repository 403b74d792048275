"""Grouped GEMM (one matrix per expert over contiguous row groups)."""
from moejax.kernels.grouped_gemm.api import grouped_gemm

__all__ = ["grouped_gemm"]
