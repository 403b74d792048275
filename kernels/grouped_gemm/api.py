"""The single call site for grouped GEMM: `grouped_gemm(x, w, group_sizes)`.

Rows of `x` are sorted by group; rows of group g are multiplied by `w[g]`.
Rows past `sum(group_sizes)` produce zeros. Backends are swapped here only:
  impl="xla"     jax.lax.ragged_dot (everywhere; slow on GPU, and on CPU it multiplies every
                 row by every group's weight)
  impl="tiled"   row tiles through XLA, each multiplied by its group's weight only (tiled.py)
  impl="pallas"  Mosaic GPU kernels (Hopper); on CPU they run interpreted (tests)
  impl="tokamax" tokamax.ragged_dot, when tokamax is installed
  impl="auto"    pallas on a Hopper GPU when the shape fits its tiles, tiled on CPU, else xla
"""
from __future__ import annotations

import functools
import typing

import jax
import jax.numpy as jnp

from moejax.config import GroupedGemmImpl
from moejax.kernels.grouped_gemm.tiled import tiled_mm
from moejax.kernels.vma import vary_like

IMPLS = typing.get_args(GroupedGemmImpl)
_PALLAS_DTYPES = (jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16))


def _is_hopper() -> bool:
  try:
    dev = jax.devices()[0]
  except RuntimeError:
    return False
  if dev.platform != "gpu":
    return False
  cc = str(getattr(dev, "compute_capability", ""))
  return cc.startswith("9.")


def _pallas_plan(m, g, k, n, dtype):
  """(fwd_cfg, dgrad_cfg, wgrad_cfg) for the shape, or None with a reason."""
  from moejax.kernels.grouped_gemm import configs
  if jnp.dtype(dtype) not in _PALLAS_DTYPES:
    return None, f"dtype {jnp.dtype(dtype)} (pallas kernels take bfloat16/float16)"
  plan = (configs.lookup("fwd", m, g, k, n), configs.lookup("dgrad", m, g, n, k),
          configs.lookup("wgrad", m, g, k, n))
  if any(c is None for c in plan):
    return None, f"K={k} and N={n} must be multiples of 64 for the pallas tiles"
  return plan, None


def _pad(a, axis, mult):
  """Zero-pad `axis` of `a` up to a multiple of `mult` (the kernels' tile grid)."""
  pad = (-a.shape[axis]) % mult
  if pad == 0:
    return a
  widths = [(0, 0)] * a.ndim
  widths[axis] = (0, pad)
  return jnp.pad(a, widths)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4, 5))
def _pallas_gg(x_MK, w_GKN, group_sizes_G, out_dtype, plan, interpret):
  return _pallas_fwd(x_MK, w_GKN, group_sizes_G, out_dtype, plan, interpret)[0]


def _pallas_fwd(x_MK, w_GKN, group_sizes_G, out_dtype, plan, interpret):
  from moejax.kernels.grouped_gemm import mosaic
  m = x_MK.shape[0]
  xp = _pad(x_MK, 0, mosaic.BLOCK)
  sched = mosaic.tile_schedule(group_sizes_G, xp.shape[0],
                               mosaic.merged_rows(plan[0], out_dtype))
  y = mosaic.ragged_mm(xp, w_GKN, group_sizes_G, cfg=plan[0], out_dtype=out_dtype,
                       interpret=interpret, sched=sched)
  return vary_like(y[:m], x_MK, w_GKN), (x_MK, w_GKN, group_sizes_G, sched)


def _pallas_bwd(out_dtype, plan, interpret, res, dy_MN):
  from moejax.kernels.grouped_gemm import mosaic
  x_MK, w_GKN, group_sizes_G, sched = res
  m, k = x_MK.shape
  dy = _pad(dy_MN.astype(x_MK.dtype), 0, mosaic.BLOCK)
  # dgrad reuses the forward's tile schedule when its tiles merge groups' tails alike
  same = mosaic.merged_rows(plan[1], x_MK.dtype) == mosaic.merged_rows(plan[0], out_dtype)
  dx = mosaic.ragged_mm(dy, w_GKN, group_sizes_G, cfg=plan[1], transpose_rhs=True,
                        out_dtype=x_MK.dtype, interpret=interpret,
                        sched=sched if same else None)[:m]
  # wgrad tiles K by 128 (two 64-row consumer halves): pad x's columns if needed.
  xp = _pad(_pad(x_MK, 0, mosaic.BLOCK), 1, mosaic.BLOCK)
  dw = mosaic.ragged_contract(xp, dy, group_sizes_G, cfg=plan[2], out_dtype=w_GKN.dtype,
                              interpret=interpret)[:, :k]
  return vary_like(dx, x_MK), vary_like(dw, w_GKN), None


