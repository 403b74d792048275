"""Feasibility probe (session 18) for swap-AB remainder tiles, not part of the kernels.

One tile of y[R rows, 128] = x[R, 64] @ w[64, 128] computed the swapped way: the wgmma's M is
the weight block's 128 columns (A = w^T, a transposed view of the [k, n] slot the ring holds), its
N the R rows of x (B = x_rows^T, a transposed view of the [128, k] row slot), and the [128, R]
accumulator is stored transposed into a [R, 128] shared-memory buffer (`o.T[...] = acc`), then by
TMA. Modes: `lower` (Mosaic GPU lowering for CUDA, works on a CPU), `interp` (interpret mode),
`gpu` (compiled and run on the device). Prints the max abs error against an fp32 product.

  python swap_ab_probe.py lower|interp|gpu R     # R: rows, a multiple of 8 up to 128
"""
import functools
import sys

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import mosaic_gpu as plgpu

TK, TN, BLOCK = 64, 128, 128
MODE, R = sys.argv[1], int(sys.argv[2])


def transforms(minor):
  swizzle = plgpu.find_swizzle(minor * 2 * 8)
  return plgpu.TilingTransform((8, swizzle // 2)), plgpu.SwizzleTransform(swizzle)


def kernel(x_gmem, w_gmem, o_gmem):
  @functools.partial(pl.run_scoped,
                     a=plgpu.SMEM((BLOCK, TK), jnp.bfloat16, transforms=transforms(TK)),
                     b=plgpu.SMEM((TK, TN), jnp.bfloat16, transforms=transforms(TN)),
                     o=plgpu.SMEM((R, TN), jnp.bfloat16),
                     bar=plgpu.Barrier(num_arrivals=2), collective_axes="wg")
  def _(a, b, o, bar):
    plgpu.copy_gmem_to_smem(x_gmem, a, bar)
    plgpu.copy_gmem_to_smem(w_gmem, b, bar)
    plgpu.barrier_wait(bar)

    def body(acc):
      plgpu.wgmma(acc, b.T, a.at[pl.ds(0, R)].T)  # acc[TN, R] = w^T @ x_rows^T
      plgpu.wgmma_wait(0)
      o.T[...] = acc[...].astype(jnp.bfloat16)     # y rows = acc^T
    pl.run_scoped(body, plgpu.ACC((TN, R), jnp.float32))
    plgpu.commit_smem()
    plgpu.copy_smem_to_gmem(o, o_gmem)
    plgpu.wait_smem_to_gmem(0)


def call(x, w):
  kw = dict(out_type=jax.ShapeDtypeStruct((R, TN), jnp.bfloat16), num_threads=1, thread_name="wg",
            compiler_params=plgpu.CompilerParams(lowering_semantics=plgpu.LoweringSemantics.Warpgroup))
  if MODE == "interp":
    kw["interpret"] = plgpu.InterpretGPUParams(uninitialized_memory="nan")
  return plgpu.kernel(kernel, **kw)(x, w)


x = jax.random.normal(jax.random.key(0), (BLOCK, TK), jnp.bfloat16)
w = jax.random.normal(jax.random.key(1), (TK, TN), jnp.bfloat16)
if MODE == "lower":
  text = jax.jit(call).trace(x, w).lower(lowering_platforms=("cuda",)).as_text()
  print(f"R={R} lowered for CUDA:", "mosaic_gpu" in text)
else:
  y = jax.jit(call)(x, w)
  ref = x[:R].astype(jnp.float32) @ w.astype(jnp.float32)
  print(f"R={R} {MODE}: max abs err {float(jnp.max(jnp.abs(y.astype(jnp.float32) - ref))):.3g} "
        f"(max |y| {float(jnp.max(jnp.abs(ref))):.3g})")
