"""Tile configurations per shape, read from the checked-in table `tiles.json`.

Entries are keyed by (op, g, k, n) of the kernel call, where op is
  fwd   : y[M,n]  = x[M,k] @ w[g]          (k contracted)
  dgrad : dx[M,n] = dy[M,k] @ w[g]^T       (k contracted; n = hidden of x)
  wgrad : dw[g]   = x[M,k]^T @ dy[M,n]     (M contracted, ragged)
and the entry with the nearest M wins. Shapes not in the table get a default
that divides the dimensions. `python -m moejax.kernels.grouped_gemm.autotune`
measures candidates on the device and rewrites the table.
"""
from __future__ import annotations

import dataclasses
import functools
import json
import os

from moejax.kernels.grouped_gemm.mosaic import ContractConfig, MMConfig

TABLE_PATH = os.path.join(os.path.dirname(__file__), "tiles.json")


@functools.lru_cache(maxsize=1)
def _load_table() -> tuple:
  if not os.path.exists(TABLE_PATH):
    return ()
  with open(TABLE_PATH) as f:
    data = json.load(f)
  return tuple(data.get("entries", ()))


def clear_cache() -> None:
  _load_table.cache_clear()


def mm_fits(cfg: MMConfig, k: int, n: int) -> bool:
  return k % cfg.tile_k == 0 and n % cfg.cta_n() == 0


def contract_fits(cfg: ContractConfig, k: int, n: int) -> bool:
  return k % cfg.tile_m == 0 and n % cfg.tile_n == 0


def default_mm(k: int, n: int) -> MMConfig | None:
  """First candidate that divides (k, n): prefers the warp-specialized kernel."""
  for tile_n, ws in ((128, True), (64, True), (128, False), (64, False)):
    # ws with a 128x256 CTA tile fits 3 stages in 227 KiB of shared memory.
    cfg = MMConfig(tile_m=128, tile_n=tile_n, tile_k=64,
                   stages=3 if (ws and tile_n == 128) else 4, ws=ws)
    if mm_fits(cfg, k, n):
      return cfg
  return None


def default_contract(k: int, n: int) -> ContractConfig | None:
  for tm, tn in ((128, 128), (64, 128), (128, 64), (64, 64)):
    cfg = ContractConfig(tile_m=tm, tile_n=tn, tile_k=64, stages=4)
    if contract_fits(cfg, k, n):
      return cfg
  return None


def lookup(op: str, m: int, g: int, k: int, n: int):
  """Config for one kernel call, or None when no tile divides the shape."""
  if op not in ("fwd", "dgrad", "wgrad"):
    raise ValueError(f"op must be fwd, dgrad or wgrad, got {op!r}")
  cands = [e for e in _load_table()
           if e["op"] == op and e["g"] == g and e["k"] == k and e["n"] == n]
  if cands:
    best = min(cands, key=lambda e: abs(e["m"] - m))
    cls = ContractConfig if op == "wgrad" else MMConfig
    fields = {f.name for f in dataclasses.fields(cls)}
    cfg = cls(**{a: b for a, b in best["cfg"].items() if a in fields})
    fits = contract_fits(cfg, k, n) if op == "wgrad" else mm_fits(cfg, k, n)
    if fits:
      return cfg
  return default_contract(k, n) if op == "wgrad" else default_mm(k, n)


def write_entries(new_entries: list[dict]) -> None:
  """Replace entries with the same (op, m, g, k, n) and rewrite the table."""
  entries = list(_load_table())
  key = lambda e: (e["op"], e["m"], e["g"], e["k"], e["n"])
  new_keys = {key(e) for e in new_entries}
  entries = [e for e in entries if key(e) not in new_keys] + list(new_entries)
  entries.sort(key=key)
  with open(TABLE_PATH, "w") as f:
    json.dump({"doc": "Grouped GEMM tiles per kernel call; written by "
                      "python -m moejax.kernels.grouped_gemm.autotune",
               "entries": entries}, f, indent=1)
    f.write("\n")
  clear_cache()
