"""The placement table: data axes added to master params (dp, edp for experts) on a free dimension,
never the layers dimension; the optimizer state follows its master params, a fraction on the host."""
import jax
import jax.numpy as jnp
import optax
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

from moejax.config import base_config
from moejax.parallel.mesh import make_mesh
from moejax.parallel.sharding import optimizer_state_shardings, shard_bytes, shard_over_data


@pytest.fixture(scope="module")
def layout():
  c = base_config()
  c.moe.num_experts = 8
  c.parallel.update(ep=4, tp=2, sequence_parallel=True, etp=1)  # dp=4 outside the MoE, edp=2 inside
  return make_mesh(c, jax.devices())


def _sh(layout, *spec):
  return NamedSharding(layout.mesh, P(*spec))


def test_dense_weight_gets_dp_on_its_largest_free_dimension(layout):
  tp = layout.role_axes("tp")
  dp = layout.role_axes("dp")
  # attention q [layers, embed, heads, head_dim]: heads over tp; dp goes on embed (not layers)
  out = shard_over_data(_sh(layout, None, None, tp, None), (4, 64, 8, 16), ("layers", "embed", "heads", "head_dim"),
                        layout)
  assert out.spec == P(None, dp, tp, None)
  assert shard_bytes(jax.ShapeDtypeStruct((4, 64, 8, 16), jnp.float32), out) * 8 == 4 * 64 * 8 * 16 * 4


def test_expert_weight_gets_edp(layout):
  ep, edp = layout.role_axes("ep"), layout.role_axes("edp")
  out = shard_over_data(_sh(layout, None, ep, None, None), (4, 8, 64, 256),
                        ("layers", "expert", "expert_embed", "expert_mlp"), layout)
  assert out.spec == P(None, ep, None, edp)  # expert_mlp has the most room


def test_no_divisible_dimension_keeps_the_sharding(layout):
  sh = _sh(layout, None, None)
  assert shard_over_data(sh, (4, 6), ("layers", "embed"), layout) == sh  # 6 % dp=4, layers never


def test_optimizer_state_follows_masters_and_part_goes_to_host(layout):
  params = {"a": jnp.zeros((64, 32)), "b": jnp.zeros((64, 32)), "c": jnp.zeros((64,))}
  masters = jax.tree.map(lambda p: shard_over_data(_sh(layout), p.shape, ("embed",) * p.ndim, layout), params)
  opt = optax.adam(1e-3)
  abstract = jax.eval_shape(opt.init, params)
  sh = optimizer_state_shardings(opt, abstract, masters, layout.mesh)
  assert sh[0].mu == masters and sh[0].nu == masters and sh[0].count.spec == P()
  half = optimizer_state_shardings(opt, abstract, masters, layout.mesh, host_fraction=0.5)
  kinds = [s.memory_kind for s in jax.tree.leaves((half[0].mu, half[0].nu))]
  assert kinds[:3] == ["pinned_host"] * 3 and set(kinds[3:]) == {"device"}  # the first half of the bytes (mu)
  everything = optimizer_state_shardings(opt, abstract, masters, layout.mesh, host_fraction=1.0)
  assert {s.memory_kind for s in jax.tree.leaves((everything[0].mu, everything[0].nu))} == {"pinned_host"}


def test_a_state_masked_per_optimizer_follows_its_masters(layout):
  """Muon beside AdamW (optax.multi_transform): each optimizer's state holds MaskedNodes where the
  other owns the param; its own leaves follow their masters, the masks stay masks."""
  from moejax.train.optim import make_optimizer
  params = {"decoder": {"mlp": {"gate": jnp.zeros((64, 32)), "up": jnp.zeros((64, 32)), "down": jnp.zeros((32, 64))},
                        "final_norm": {"scale": jnp.zeros((64,))}}}
  masters = jax.tree.map(lambda p: shard_over_data(_sh(layout), p.shape, ("embed",) * p.ndim, layout), params)
  c = base_config()
  c.optim.optimizer = "muon"
  opt = make_optimizer(c)
  sh = optimizer_state_shardings(opt, jax.eval_shape(opt.init, params), masters, layout.mesh)
  inner = sh[1].inner_states  # (clipping, the partition)
  momentum, adam_mu = inner["muon"].inner_state[0].momentum, inner["adam"].inner_state[0].mu
  assert momentum["decoder"]["mlp"] == masters["decoder"]["mlp"]
  assert isinstance(momentum["decoder"]["final_norm"]["scale"], optax.MaskedNode)
  assert adam_mu["decoder"]["final_norm"]["scale"] == masters["decoder"]["final_norm"]["scale"]
  assert isinstance(adam_mu["decoder"]["mlp"]["gate"], optax.MaskedNode)
