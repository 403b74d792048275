"""Per-array checksums and finiteness of a pytree, computed on the devices that hold it.

Orbax checks the index of each stored chunk (crc32c) but not the array bytes, so a flipped or
overwritten byte inside an array file restores silently; these checksums close that gap. Written
by hand because no library hashes a sharded jax.Array in place.

A checksum is two 32-bit sums over all elements of mix(word ^ (index · golden) + seed), the
murmur3 finaliser of each element's bits salted by its flat index. Integer sums wrap mod 2^32 and
are exact in any order, so the result is the same whatever the mesh layout (a checkpoint saved on
ep=4 verifies on tp=2), and a change of any word, or two words swapped, changes it with
probability 1 - 2^-64.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

_GOLDEN = 0x9E3779B1
_SEEDS = (0x243F6A88, 0x85A308D3)


def leaf_names(tree) -> list[str]:
  """Orbax's names of the leaves of `tree` (keys joined by '.', e.g. `params.decoder.final_norm.scale`)."""
  return [".".join(_key(k) for k in path) for path, _ in jax.tree_util.tree_flatten_with_path(tree)[0]]


def _key(k) -> str:
  for attr in ("key", "name", "idx"):
    if hasattr(k, attr):
      return str(getattr(k, attr))
  return str(k)


def _words(x):
  """The bits of `x` as uint32, one word per element (two for 64-bit types)."""
  if x.dtype == jnp.bool_:
    return x.astype(jnp.uint32)
  size = jnp.dtype(x.dtype).itemsize
  if size == 8:
    return jax.lax.bitcast_convert_type(x, jnp.uint32)
  if size == 4:
    return jax.lax.bitcast_convert_type(x, jnp.uint32)
  return jax.lax.bitcast_convert_type(x, {2: jnp.uint16, 1: jnp.uint8}[size]).astype(jnp.uint32)


def _mix(h):
  h = h ^ (h >> 16)
  h = h * jnp.uint32(0x85EBCA6B)
  h = h ^ (h >> 13)
  h = h * jnp.uint32(0xC2B2AE35)
  return h ^ (h >> 16)


def _checksum(x):
  """uint32[2]: the two salted sums of one array's words."""
  w = _words(x)
  index = jnp.uint32(0)
  for d in range(w.ndim):  # flat row-major index, wrapping mod 2^32 like the sums
    index = index * jnp.uint32(w.shape[d]) + jax.lax.broadcasted_iota(jnp.uint32, w.shape, d)
  salted = w ^ (index * jnp.uint32(_GOLDEN))
  return jnp.stack([jnp.sum(_mix(salted + jnp.uint32(s)), dtype=jnp.uint32) for s in _SEEDS])


def _finite(x):
  return jnp.all(jnp.isfinite(x)) if jnp.issubdtype(x.dtype, jnp.inexact) else jnp.bool_(True)


def fingerprint_of(tree):
  """(checksums uint32[n, 2], finite bool[n]) of the n leaves of `tree`, in leaf order: two stacked
  arrays, so fetching them is two small transfers whatever the number of leaves."""
  # leaves in pinned host memory (optim.optimizer_cpu_offload) are read into device memory: XLA
  # computes on device memory only
  leaves = [jax.device_put(x, jax.memory.Space.Device) for x in jax.tree.leaves(tree)]
  if not leaves:
    return jnp.zeros((0, 2), jnp.uint32), jnp.zeros((0,), jnp.bool_)
  return jnp.stack([_checksum(x) for x in leaves]), jnp.stack([_finite(x) for x in leaves])


# computed where the arrays live: dispatching it waits for nothing, `to_host` fetches the few bytes
fingerprint = jax.jit(fingerprint_of)


def to_host(tree, fingerprints) -> tuple[dict[str, list[int]], list[str]]:
  """({leaf name: [sum0, sum1]}, names of the leaves holding NaN or inf)."""
  sums, finite = jax.device_get(fingerprints)
  names = leaf_names(tree)
  return ({n: [int(v) for v in s] for n, s in zip(names, np.asarray(sums))},
          [n for n, ok in zip(names, np.asarray(finite)) if not bool(ok)])


def verify(tree, recorded: dict[str, list[int]], prefix: str = "") -> str | None:
  """None when every leaf of `tree` is finite and matches its recorded checksum, else why not
  (naming the first bad array). `prefix` is the name of `tree` inside the recorded state
  (`params` when checking the weights alone)."""
  sums, nonfinite = to_host(tree, fingerprint(tree))
  for name, got in sums.items():
    full = f"{prefix}.{name}" if prefix else name
    if full not in recorded:
      return f"no checksum recorded for {full}"
    if got != recorded[full]:
      return f"checksum mismatch in {full}"
  if nonfinite:
    return f"non-finite values in {(prefix + '.' if prefix else '') + nonfinite[0]}"
  return None
