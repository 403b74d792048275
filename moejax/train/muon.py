"""Megatron's Muon (`--optimizer muon`): the layers' matrices updated by their momentum orthogonalized
with Newton-Schulz iterations, everything else (embedding, output layer, norms, biases) by AdamW.

Written out rather than taken from `optax.contrib.muon`, whose update differs from Megatron's: it
bias-corrects the momentum, has no coefficient schedules per iteration, no Megatron scale modes and no
view of fused layers. This follows megatron-core's `TensorParallelMuon` over NVIDIA's emerging_optimizers
(`OrthogonalizedOptimizer`, `newton_schulz`, `get_muon_scale_factor`), step by step:
  momentum  m ← β·m + (1 − β)·g;  u = m, or g + β·(m − g) with Nesterov
  update    p ← p − lr·(wd·p + scale(out, in)·NS(u))   (decoupled weight decay)
and tests/train/test_muon.py holds it to that code. What a matrix is follows Megatron's layers: the
dense and shared MLPs' gate and up are one (its linear_fc1), q, k and v apart (`muon_split_qkv`, its
default) or one (its linear_qkv), every expert's weights their own, the router's weight one; the scan's layer axis and the expert axis
are batch axes. With `muon_tp_mode="blockwise"` (Megatron's default) and tp or etp > 1, each rank's
block of a matrix split by tensor parallelism is orthogonalized apart, as Megatron's ranks do; the other
modes orthogonalize the whole matrix (Megatron computes it duplicated or distributed; the update is the
same, and here XLA places the work).
"""
from __future__ import annotations

import itertools
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

# emerging_optimizers' coefficient sets (a, b, c) of X ← a·X + b·(XXᵀ)X + c·(XXᵀ)²X, one per iteration:
# `quintic` and `simple` cycle through theirs, `polar_express` repeats its last
_COEFFICIENTS = {
    "simple": [(3.4445, -4.7750, 2.0315)],
    "quintic": [(4.0848, -6.8946, 2.9270), (3.9505, -6.3029, 2.6377), (3.7418, -5.5913, 2.3037),
                (2.8769, -3.1427, 1.2046), (2.8366, -3.0525, 1.2012)],
    "polar_express": [(8.2051, -22.9019, 16.4607), (4.0664, -2.8612, 0.5184), (3.9096, -2.8234, 0.5250),
                      (3.2856, -2.4153, 0.4853), (2.2779, -1.6198, 0.3985), (1.8726, -1.2307, 0.3585),
                      (1.8564, -1.2132, 0.3568), (1.8750, -1.2500, 0.3750)],
}


def coefficients(kind: str, steps: int) -> list[tuple[float, float, float]]:
  sets = _COEFFICIENTS[kind]
  if kind == "polar_express":
    return [sets[min(i, len(sets) - 1)] for i in range(steps)]
  return [sets[i % len(sets)] for i in range(steps)]


def newton_schulz(x, steps: int, kind: str = "quintic", precision: str = "medium", eps: float = 1e-7):
  """The orthogonalized form of each [.., in, out] matrix of `x` (fp32 in and out). The Gram matrix is
  taken over the smaller side, the side Megatron's [out, in] weights give: x is transposed unless
  out > in. "medium" runs the iterations in bf16 (each product accumulated in fp32 and rounded once, as
  torch's bf16 addmm), "high" in fp32 at the backend's default matmul precision, "highest" in full fp32."""
  transpose = x.shape[-1] <= x.shape[-2]
  if transpose:
    x = jnp.swapaxes(x, -1, -2)
  norm = jnp.sqrt(jnp.sum(jnp.square(x), axis=(-2, -1), keepdims=True))
  dt = jnp.bfloat16 if precision == "medium" else jnp.float32
  prec = jax.lax.Precision.HIGHEST if precision == "highest" else None
  X = (x / jnp.maximum(norm, eps)).astype(dt)

  def mm(a, b, spec):
    return jnp.einsum(spec, a, b, precision=prec, preferred_element_type=jnp.float32)

  for a, b, c in coefficients(kind, steps):
    A = mm(X, X, "...ik,...jk->...ij").astype(dt)
    B = (b * A.astype(jnp.float32) + c * mm(A, A, "...ik,...kj->...ij")).astype(dt)
    X = (a * X.astype(jnp.float32) + mm(B, X, "...ik,...kj->...ij")).astype(dt)
  X = X.astype(jnp.float32)
  return jnp.swapaxes(X, -1, -2) if transpose else X


