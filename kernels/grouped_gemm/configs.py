"""Tile configurations per shape, read from the checked-in table `tiles.json`.

Entries are keyed by (op, g, k, n) of the kernel call, where op is
  fwd   : y[M,n]  = x[M,k] @ w[g]          (k contracted)
  dgrad : dx[M,n] = dy[M,k] @ w[g]^T       (k contracted; n = hidden of x)
  wgrad : dw[g]   = x[M,k]^T @ dy[M,n]     (M contracted, ragged)
and the entry with the nearest M wins, among those measured on this device kind when there are
any (tiles tuned on an H100 are not the best on an H200). Shapes not in the table get a default
that divides the dimensions. `python -m moejax.kernels.grouped_gemm.autotune`
measures candidates on the device and rewrites the table.
"""
from __future__ import annotations

import dataclasses
import functools
import json
import os

import jax

from moejax.kernels.grouped_gemm.mosaic import TileConfig, fits

TABLE_PATH = os.path.join(os.path.dirname(__file__), "tiles.json")
OPS = ("fwd", "dgrad", "wgrad")


@functools.lru_cache(maxsize=1)
def _load_table() -> tuple:
  if not os.path.exists(TABLE_PATH):
    return ()
  with open(TABLE_PATH) as f:
    data = json.load(f)
  return tuple(data.get("entries", ()))


def clear_cache() -> None:
  _load_table.cache_clear()


def default(k: int, n: int) -> TileConfig | None:
  """The widest tile that divides (k, n), with as many stages (<= 4) as fit."""
  for tile_n in (256, 128, 64):
    for stages in (4, 3, 2):
      cfg = TileConfig(tile_n=tile_n, tile_k=64, stages=stages)
      if fits(cfg, k, n):
        return cfg
  return None


def lookup(op: str, m: int, g: int, k: int, n: int) -> TileConfig | None:
  """Config for one kernel call, or None when no tile divides the shape."""
  if op not in OPS:
    raise ValueError(f"op must be one of {OPS}, got {op!r}")
  cands = [e for e in _load_table()
           if e["op"] == op and e["g"] == g and e["k"] == k and e["n"] == n]
  here = [e for e in cands if e.get("device") == jax.devices()[0].device_kind]
  cands = here or cands
  if cands:
    best = min(cands, key=lambda e: abs(e["m"] - m))
    names = {f.name for f in dataclasses.fields(TileConfig)}
    cfg = TileConfig(**{a: b for a, b in best["cfg"].items() if a in names})
    if fits(cfg, k, n):
      return cfg
  return default(k, n)


def write_entries(new_entries: list[dict]) -> None:
  """Replace entries with the same (op, m, g, k, n, device) and rewrite the table."""
  entries = list(_load_table())
  key = lambda e: (e["op"], e["m"], e["g"], e["k"], e["n"], e.get("device", ""))
  new_keys = {key(e) for e in new_entries}
  entries = [e for e in entries if key(e) not in new_keys] + list(new_entries)
  entries.sort(key=key)
  with open(TABLE_PATH, "w") as f:
    json.dump({"doc": "Grouped GEMM tiles per kernel call; written by "
                      "python -m moejax.kernels.grouped_gemm.autotune",
               "entries": entries}, f, indent=1)
    f.write("\n")
  clear_cache()
