"""Fused linear cross-entropy: the LM head and its loss without the [tokens, vocab] logits.

Legend: B sequences, S positions, H hidden, V (padded) vocabulary, C positions per chunk.

`linear_cross_entropy(x_BSH, w_HV, labels_BS, weights_BS, num_valid)` is Σ weights·CE of
softmax(x @ w) at the labels (Megatron's `--cross-entropy-loss-fusion`, Liger's fused linear CE).
It walks the sequence in chunks of C positions: each chunk's logits exist only inside one scan
step (`head_logits`: bf16 operands, fp32 accumulation, rounded to bf16 as Megatron's output layer
gives them, softmax in fp32), and under differentiation the same pass
also forms the gradients (d_logits = weights·(softmax − onehot), cast to the compute dtype for
the two matmuls, fp32 accumulation), so the backward pass only scales them by the cotangent: no
fp32 GEMMs, no recomputed head. Columns ≥ `num_valid` (vocabulary padding) are never predicted.
Written by hand because XLA neither chunks nor fuses the head with its loss.

Passes over a chunk's logits after its GEMM: one for the log-sum-exp (a single online max+sum
reduction when the vocabulary is whole on each device; max, then sum, when it is split over tp,
so each stays a reduction that the partitioner all-reduces) and one for d_logits. The labels'
logits are gathered (a masked sum, another pass, when the vocabulary is split). With the vocabulary
whole, `impl` "pallas" (the default "auto" on a GPU) runs both passes of the training step in one
Pallas Triton kernel (moejax.kernels.cross_entropy), which XLA's reduction is 3x slower than.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P

from moejax.config import CrossEntropyImpl
from moejax.kernels.cross_entropy import softmax_xent_rows
from moejax.parallel.sharding import current_mesh, dividing_axes, logical_axis_size

_CHUNK_ELEMENTS = 1 << 30  # fp32 logits per scan step (4 GiB): few steps, so dw is accumulated few times


def chunk_positions(batch: int, seq: int, vocab: int) -> int:
  """C: the largest divisor of S with B·C·V ≤ 2^30 (at least 1)."""
  cap = max(1, _CHUNK_ELEMENTS // max(1, batch * vocab))
  return max(c for c in range(1, min(seq, cap) + 1) if seq % c == 0)


def _chunks(a_BS, c):
  """[B, S, ...] -> [S/C, B, C, ...] (scan over the leading axis)."""
  B, S = a_BS.shape[:2]
  return jnp.moveaxis(a_BS.reshape(B, S // c, c, *a_BS.shape[2:]), 1, 0)


def _unchunk(a_NBC):
  N, B, C = a_NBC.shape[:3]
  return jnp.moveaxis(a_NBC, 0, 1).reshape(B, N * C, *a_NBC.shape[3:])


def head_logits(x_BSH, w_HV):
  """x @ w as Megatron's output layer gives it: compute-dtype operands, fp32 accumulation, the
  result rounded to the compute dtype; returned in fp32, where the softmax is taken. In bf16 this
  halves every pass over the logits after the GEMM (benchmarks/RESULTS.md, issue 18)."""
  return _head_gemm(x_BSH, w_HV).astype(jnp.float32)


def _head_gemm(x_BSH, w_HV):
  # the GEMM's own output dtype (fp32 accumulation inside), not an fp32 result cast afterwards:
  # XLA does not fold that cast into the GEMM, which would add a pass over fp32 logits
  return jnp.einsum("bsh,hv->bsv", x_BSH, w_HV, preferred_element_type=x_BSH.dtype)


def _chunk_logits(x_BCH, w_HV, num_valid):
  logits_BCV = head_logits(x_BCH, w_HV)
  if num_valid < w_HV.shape[1]:
    logits_BCV = jnp.where(jnp.arange(w_HV.shape[1]) < num_valid, logits_BCV, -jnp.inf)
  return logits_BCV


def _online_logsumexp(logits_BCV):
  """log Σ exp over the last axis in one read: a reduction of (running max m, Σ exp(· − m)).
  Combining two partials rescales the one with the smaller max, so each step costs one exp."""
  def combine(a, b):
    (m1, s1), (m2, s2) = a, b
    d = jnp.where(m1 == m2, 0.0, m2 - m1)  # equal maxima (also both -inf): no rescaling
    e = jnp.exp(-jnp.abs(d))
    return jnp.maximum(m1, m2), jnp.where(d <= 0, s1 + s2 * e, s1 * e + s2)
  ones = jnp.ones_like(logits_BCV)
  m_BC, s_BC = jax.lax.reduce((logits_BCV, ones), (jnp.float32(-jnp.inf), jnp.float32(0)), combine,
                              (logits_BCV.ndim - 1,))
  return m_BC + jnp.log(s_BC)


def vocab_parallel_lse_and_target(logits_BCV, labels_BC):
  """log Σ exp of each row, and its logit at the label, by reductions over the vocab only, as
  Megatron's vocab-parallel cross-entropy: with the vocab split over tp each is a local reduction
  and an all-reduce, and its gradient has no scatter into the split logits (a gather's gradient
  there aborts XLA 0.12.1's partitioner inside the pipeline)."""
  is_label_BCV = jnp.arange(logits_BCV.shape[-1]) == labels_BC[..., None]
  return jax.nn.logsumexp(logits_BCV, axis=-1), jnp.sum(jnp.where(is_label_BCV, logits_BCV, 0.0), axis=-1)


def _lse_and_target(logits_BCV, labels_BC, vocab_split: bool):
  """log Σ exp of each row, and its logit at the label."""
  if vocab_split:
    return vocab_parallel_lse_and_target(logits_BCV, labels_BC)
  return _online_logsumexp(logits_BCV), jnp.take_along_axis(logits_BCV, labels_BC[..., None], axis=-1)[..., 0]


def _d_logits(logits_BCV, lse_BC, labels_BC, weights_BC, dtype):
  """weights · (softmax − onehot(labels)) from fp32 logits and their log-sum-exp, in `dtype`."""
  d_BCV = jnp.exp(logits_BCV - lse_BC[..., None])
  d_BCV = d_BCV - (jnp.arange(logits_BCV.shape[-1]) == labels_BC[..., None]).astype(d_BCV.dtype)
  return (d_BCV * weights_BC[..., None]).astype(dtype)


def _kernel_rows(x_BCH, w_HV, labels_BC, weights_BC, num_valid, interpret):
  """(lse, target logit, d_logits) of a chunk from the Pallas kernel, on the GEMM's own logits.
  Under a mesh the kernel runs on each device's rows (a shard_map over the batch and attn_seq axes:
  XLA cannot partition a kernel call, it would gather the logits to every device)."""
  logits_BCV = _head_gemm(x_BCH, w_HV)

  def rows(logits_BCV, labels_BC, weights_BC):
    B, C, V = logits_BCV.shape
    lse_R, target_R, d_RV = softmax_xent_rows(logits_BCV.reshape(B * C, V), labels_BC.reshape(-1),
                                              weights_BC.reshape(-1), num_valid, interpret=interpret)
    return lse_R.reshape(B, C), target_R.reshape(B, C), d_RV.reshape(B, C, V)

  mesh = current_mesh()
  if mesh is None:
    return rows(logits_BCV, labels_BC, weights_BC)
  B, C = labels_BC.shape
  bc = P(dividing_axes("batch", B) or None, dividing_axes("attn_seq", C) or None)
  bcv = P(*bc, None)
  # no collectives inside and not differentiated (the custom VJP's forward): check_vma is off, which
  # also lets the interpreter run it (the tests)
  return jax.shard_map(rows, mesh=mesh, in_specs=(bcv, bc, bc), out_specs=(bc, bc, bcv),
                       check_vma=False)(logits_BCV, labels_BC, weights_BC)


def _use_kernel(impl: str, dtype) -> bool:
  """Whether the training pass runs the Pallas kernel: impl "pallas", or "auto" on a GPU (the
  kernel takes the compute dtype's logits: bf16/f16)."""
  if impl not in ("auto", "pallas", "xla"):
    raise ValueError(f"model.cross_entropy_fusion_impl must be auto, pallas or xla, got {impl!r}")
  half = jnp.dtype(dtype) in (jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16))
  return impl == "pallas" or (impl == "auto" and half and jax.devices()[0].platform == "gpu")