def scale_factor(size_out: int, size_in: int, mode: str) -> float:
  """emerging_optimizers' get_muon_scale_factor."""
  if mode == "shape_scaling":
    return max(1.0, size_out / size_in) ** 0.5
  if mode == "spectral":
    return max(size_out, size_in) ** 0.5
  return (size_out / size_in) ** 0.5  # unit_rms_norm


class MatrixView(NamedTuple):
  """A parameter as x @ W, W [*batch, *in, *out]: how many trailing axes are `in` and `out`, and which
  side Megatron's tensor parallelism splits (over etp for experts, tp otherwise; None: not split)."""
  in_ndim: int
  out_ndim: int
  split: str | None
  expert: bool = False


# moejax's parameter names (the last path key) and their matrices; `kernel` only under `router`
_VIEWS = {
    "q": MatrixView(1, 2, "out"), "k": MatrixView(1, 2, "out"), "v": MatrixView(1, 2, "out"),
    "o": MatrixView(2, 1, "in"),
    "q_down": MatrixView(1, 1, None), "kv_down": MatrixView(1, 1, None),   # MLA: duplicated over tp
    "q_up": MatrixView(1, 2, "out"), "kv_up": MatrixView(1, 2, "out"),
    "gate": MatrixView(1, 1, "out"), "up": MatrixView(1, 1, "out"), "down": MatrixView(1, 1, "in"),
    "w1": MatrixView(1, 1, "out", expert=True), "w2": MatrixView(1, 1, "in", expert=True),
    "gate_weight": MatrixView(1, 1, None),   # the shared experts' gate
    "eh_proj": MatrixView(1, 1, "out"),      # MTP
}
_ROUTER = MatrixView(1, 1, None)


def _names(path) -> list:
  return [getattr(k, "key", None) for k in path]


def matrix_view(path) -> MatrixView | None:
  """The matrix a layer's parameter is for Muon, None for a vector (norm scale, bias): Megatron's rule
  (2-D weights), read from moejax's names since the scan stacks layers into more axes. The embedding
  and output layer are AdamW's whatever their shape (moejax/train/optim.py, `muon_labels`)."""
  names = _names(path)
  name = names[-1]
  if name == "scale" or str(name).endswith("bias"):
    return None
  if name == "kernel" and len(names) > 1 and names[-2] == "router":
    return _ROUTER
  if name in _VIEWS:
    return _VIEWS[name]
  raise ValueError(f"optim.optimizer='muon' has no matrix view of parameter {jax.tree_util.keystr(path)}: "
                   "name its in and out axes in moejax/train/muon.py (_VIEWS), or use optim.optimizer='adam'")


