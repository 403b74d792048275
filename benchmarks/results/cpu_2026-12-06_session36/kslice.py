"""Session 36 (CPU): does Mosaic GPU take a wgmma whose K is a 16/32/48-row slice of a
128-byte swizzled shared-memory ref, with both operands MN-major as in wgrad (x^T @ dy)?
  JAX_PLATFORMS=cpu python kslice.py K     # lowers for CUDA on the CPU; output in kslice.log
"""
import functools, sys
import jax, jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import mosaic_gpu as plgpu
print(jax.__version__)
KS = int(sys.argv[1])
T = (plgpu.TilingTransform((8, 64)), plgpu.SwizzleTransform(128))
def kernel(x_gmem, dy_gmem, o_gmem, a_smem, b_smem, bar, acc_ref):
  plgpu.copy_gmem_to_smem(x_gmem, a_smem, bar); plgpu.copy_gmem_to_smem(dy_gmem, b_smem, bar)
  plgpu.barrier_wait(bar)
  plgpu.wgmma(acc_ref, a_smem.at[pl.ds(0, KS)].transpose((1, 0)), b_smem.at[pl.ds(0, KS)])
  plgpu.wgmma_wait(0)
  o_gmem[...] = acc_ref[...]  # placeholder store
f = plgpu.kernel(kernel, out_type=jax.ShapeDtypeStruct((64, 128), jnp.float32),
    scratch_types=[plgpu.SMEM((64, 64), jnp.bfloat16, transforms=T), plgpu.SMEM((64, 128), jnp.bfloat16, transforms=T),
                    plgpu.Barrier(num_arrivals=2), plgpu.ACC((64, 128), jnp.float32)])
x = jax.ShapeDtypeStruct((64, 64), jnp.bfloat16); dy = jax.ShapeDtypeStruct((64, 128), jnp.bfloat16)
try:
  t = jax.jit(f).trace(x, dy).lower(lowering_platforms=("cuda",)).as_text()
  print("lowered", KS, "mosaic_gpu" in t)
except Exception as e:
  print("FAILED", KS, type(e).__name__, str(e)[:400])
