"""One physical mesh serving two views of the same devices (MoE parallel folding).

Megatron orders ranks tp (fastest), cp, dp, pp for attention and dense layers and
etp (fastest), ep, edp, pp for experts. We factor the devices into the smallest
axes on which both views agree: each mesh axis is named `<attention role>_<moe
role>` (e.g. `tp_ep`, `dp_ep`, `dp_edp`), so `ep=8, tp=2` on 8 devices gives axes
`('pp', 'dp_ep', 'tp_ep')` of sizes (1, 4, 2): outside the MoE layer the 8
devices carry tp×dp, inside they carry ep.
"""
from __future__ import annotations

import dataclasses

import jax
import numpy as np
from jax.sharding import Mesh

from moejax.config import ParallelSizes, parallel_sizes, validate

ATTN_ROLES = ("tp", "cp", "dp")    # fastest first
MOE_ROLES = ("etp", "ep", "edp")


@dataclasses.dataclass(frozen=True)
class FoldedAxis:
  name: str
  size: int
  attn_role: str
  moe_role: str


def _bounds(sizes):
  out, acc = [], 1
  for s in sizes:
    acc *= s
    out.append(acc)
  return out


def fold_axes(ps: ParallelSizes) -> list[FoldedAxis]:
  """Factors the non-pp devices into axes, fastest first; raises if the views don't nest."""
  attn_b = _bounds((ps.tp, ps.cp, ps.dp))
  moe_b = _bounds((ps.etp, ps.ep, ps.edp))
  cuts = sorted(set(attn_b) | set(moe_b))
  axes, prev = [], 1
  for c in cuts:
    if c % prev:
      raise ValueError(
          f"parallel layout tp={ps.tp}, cp={ps.cp}, dp={ps.dp} vs etp={ps.etp}, ep={ps.ep}, edp={ps.edp} "
          "cannot fold onto one mesh: each group size product must divide the next; "
          "use power-of-two sizes or make etp*ep a multiple of tp*cp (or a divisor of it)")
    if c == prev:
      continue
    attn_role = ATTN_ROLES[next(i for i, b in enumerate(attn_b) if c <= b)]
    moe_role = MOE_ROLES[next(i for i, b in enumerate(moe_b) if c <= b)]
    axes.append(FoldedAxis(f"{attn_role}_{moe_role}", c // prev, attn_role, moe_role))
    prev = c
  return axes


@dataclasses.dataclass(frozen=True)
class MeshLayout:
  """The mesh plus which of its axes play each Megatron role."""
  mesh: Mesh
  sizes: ParallelSizes
  axes: tuple[FoldedAxis, ...]

  def role_axes(self, role: str) -> tuple[str, ...]:
    """Mesh axes (outermost first) that make up an attention or MoE role."""
    if role == "pp":
      return ("pp",)
    return tuple(a.name for a in reversed(self.axes) if role in (a.attn_role, a.moe_role))


def make_mesh(cfg, devices=None) -> MeshLayout:
  """Validates the config against the devices and builds the folded mesh."""
  devices = list(jax.devices() if devices is None else devices)
  validate(cfg, len(devices))
  ps = parallel_sizes(cfg, len(devices))
  axes = fold_axes(ps)
  names = ("pp",) + tuple(a.name for a in reversed(axes))
  shape = (ps.pp,) + tuple(a.size for a in reversed(axes))
  mesh = Mesh(np.asarray(devices, dtype=object).reshape(shape), names)
  return MeshLayout(mesh=mesh, sizes=ps, axes=tuple(axes))
