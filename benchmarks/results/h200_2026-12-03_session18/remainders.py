"""Diagnostic (session 18): what a group's part-filled last tile costs.

Qwen3 fc2 and fc1 with the table's tile (forward and dgrad also with half tiles toggled), on
group sizes 128 * floor(d / 128) + r for the benchmark's Dirichlet(1) sizes d and a fixed
remainder r in {0, 32, 64, 96} (so every group has the same part-filled last 128 rows, with the
same imbalance), then on the Dirichlet sizes themselves and on equal groups; the equal-groups
einsum of the same call beside them. TFLOP/s count the rows in groups only. "last tile costs" is
the time of a group's last part-filled 128 rows in full 128-row blocks: (t - F * t0 / F0) / P for
F full and P part-filled blocks, t0 and F0 of the r = 0 run (in wgrad a block is two 64-row
k-steps of each of the group's output tiles).

  python3 remainders.py [SECONDS [OPS [FIELDS]]]  # seconds of back-to-back calls per timing
                                          # (default 0.3); OPS: comma list of fwd, dgrad, wgrad
                                          # (default fwd); FIELDS: TileConfig fields set on the
                                          # table's tile, e.g. swap_ab=1 (session 19)
"""
import dataclasses
import sys

import numpy as np
import jax.numpy as jnp

sys.path.insert(0, "/tmp/pp/benchmarks")
from grouped_gemm import SHAPES, einsum_call  # noqa: E402
from grouped_gemm_profile import changed  # noqa: E402
from moejax.kernels.grouped_gemm import configs  # noqa: E402
from moejax.kernels.grouped_gemm.autotune import dirichlet_sizes, inputs, kernel_call, seconds_per_call  # noqa: E402

m, e, h, f = SHAPES["qwen3"]
min_time = float(sys.argv[1]) if len(sys.argv) > 1 else 0.3
ops = sys.argv[2].split(",") if len(sys.argv) > 2 else ["fwd"]
fields = sys.argv[3] if len(sys.argv) > 3 else ""
d = dirichlet_sizes(m, e)
for orient in ("fc2", "fc1"):
  k, n = (h, 2 * f) if orient == "fc1" else (f, h)
  _, x, dy, w = inputs(m, e, k, n)
  for op in ops:
    tuned = configs.lookup(op, m, e, *((n, k) if op == "dgrad" else (k, n)))
    tuned = changed(tuned, fields) if fields else tuned
    fn, args = einsum_call(op, e, x, dy, w)
    t = seconds_per_call(fn, *args, min_time=min_time, max_calls=10**6)
    print(f"qwen3 {orient} {op} einsum, equal groups: {t * 1e3:.3f} ms {2.0 * m * k * n / t / 1e12:.0f} TFLOP/s",
          flush=True)
    for half in (tuned.half_tiles,) + ((not tuned.half_tiles,) if op != "wgrad" else ()):
      cfg = dataclasses.replace(tuned, half_tiles=half)
      base = None
      cases = [(f"r={r}", 128 * (d // 128) + np.where(d > 0, r, 0)) for r in (0, 32, 64, 96)]
      cases += [("Dirichlet", d), ("equal", np.full(e, m // e))]
      for name, sizes in cases:
        sizes = sizes.astype(np.int32)
        while sizes.sum() > m:  # keep inside x: trim the largest group
          sizes[np.argmax(sizes)] -= 128
        full, part = int(np.sum(sizes // 128)), int(np.sum(sizes % 128 > 0))
        fn, args = kernel_call(op, cfg, jnp.asarray(sizes), x, dy, w)
        t = seconds_per_call(fn, *args, min_time=min_time, max_calls=10**6)
        base = base or t / full
        cost = f"{(t - full * base) / part / base:.2f}" if part else "-"
        print(f"qwen3 {orient} {op} half_tiles={half} {name}: rows {sizes.sum()} full tiles {full} "
              f"part-filled {part}: {t * 1e3:.3f} ms {2.0 * sizes.sum() * k * n / t / 1e12:.0f} TFLOP/s "
              f"last tile costs {cost}", flush=True)
