"""Softmax cross-entropy of the head's logits, with its gradient, in one Pallas Triton kernel.

`softmax_xent_rows(logits_RV, labels_R, weights_R, num_valid)` -> (lse_R, target_R, d_RV):
the log-sum-exp of each row over its first `num_valid` columns, the row's logit at its label,
and d = weight · (softmax − onehot(label)) in the logits' dtype (zero past `num_valid`).
One program per row reads the row twice: an online max/sum pass, then the pass that writes d.
Labels must lie in [0, num_valid).

Written by hand because XLA emits the online (max, Σexp) reduction at about a third of HBM
bandwidth on the H200 (3.1 ms for the Qwen3 proxy's 5 GB of bf16 logits, against 3.1 ms for
the d pass that reads and writes them; benchmarks/RESULTS.md). On CPU it runs in Pallas'
interpret mode (the tests).
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as pltriton

BLOCK = 8192      # columns per load (a power of two, as Triton needs)
NUM_WARPS = 8


def _block_size(v: int) -> int:
  """The largest power of two <= min(BLOCK, v)."""
  return 1 << (min(BLOCK, v).bit_length() - 1)


def _kernel(logits_ref, labels_ref, weights_ref, d_ref, lse_ref, target_ref, *, num_valid, block, interpret):
  """One row. Whole blocks below `num_valid` take no masks (the per-element work sets the pace, not
  HBM); the columns from the last whole block on go through `_tail` blocks, which end at the
  row's end so that no access leaves it. The label's logit is read once, and its d fixed last."""
  row = pl.program_id(0)
  v = logits_ref.shape[1]
  whole = num_valid // block
  iota = lax.broadcasted_iota(jnp.int32, (block,), 0)
  load = lambda start: pltriton.load(logits_ref.at[row, pl.ds(start, block)]).astype(jnp.float32)

  def _tail(j):
    """Tail block j (columns from whole·block on): its start, columns, and which are its own."""
    start = jnp.minimum(whole * block + j * block, v - block)
    c = start + iota
    return start, c, c >= whole * block + j * block

  def online(carry, x):
    m, s = carry
    m_new = jnp.maximum(m, jnp.max(x))
    return m_new, s * jnp.exp(m - m_new) + jnp.sum(jnp.exp(x - m_new))

  carry = lax.fori_loop(0, whole, lambda j, carry: online(carry, load(j * block)),
                        (jnp.float32(-jnp.inf), jnp.float32(0)))
  if num_valid % block:  # the valid columns past the whole blocks fit in one tail block
    start, c, own = _tail(0)
    carry = online(carry, jnp.where(own & (c < num_valid), load(start), -jnp.inf))
  m, s = carry
  lse = m + jnp.log(s)
  w = weights_ref[row]
  label = labels_ref[row]

  def d_whole(j, _):
    pltriton.store(d_ref.at[row, pl.ds(j * block, block)], (jnp.exp(load(j * block) - lse) * w).astype(d_ref.dtype))
    return 0

  def d_tail(j, _):
    start, c, own = _tail(j)
    p = jnp.where(c < num_valid, jnp.exp(load(start) - lse), 0.0)
    pltriton.store(d_ref.at[row, pl.ds(start, block)], (p * w).astype(d_ref.dtype), mask=own)
    return 0

  lax.fori_loop(0, whole, d_whole, 0)
  lax.fori_loop(0, pl.cdiv(v - whole * block, block), d_tail, 0)
  target = jnp.sum(pltriton.load(logits_ref.at[row, pl.ds(label, 1)]).astype(jnp.float32))
  if not interpret:  # the label's d below lands after the loop's store of that column (the interpreter runs in order)
    pltriton.debug_barrier()
  pltriton.store(d_ref.at[row, pl.ds(label, 1)],
                 ((jnp.exp(target - lse) - 1.0) * w).astype(d_ref.dtype)[None])
  lse_ref[row] = lse
  target_ref[row] = target


@functools.partial(jax.jit, static_argnames=("num_valid", "interpret"))
def softmax_xent_rows(logits_RV, labels_R, weights_R, num_valid: int, interpret: bool = False):
  """(lse [R] fp32, target logit [R] fp32, d [R, V] in logits' dtype); see the module doc."""
  r, v = logits_RV.shape
  block = _block_size(v)
  kernel = functools.partial(_kernel, num_valid=num_valid, block=block, interpret=interpret)
  whole = pl.BlockSpec(memory_space=pl.ANY)
  d_RV, lse_R, target_R = pl.pallas_call(
      kernel,
      out_shape=(jax.ShapeDtypeStruct((r, v), logits_RV.dtype), jax.ShapeDtypeStruct((r,), jnp.float32),
                 jax.ShapeDtypeStruct((r,), jnp.float32)),
      grid=(r,),
      in_specs=[whole, whole, whole],
      out_specs=(whole, whole, whole),
      compiler_params=pltriton.CompilerParams(num_warps=NUM_WARPS, num_stages=1),
      interpret=interpret,
  )(logits_RV, labels_R.astype(jnp.int32), weights_R.astype(jnp.float32))
  return lse_R, target_R, d_RV
