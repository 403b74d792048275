#!/bin/bash
# Ran on commit 38ed494 (half tiles and the wgrad deal in tiles.json). Session 16, call c
# (c1_tile_k128/): 128-deep k-steps (tile_k=128, half as many ring steps per tile; never tried:
# the autotuner's candidates have tile_k=64 only). (1) correctness of the tile_k=128 forms against
# jax.lax.ragged_dot in fp32 on Qwen3-like groups (stops if wrong); (2) each Qwen3 forward/dgrad
# call, same process: tuned, ping-pong+cluster and shared tiles with tile_k=128, tuned again, einsum.
set -u -o pipefail
O=$OUT/c1_tile_k128; mkdir -p $O
source benchmarks/device_env.sh
cd /tmp
F='^WARNING|bfc_allocator'
S="sed s/TileConfig(//;s/alternate_epilogues=True,//"
timeout 120 python3 - <<'PY' 2>&1 | grep -vE "$F" | tee $O/check.log || exit 1
import jax, jax.numpy as jnp, numpy as np
from moejax.kernels.grouped_gemm import mosaic, autotune
m, e = 8192, 128
gs = jnp.asarray(autotune.dirichlet_sizes(m, e))
for k, n in ((2048, 1536), (768, 2048), (1536, 2048), (2048, 768)):
  kx, kw = jax.random.split(jax.random.key(0))
  x = jax.random.normal(kx, (m, k), jnp.bfloat16)
  w = (jax.random.normal(kw, (e, k, n), jnp.float32) / np.sqrt(k)).astype(jnp.bfloat16)
  ref = np.asarray(jax.lax.ragged_dot(x, w, gs, preferred_element_type=jnp.float32))
  for cfg in (mosaic.TileConfig(tile_n=128, tile_k=128, stages=3, grid_tile_width=8, pingpong=True, cluster=2, half_tiles=True),
              mosaic.TileConfig(tile_n=256, tile_k=128, stages=2, grid_tile_width=8, half_tiles=True)):
    y = np.asarray(jax.jit(lambda a, b: mosaic.ragged_mm(a, b, gs, cfg=cfg, out_dtype=jnp.float32))(x, w))
    err = np.abs(y - ref).max() / np.abs(ref).max()
    print(f"k={k} n={n} tile_n={cfg.tile_n} tile_k=128 pingpong={cfg.pingpong}: rel err {err:.1e}" + (" WRONG" if err > 1e-3 else ""))
PY
grep -q WRONG $O/check.log && exit 1
timeout 280 python3 /tmp/pp/benchmarks/grouped_gemm_profile.py --shape qwen3 --orient fc1,fc2 --op fwd,dgrad \
  --sweep "tuned 128,3,8,1,tile_k=128,pingpong=1,cluster=2,half_tiles=1 256,2,8,1,tile_k=128,pingpong=0,cluster=1,half_tiles=1 tuned einsum" \
  2>&1 | grep -vE "$F" | $S | tee $O/sweep.log
