"""Diagnostic (session 18): does an MMA on zero rows cost less power, so a power-limited GEMM runs
faster when part of its rows are zero? The padding rows of our tiles are real rows (the next
group's), so if it does, zeroing them in shared memory before the wgmma could pay.

Qwen3 fc2 and fc1 forward, sustained timings with the SM clock and board power sampled:
the equal-groups einsum on random x, then with the last 12.5% / 50% of each group's rows zero;
our kernel (the table's tile) on Dirichlet(1) groups and on equal groups.
"""
import sys

import jax
import jax.numpy as jnp

sys.path.insert(0, "/tmp/pp/benchmarks")
from grouped_gemm import SHAPES, einsum_call  # noqa: E402
from grouped_gemm_profile import gpu_clocks  # noqa: E402
from moejax.kernels.grouped_gemm import configs  # noqa: E402
from moejax.kernels.grouped_gemm.autotune import inputs, kernel_call, seconds_per_call  # noqa: E402

m, e, h, f = SHAPES["qwen3"]
for orient in ("fc2", "fc1"):
  k, n = (h, 2 * f) if orient == "fc1" else (f, h)
  gs, x, dy, w = inputs(m, e, k, n)
  cfg = configs.lookup("fwd", m, e, k, n)
  rows = jnp.arange(m) % (m // e)
  runs = []
  for frac in (0.0, 0.125, 0.5):
    xz = jnp.where((rows >= (m // e) * (1 - frac))[:, None], 0, x).astype(x.dtype)
    runs.append((f"einsum, equal groups, last {frac:.1%} of each group's rows zero",
                 einsum_call("fwd", e, xz, dy, w)))
  runs.append(("ours, Dirichlet(1) groups", kernel_call("fwd", cfg, gs, x, dy, w)))
  runs.append(("ours, equal groups", kernel_call("fwd", cfg, jnp.full((e,), m // e, jnp.int32), x, dy, w)))
  for name, (fn, args) in runs:
    jax.block_until_ready(fn(*args))
    clk = {}
    with gpu_clocks(clk):
      t = seconds_per_call(fn, *args, min_time=0.5, max_calls=10**6)
    print(f"qwen3 {orient} fwd {name}: {t * 1e3:.3f} ms {2.0 * m * k * n / t / 1e12:.0f} TFLOP/s "
          f"{clk.get('sm_mhz', 0):.0f} MHz {clk.get('watts', 0):.0f} W", flush=True)
