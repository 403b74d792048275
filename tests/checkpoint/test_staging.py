"""The paced device-to-host copy of the async save: block by block, every array comes back whole
and exact, whatever its sharding (rows split over devices, replicated, a leading axis smaller than a
block), dtype or rank."""
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

from moejax.checkpoint import staging


def test_blocks_come_back_whole_and_exact():
  mesh = jax.make_mesh((4, 2), ("a", "b"))
  tree = {
      "split": jax.device_put(jnp.arange(64 * 48, dtype=jnp.float32).reshape(64, 48),
                              NamedSharding(mesh, P("a", "b"))),
      "replicated": jax.device_put(jnp.linspace(-3, 3, 30, dtype=jnp.bfloat16).reshape(10, 3), NamedSharding(mesh, P())),
      "scalar": jnp.int32(5),
      "empty": jnp.zeros((0, 4)),
      "not_an_array": 3,
  }
  # 256-byte blocks: each [16, 24] float32 shard of `split` goes in 8 blocks of 2 rows
  host = staging.to_host(tree, block_bytes=256, rate=1e12)
  assert staging.can_stage(tree)
  assert host["not_an_array"] == 3
  for name in ("split", "replicated", "scalar", "empty"):
    assert isinstance(host[name], np.ndarray), name
    assert host[name].dtype == tree[name].dtype and host[name].shape == tree[name].shape, name
    np.testing.assert_array_equal(host[name], np.asarray(tree[name]), err_msg=name)


def test_warm_up_and_abstract_trees():
  """`warm_up` runs on every device; `can_stage` reads shardings of arrays and abstract arrays alike."""
  staging.warm_up(jax.devices(), block_bytes=1 << 16)
  mesh = jax.make_mesh((8,), ("a",))
  abstract = {"w": jax.ShapeDtypeStruct((8, 4), jnp.float32, sharding=NamedSharding(mesh, P("a"))), "n": 1}
  assert staging.can_stage(abstract)