def _to_blocks(x, view: MatrixView, n: int, path):
  """x [*batch, *in, *out] → [*batch, n, in, out / n] (split "out") or [*batch, n, in / n, out]."""
  nb = x.ndim - view.in_ndim - view.out_ndim
  lead, ins, outs = x.shape[:nb], x.shape[nb:nb + view.in_ndim], x.shape[nb + view.in_ndim:]
  size = (outs if view.split == "out" else ins)[0]
  if size % n:
    raise ValueError(f"optim.muon_tp_mode='blockwise': {jax.tree_util.keystr(path)} has {size} rows on the side "
                     f"tensor parallelism splits, not divisible by {n} ranks; use optim.muon_tp_mode='duplicated'")
  if view.split == "out":
    x = x.reshape(*lead, *ins, n, outs[0] // n, *outs[1:])
    x = jnp.moveaxis(x, nb + view.in_ndim, nb)
  else:
    x = x.reshape(*lead, n, ins[0] // n, *ins[1:], *outs)
  return x.reshape(*lead, n, math.prod(ins) // (n if view.split == "in" else 1), -1)


def _from_blocks(y, view: MatrixView, n: int, shape):
  nb = len(shape) - view.in_ndim - view.out_ndim
  lead, ins, outs = shape[:nb], shape[nb:nb + view.in_ndim], shape[nb + view.in_ndim:]
  if view.split == "out":
    y = y.reshape(*lead, n, *ins, outs[0] // n, *outs[1:])
    return jnp.moveaxis(y, nb, nb + view.in_ndim).reshape(shape)
  return y.reshape(shape)


def _matrices(paths, fused) -> list[list]:
  """The leaves grouped into the matrices Megatron orthogonalizes: siblings named as one of `fused`
  together (its linear_fc1 = gate|up; linear_qkv = q|k|v without muon_split_qkv), any other leaf alone."""
  siblings = {}
  for path in paths:
    siblings.setdefault(path[:-1], {})[_names(path)[-1]] = path
  groups, seen = [], set()
  for path in paths:
    if path in seen:
      continue
    mine = siblings[path[:-1]]
    group = next(([mine[n] for n in f] for f in fused if _names(path)[-1] in f and all(n in mine for n in f)), [path])
    seen.update(group)
    groups.append(group)
  return groups


class MuonState(NamedTuple):
  momentum: optax.Updates


def scale_by_muon(cfg) -> optax.GradientTransformation:
  """The orthogonalized, scaled momentum of each matrix (module docstring); the momentum is kept in the
  params' dtype, its math in fp32."""
  o, p = cfg.optim, cfg.parallel
  beta = o.muon_momentum
  blocks = {False: p.tp, True: p.tp if p.etp is None else p.etp} if o.muon_tp_mode == "blockwise" else None
  fused = [("gate", "up")] + ([] if o.muon_split_qkv else [("q", "k", "v")])

  def init(params):
    return MuonState(jax.tree.map(jnp.zeros_like, params))

  def orthogonalized(leaves):
    """{path: u} → {path: scaled NS(u)} over the matrices the leaves make."""
    out = {}
    for group in _matrices(list(leaves), fused):
      views = [matrix_view(q) for q in group]
      n = 1 if blocks is None or views[0].split is None else blocks[views[0].expert]
      parts = [_to_blocks(leaves[q], v, n, q) for q, v in zip(group, views)]
      x = jnp.concatenate(parts, axis=-1)
      y = newton_schulz(x, o.muon_num_ns_steps, o.muon_coefficient_type, o.muon_fp32_matmul_prec)
      y = y * scale_factor(x.shape[-1], x.shape[-2], o.muon_scale_mode) * o.muon_extra_scale_factor
      cuts = list(itertools.accumulate(part.shape[-1] for part in parts))[:-1]
      for q, v, piece in zip(group, views, jnp.split(y, cuts, axis=-1)):
        out[q] = _from_blocks(piece, v, n, leaves[q].shape)
    return out

  def update(grads, state, params=None):
    del params
    g_flat, treedef = jax.tree_util.tree_flatten_with_path(grads)
    m_flat = jax.tree.leaves(state.momentum)
    us, moms = {}, []
    for (path, g), m in zip(g_flat, m_flat):
      g = g.astype(jnp.float32)
      m = beta * m.astype(jnp.float32) + (1 - beta) * g
      moms.append(m)
      us[path] = g + beta * (m - g) if o.muon_use_nesterov else m
    orth = orthogonalized(us)
    new_updates = jax.tree_util.tree_unflatten(treedef, [orth[path].astype(g.dtype) for path, g in g_flat])
    new_mom = jax.tree_util.tree_unflatten(treedef, [m.astype(old.dtype) for m, old in zip(moms, m_flat)])
    return new_updates, MuonState(new_mom)

  return optax.GradientTransformation(init, update)
