"""Session 36 (CPU): wgrad with trim_k.patch applied (TileConfig.trim_k) equals float64 in the
Mosaic GPU interpreter; run from the repo root with the patch applied (output in trim_check.log)."""
import pathlib, sys
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[3] / "tests" / "kernels"))
import numpy as np, jax.numpy as jnp
from moejax.kernels.grouped_gemm import mosaic
from test_grouped_gemm import _inputs, _np_ref, _rel
for sizes in ([5, 118, 133], [0, 64, 0, 65, 0, 7, 100], [17, 1, 31, 200, 7]):
  m = 256; k = n = 128
  x, _, dy, gs = _inputs(m, k, n, sizes, seed=5)
  for pp in (False, True):
    cfg = mosaic.TileConfig(tile_n=64, stages=3, pingpong=pp, trim_k=True)
    dw = mosaic.ragged_contract(x, dy, gs, cfg=cfg, out_dtype=jnp.float32, interpret=True)
    _, _, ref = _np_ref(x, jnp.zeros((len(sizes), k, n), jnp.bfloat16), dy, gs)
    print(sizes, pp, _rel(np.asarray(dw), ref), np.isnan(np.asarray(dw)).any())
