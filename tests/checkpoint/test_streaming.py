"""Streamed Orbax writes: a leaf written block by block is an ordinary weights-only checkpoint
(restored into another layout, cast to the target dtype, read back block by block), host memory
stays near one block, and the router state saved beside the weights comes back."""
import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

from moejax.checkpoint.manager import load_weights, save_params
from moejax.checkpoint.streaming import LeafReader, StreamedArray, save_streamed
from moejax.moe.state import ExpertBias


def test_streamed_leaves_restore_into_any_layout_and_read_back_by_block(tmp_path):
  w = np.random.default_rng(0).normal(size=(3, 8, 4, 6)).astype(ml_dtypes.bfloat16)  # [layers, experts, ...]
  b = np.arange(5, dtype=np.float32)
  blocks_seen = []

  def w_blocks():
    for layer in range(3):
      for e in range(8):
        blocks_seen.append((layer, e))
        yield (slice(layer, layer + 1), slice(e, e + 1)), w[layer, e]

  tree = {"moe": {"w1": StreamedArray(w.shape, w.dtype, (1, 1, 4, 6), w_blocks)},
          "norm": StreamedArray(b.shape, b.dtype, b.shape, lambda: iter([((slice(None),), b)]))}
  save_streamed(str(tmp_path), tree)
  assert len(blocks_seen) == 24

  mesh = jax.make_mesh((8,), ("ep",), devices=jax.devices()[:8])
  abstract = {"moe": {"w1": jax.ShapeDtypeStruct(w.shape, jnp.float32)}, "norm": jax.ShapeDtypeStruct(b.shape, jnp.float32)}
  shardings = {"moe": {"w1": NamedSharding(mesh, P(None, "ep"))}, "norm": NamedSharding(mesh, P())}
  out = load_weights(str(tmp_path), {"params": abstract}, {"params": shardings})["params"]
  assert out["moe"]["w1"].dtype == jnp.float32 and out["moe"]["w1"].sharding.spec == P(None, "ep")
  np.testing.assert_array_equal(out["moe"]["w1"], w.astype(np.float32))
  np.testing.assert_array_equal(out["norm"], b)

  reader = LeafReader(str(tmp_path))
  assert reader.tree["moe"]["w1"].dtype == jnp.bfloat16
  block = reader.read("moe.w1", (2, 5))
  assert block.dtype == ml_dtypes.bfloat16 and block.tobytes() == w[2, 5].tobytes()


def test_host_memory_stays_near_one_block(tmp_path):
  """A 256 MB leaf from 1 MB blocks: the process grows by a small fraction of the leaf."""
  script = textwrap.dedent("""
      import resource, sys, numpy as np
      from moejax.checkpoint.streaming import StreamedArray, save_streamed
      L, R, C = 256, 1024, 256
      blocks = lambda: (((slice(l, l + 1),), np.full((R, C), l, np.float32)) for l in range(L))
      before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
      save_streamed(sys.argv[1], {"w": StreamedArray((L, R, C), np.dtype(np.float32), (1, R, C), blocks)})
      print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024)
  """)
  out = subprocess.run([sys.executable, "-c", script, str(tmp_path)], capture_output=True, text=True, timeout=300,
                       env=dict(os.environ, JAX_PLATFORMS="cpu"))
  assert out.returncode == 0, out.stderr[-2000:]
  growth_mb = float(out.stdout.strip().splitlines()[-1])
  assert growth_mb < 64, f"{growth_mb} MB for a 256 MB leaf"


def test_moe_state_saved_beside_the_weights_comes_back(tmp_path):
  bias = ExpertBias(jnp.arange(8, dtype=jnp.float32).reshape(2, 4), jnp.zeros((2, 4), jnp.float32))
  state = {"decoder": {"segment_0": {"block_0": {"moe": {"router": {"expert_bias": bias}}}}}}
  save_params(str(tmp_path), {"w": jnp.ones(3)}, state)
  rep = NamedSharding(jax.make_mesh((1,), ("x",), devices=jax.devices()[:1]), P())
  abstract = {"params": {"w": jax.ShapeDtypeStruct((3,), jnp.float32)},
              "moe_state": jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), state)}
  shardings = jax.tree.map(lambda _: rep, abstract)
  got = load_weights(str(tmp_path), abstract, shardings)["moe_state"]
  np.testing.assert_array_equal(got["decoder"]["segment_0"]["block_0"]["moe"]["router"]["expert_bias"].expert_bias,
                                bias.expert_bias)
  save_params(str(tmp_path / "none"), {"w": jnp.ones(3)})  # weights without router state
  assert load_weights(str(tmp_path / "none"), abstract, shardings)["moe_state"] is None