_pallas_gg.defvjp(_pallas_fwd, _pallas_bwd)
# Jitted so that every layer's call at one shape is one jaxpr, lowered once: each Mosaic kernel is
# then compiled once per shape and tile, not once per layer (model.scan_layers=False traces each
# layer apart; the scan traced its body once)
_pallas_gg = jax.jit(_pallas_gg, static_argnums=(3, 4, 5))


def _check_args(x_MK, w_GKN, group_sizes_G, impl):
  if impl not in IMPLS:
    raise ValueError(f"impl must be one of {IMPLS}, got {impl!r} "
                     "(set moe.grouped_gemm_impl accordingly)")
  if x_MK.ndim != 2:
    raise ValueError(f"x_MK must be 2-D [M, K], got shape {x_MK.shape}; "
                     "flatten the token dims first")
  if w_GKN.ndim != 3:
    raise ValueError(f"w_GKN must be 3-D [G, K, N], got shape {w_GKN.shape}")
  if group_sizes_G.ndim != 1 or group_sizes_G.shape[0] != w_GKN.shape[0]:
    raise ValueError(f"group_sizes_G must have shape [G]=[{w_GKN.shape[0]}] to match "
                     f"w_GKN {w_GKN.shape}, got {group_sizes_G.shape}")
  if x_MK.shape[1] != w_GKN.shape[1]:
    raise ValueError(f"contracting dims differ: x_MK {x_MK.shape} vs w_GKN "
                     f"{w_GKN.shape}; x's K must equal w's dim 1")
  if not jnp.issubdtype(group_sizes_G.dtype, jnp.integer):
    raise ValueError(f"group_sizes_G must be integer, got {group_sizes_G.dtype}")


def pallas_interpreted(impl: str) -> bool:
  """Whether `impl` runs the Pallas kernels in interpret mode (on CPU: the tests). Interpret mode
  calls back to the host, an effect `jax.checkpoint` cannot differentiate."""
  return impl == "pallas" and jax.devices()[0].platform == "cpu"


def resolve_impl(x_MK, w_GKN, impl: str = "auto") -> str:
  """The backend `grouped_gemm` uses for these operands."""
  if impl != "auto":
    return impl
  if _is_hopper():
    plan = None
    if x_MK.dtype == w_GKN.dtype:
      plan, _ = _pallas_plan(x_MK.shape[0], w_GKN.shape[0], w_GKN.shape[1],
                             w_GKN.shape[2], x_MK.dtype)
    return "xla" if plan is None else "pallas"
  return "tiled" if jax.devices()[0].platform == "cpu" else "xla"


def grouped_gemm(x_MK: jax.Array, w_GKN: jax.Array, group_sizes_G: jax.Array,
                 *, preferred_element_type=None, impl: str = "auto") -> jax.Array:
  """y[M, N] = x[M, K] @ w[g] for the rows of group g (dropless MoE experts)."""
  _check_args(x_MK, w_GKN, group_sizes_G, impl)
  impl = resolve_impl(x_MK, w_GKN, impl)
  group_sizes_G = group_sizes_G.astype(jnp.int32)
  if impl in ("tiled", "pallas"):
    # Their custom VJPs must return each gradient typed as its operand. Inside shard_map the
    # experts' weights do not vary over the axes the tokens vary over (expert data parallelism),
    # so both operands are cast to vary over the union first (pvary): its transpose sums the
    # weights' gradient over those axes, as autodiff does for ragged_dot.
    x_MK, w_GKN = vary_like(x_MK, w_GKN), vary_like(w_GKN, x_MK)
  if impl == "xla":
    return jax.lax.ragged_dot(x_MK, w_GKN, group_sizes_G,
                              preferred_element_type=preferred_element_type)
  if impl == "tiled":
    return tiled_mm(x_MK, w_GKN, group_sizes_G, preferred_element_type=preferred_element_type)
  if impl == "tokamax":
    try:
      import tokamax
    except ImportError as e:
      raise ValueError("impl='tokamax' needs the tokamax package (pip install "
                       "tokamax); use impl='auto' or 'pallas' instead") from e
    return tokamax.ragged_dot(x_MK, w_GKN, group_sizes_G,
                              preferred_element_type=preferred_element_type)
  # pallas
  if x_MK.dtype != w_GKN.dtype:
    raise ValueError(f"impl='pallas' needs x_MK and w_GKN of one dtype, got "
                     f"{x_MK.dtype} and {w_GKN.dtype}; cast one of them")
  m, (g, k, n) = x_MK.shape[0], w_GKN.shape
  plan, why = _pallas_plan(m, g, k, n, x_MK.dtype)
  if plan is None:
    raise ValueError(f"impl='pallas' cannot run x_MK {x_MK.shape} @ w_GKN "
                     f"{w_GKN.shape}: {why}; use impl='auto' or 'xla'")
  interpret = pallas_interpreted("pallas")
  out_dtype = jnp.dtype(preferred_element_type or x_MK.dtype)
  return _pallas_gg(x_MK, w_GKN, group_sizes_G, out_dtype, plan, interpret)
