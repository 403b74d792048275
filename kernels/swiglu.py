"""The experts' weighted SwiGLU backward in one Pallas Triton kernel: one read of (h, g), one write
of dh, and the routing probs' gradient as the row sums of the same pass.

`weighted_swiglu_bwd_rows(h_R2F, g_RF, probs_R)` -> (dh [R, 2F] in h's dtype, dprobs [R] fp32) for
out = silu(gate)·up·prob with (gate, up) interleaved in h ((f, 0) gate, (f, 1) up), in fp32 inside.

Written by hand because XLA splits this graph on the H200: it keeps silu's sigmoid, which both
halves of each pair use, as an fp32 [R, F] array between two passes (2.65 ms a Mixtral-proxy
layer for ~4.7 GB of operands; benchmarks/RESULTS.md). On CPU it runs in Pallas' interpret mode
(the tests); moejax.moe.experts uses it on GPUs.

In bf16 each (gate, up) pair is read and written as one 32-bit word: bf16 is the high half of an
fp32, so a shift and a mask give both halves exactly, and the loads and stores are contiguous
(Triton vectorizes them). Two strided 2-byte accesses per pair ran the kernel at ~2.1 TB/s (2.2 ms
a Mixtral layer).
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as pltriton

from moejax.kernels.vma import out_struct

BLOCK = 2048      # pairs per load (a power of two, as Triton needs)
NUM_WARPS = 4


_HIGH = np.uint32(0xFFFF0000)


def _bf16_bits(x):
  """fp32 -> its bf16 rounding's 16 bits, in the low half of a uint32."""
  return lax.bitcast_convert_type(x.astype(jnp.bfloat16), jnp.uint16).astype(jnp.uint32)


def _kernel(h_ref, g_ref, p_ref, dh_ref, dp_ref, *, f, block, packed):
  """One row, in blocks of pairs; the last block ends at the row's end (`own`: its new pairs).
  `packed`: h and dh are uint32 words of bf16 (gate, up) pairs, gate in the low half."""
  row = pl.program_id(0)
  prob = p_ref[row].astype(jnp.float32)
  iota = lax.broadcasted_iota(jnp.int32, (block,), 0)

  def step(j, acc):
    start = jnp.minimum(j * block, f - block)
    own = start + iota >= j * block
    pairs, first, second = pl.ds(start, block), jnp.int32(0), jnp.int32(1)
    if packed:
      word = pltriton.load(h_ref.at[row, pairs])
      gate = lax.bitcast_convert_type(word << 16, jnp.float32)
      up = lax.bitcast_convert_type(word & _HIGH, jnp.float32)
    else:
      gate = pltriton.load(h_ref.at[row, pairs, first]).astype(jnp.float32)
      up = pltriton.load(h_ref.at[row, pairs, second]).astype(jnp.float32)
    g = pltriton.load(g_ref.at[row, pl.ds(start, block)]).astype(jnp.float32)
    sig = 1.0 / (1.0 + jnp.exp(-gate))
    silu = gate * sig
    dgate = g * prob * up * sig * (1.0 + gate * (1.0 - sig))
    dup = g * prob * silu
    if packed:
      pltriton.store(dh_ref.at[row, pairs], (_bf16_bits(dup) << 16) | _bf16_bits(dgate), mask=own)
    else:
      pltriton.store(dh_ref.at[row, pairs, first], dgate.astype(dh_ref.dtype), mask=own)
      pltriton.store(dh_ref.at[row, pairs, second], dup.astype(dh_ref.dtype), mask=own)
    return acc + jnp.sum(jnp.where(own, g * silu * up, 0.0))

  dp_ref[row] = lax.fori_loop(0, pl.cdiv(f, block), step, jnp.float32(0))


@functools.partial(jax.jit, static_argnames=("interpret",))
def weighted_swiglu_bwd_rows(h_R2F, g_RF, probs_R, interpret: bool = False):
  """(dh [R, 2F] in h's dtype, dprobs [R] fp32); see the module doc."""
  r, f = g_RF.shape
  block = 1 << (min(BLOCK, f).bit_length() - 1)
  packed = h_R2F.dtype == jnp.bfloat16
  h = h_R2F.reshape(r, f, 2)
  if packed:  # XLA's bitcast: no copy
    h = lax.bitcast_convert_type(h, jnp.uint32)
  whole = pl.BlockSpec(memory_space=pl.ANY)
  dh, dprobs_R = pl.pallas_call(
      functools.partial(_kernel, f=f, block=block, packed=packed),
      out_shape=(out_struct(h.shape, h.dtype, h_R2F), out_struct((r,), jnp.float32, h_R2F)),
      grid=(r,),
      in_specs=[whole, whole, whole],
      out_specs=(whole, whole),
      compiler_params=pltriton.CompilerParams(num_warps=NUM_WARPS, num_stages=1),
      interpret=interpret,
  )(h, g_RF, probs_R)
  if packed:
    dh = lax.bitcast_convert_type(dh, jnp.bfloat16)
  return dh.reshape(h_R2F.shape), dprobs_R
