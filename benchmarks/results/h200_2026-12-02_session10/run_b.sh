#!/bin/bash
# Session 10, call b: do 2-CTA clusters (TMA multicast of one operand) pay on the H200 at our tile
# (128 x 256, k 64, 4 stages, two 64-row consumer warpgroups)? JAX's own Hopper matmul example
# (jax.experimental.pallas.ops.gpu.hopper_matmul_mgpu) has the same structure and a cluster option;
# timed on one expert's dense fc1/fc2 of the Mixtral proxy and on 8192^3, against XLA's cuBLAS dot.
source benchmarks/device_env.sh
cd /tmp
python3 - <<'PY' 2>&1 | grep -vE "^WARNING|bfc_allocator" | tee $OUT/cluster_probe.txt
import functools
import jax, jax.numpy as jnp
from jax.experimental.pallas.ops.gpu import hopper_matmul_mgpu as hm
from moejax.kernels.grouped_gemm.autotune import seconds_per_call
D = hm.MatmulDimension
shapes = {"fc1 expert": (4096, 4096, 28672), "fc2 expert": (4096, 14336, 4096), "8192^3": (8192, 8192, 8192)}
for name, (m, k, n) in shapes.items():
  ka, kb = jax.random.split(jax.random.key(0))
  a = jax.random.normal(ka, (m, k), jnp.bfloat16)
  b = (jax.random.normal(kb, (k, n), jnp.float32) / k ** 0.5).astype(jnp.bfloat16)
  flops = 2.0 * m * k * n
  dot = jax.jit(lambda a, b: a @ b)
  ref = dot(a, b).astype(jnp.float32)
  t = seconds_per_call(dot, a, b)
  print(f"{name:11s} cublas (XLA dot)                      {t*1e3:7.3f} ms {flops/t/1e12:5.0f} TFLOP/s", flush=True)
  for cl in (None, D.M, D.N):
    for gm, gw in ((D.M, 4), (D.N, 4), (D.N, 16)):
      cfg = hm.TuningConfig(tile_m=64, tile_n=256, tile_k=64, max_concurrent_steps=4, grid_minor_dim=gm,
                            grid_tile_width=gw, wg_dimension=D.M, cluster_dimension=cl)
      fn = jax.jit(functools.partial(hm.matmul, c=None, config=cfg))
      try:
        out = fn(a, b)
        err = float(jnp.linalg.norm(out.astype(jnp.float32) - ref) / jnp.linalg.norm(ref))
        t = seconds_per_call(fn, a, b)
      except Exception as e:  # noqa: BLE001
        print(f"{name:11s} cluster={cl} order=({gm},{gw}) failed: {str(e).splitlines()[0][:150]}", flush=True)
        continue
      print(f"{name:11s} cluster={str(cl):4s} order=({gm},{gw:2d})          {t*1e3:7.3f} ms {flops/t/1e12:5.0f} TFLOP/s"
            f"  err {err:.1e}", flush=True)
PY