def _loss_and_grads(x_BSH, w_HV, labels_BS, weights_BS, num_valid, with_grads, impl="auto"):
  B, S, H = x_BSH.shape
  c = chunk_positions(B, S, w_HV.shape[1])
  vocab_split = logical_axis_size("vocab") > 1
  kernel = with_grads and not vocab_split and _use_kernel(impl, x_BSH.dtype)
  interpret = jax.devices()[0].platform != "gpu"

  def step(dw_HV, chunk):
    x_BCH, labels_BC, weights_BC = chunk
    if kernel:
      lse_BC, target_BC, d_BCV = _kernel_rows(x_BCH, w_HV, labels_BC, weights_BC, num_valid, interpret)
    else:
      logits_BCV = _chunk_logits(x_BCH, w_HV, num_valid)
      lse_BC, target_BC = _lse_and_target(logits_BCV, labels_BC, vocab_split)
    loss = jnp.sum(weights_BC * (lse_BC - target_BC))
    if not with_grads:
      return dw_HV, (loss, None)
    if not kernel:
      d_BCV = _d_logits(logits_BCV, lse_BC, labels_BC, weights_BC, x_BCH.dtype)
    dx_BCH = jnp.einsum("bcv,hv->bch", d_BCV, w_HV, preferred_element_type=jnp.float32).astype(x_BCH.dtype)
    dw_HV = dw_HV + jnp.einsum("bch,bcv->hv", x_BCH, d_BCV, preferred_element_type=jnp.float32)
    return dw_HV, (loss, dx_BCH)

  dw0 = jnp.zeros(w_HV.shape, jnp.float32) if with_grads else None
  chunks = (_chunks(x_BSH, c), _chunks(labels_BS, c), _chunks(weights_BS.astype(jnp.float32), c))
  dw_HV, (loss_N, dx_NBCH) = jax.lax.scan(step, dw0, chunks)
  loss = loss_N.sum()
  if not with_grads:
    return loss
  return loss, _unchunk(dx_NBCH), dw_HV.astype(w_HV.dtype)


@functools.partial(jax.custom_vjp, nondiff_argnums=(4, 5))
def linear_cross_entropy(x_BSH, w_HV, labels_BS, weights_BS, num_valid: int, impl: CrossEntropyImpl = "auto"):
  """Σ_{b,s} weights[b,s] · CE(softmax(x[b,s] @ w)[:num_valid], labels[b,s]), in fp32."""
  return _loss_and_grads(x_BSH, w_HV, labels_BS, weights_BS, num_valid, with_grads=False)


def _fwd(x_BSH, w_HV, labels_BS, weights_BS, num_valid, impl):
  loss, dx_BSH, dw_HV = _loss_and_grads(x_BSH, w_HV, labels_BS, weights_BS, num_valid, True, impl)
  return loss, (dx_BSH, dw_HV)


def _bwd(num_valid, impl, res, g):
  dx_BSH, dw_HV = res
  return (dx_BSH * g.astype(dx_BSH.dtype), dw_HV * g.astype(dw_HV.dtype), None, None)


linear_cross_entropy.defvjp(_fwd, _bwd)
