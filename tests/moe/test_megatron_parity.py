"""Router, losses, token dropping and expert bias against megatron-core itself.

All cases run in ONE peer subprocess (tests/peers/megatron_router.py, torch CPU);
each test compares its slice of the results.
"""
import itertools
import json
import pathlib
import subprocess

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from moejax.config import ModelSpec, MoESpec
from moejax.moe.state import ExpertBias, updated_expert_bias
from moejax.moe import losses, router

REPO = pathlib.Path(__file__).resolve().parents[2]
PEER = REPO / ".peer-venv/bin/python"
SCRIPT = REPO / "tests/peers/megatron_router.py"
pytestmark = pytest.mark.skipif(not PEER.exists(), reason="megatron-core peer venv missing: run .ci/peer_venv.sh")

T, E = 64, 16


def _topk_cases():
  out = []
  for sf, pre, groups, scale, bias, k in itertools.product(
      ("softmax", "sigmoid"), (False, True), (None, (4, 2)), (None, 2.5), (False, True), (1, 2, 4)):
    if (pre and sf == "sigmoid") or (bias and sf == "softmax") or (k == 1 and sf == "softmax" and not pre):
      continue
    if groups and k % groups[1]:
      continue
    out.append(dict(kind="topk", topk=k, score_function=sf, pre_softmax=pre, num_groups=groups and groups[0],
                    group_topk=groups and groups[1], scaling_factor=scale, bias=bias))
  return out


def _drop_cases():
  out = []
  for policy, pad, cf, shape in itertools.product(("probs", "position"), (False, True), (0.5, 1.0, 1.25),
                                                  ((T, E, 2), (8, 2, 2))):
    out.append(dict(kind="drop", drop_policy=policy, pad_to_capacity=pad, capacity_factor=cf,
                    T=shape[0], num_experts=shape[1], topk=shape[2]))
  return out


def _router_cases():
  base = dict(kind="router", num_experts=8, topk=2, score_function="softmax", pre_softmax=False,
              num_groups=None, group_topk=None, scaling_factor=None, expert_bias=False,
              capacity_factor=None, drop_policy="probs", pad_to_capacity=False, batch=3, seq=10,
              num_micro=1, padding=False, lb_type="aux_loss", aux_coeff=1e-2, z_coeff=None)
  variants = []
  for lb, pad, z in itertools.product(("aux_loss", "seq_aux_loss", "global_aux_loss"), (False, True),
                                      (None, 1e-3)):
    variants.append(dict(lb_type=lb, padding=pad, z_coeff=z, num_micro=2 if lb == "global_aux_loss" else 1))
  variants += [
      dict(lb_type=["aux_loss", "seq_aux_loss", "global_aux_loss"], aux_coeff=[1e-2, 3e-3, 2e-2], num_micro=2),
      dict(lb_type="none", aux_coeff=0.0, z_coeff=1e-3),
      dict(lb_type="sinkhorn", aux_coeff=0.0), dict(lb_type="sinkhorn", aux_coeff=0.0, topk=1),
      dict(score_function="sigmoid", expert_bias=True, lb_type="none", aux_coeff=0.0),
      dict(score_function="sigmoid", expert_bias=True, lb_type="seq_aux_loss", scaling_factor=2.5,
           num_groups=4, group_topk=2, topk=4),
      dict(score_function="sigmoid", lb_type="aux_loss", padding=True),
      dict(pre_softmax=True, topk=1, lb_type="aux_loss"),
      dict(capacity_factor=1.0, drop_policy="probs"),
      dict(capacity_factor=0.75, drop_policy="probs", padding=True, z_coeff=1e-3),
      dict(capacity_factor=1.0, pad_to_capacity=True, lb_type="seq_aux_loss"),
  ]
  return [{**base, **v} for v in variants]


def _build():
  rng = np.random.default_rng(0)
  cases, arrays = [], {}

  def add(case, **arrs):
    case = dict(case, id=str(len(cases)))
    cases.append(case)
    for name, a in arrs.items():
      arrays[f"{case['id']}/{name}"] = np.asarray(a)

  f32 = lambda *s: rng.normal(size=s).astype(np.float32)
  for c in _topk_cases():
    arrs = dict(logits=f32(T, E))
    if c["bias"]:
      arrs["expert_bias"] = 0.1 * f32(E)
    add(c, **arrs)
  for sf, pad in itertools.product(("softmax", "sigmoid"), (False, True)):
    arrs = dict(logits=f32(T, E))
    if pad:
      arrs["padding"] = rng.random(T) < 0.3
    add(dict(kind="aux_scores", topk=2, score_function=sf), **arrs)
  for pad in (False, True):
    probs = rng.random((T, E)).astype(np.float32)
    arrs = dict(probs=probs, tokens_per_expert=rng.integers(0, 20, E).astype(np.float32))
    if pad:
      arrs["padding"] = rng.random(T) < 0.3
    add(dict(kind="switch_loss", total=T, topk=2, num_experts=E, coeff=1e-2), **arrs)
    arrs = dict(logits=3 * f32(T, E))
    if pad:
      arrs["padding"] = rng.random(T) < 0.3
    add(dict(kind="z_loss", coeff=1e-3), **arrs)
  for shape in ((T, E), (128, 8), (7, 64)):
    add(dict(kind="sinkhorn", tol=1e-4), cost=f32(*shape))
  for c in _drop_cases():
    logits = f32(c["T"], c["num_experts"])
    probs, rmap = router.topk_routing(jnp.asarray(logits), c["topk"])
    add(c, probs=np.asarray(probs), map=np.asarray(rmap))
  add(dict(kind="bias", rate=1e-3), tokens=np.array([[5, 3, 4, 4], [0, 9, 1, 6]], np.float32),
      bias=f32(2, 4))
  add(dict(kind="bias", rate=0.5), tokens=rng.integers(0, 50, (3, E)).astype(np.float32), bias=f32(3, E))
  for c in _router_cases():
    arrs = {}
    for m in range(c["num_micro"]):
      arrs[f"logits{m}"] = f32(c["batch"], c["seq"], c["num_experts"])
      arrs[f"w{m}"] = f32(c["batch"], c["seq"], c["num_experts"])
      if c["padding"]:
        arrs[f"padding{m}"] = rng.random((c["batch"], c["seq"])) < 0.3
    if c["expert_bias"]:
      arrs["expert_bias"] = 0.05 * f32(c["num_experts"])
    add(c, **arrs)
  return cases, arrays


@pytest.fixture(scope="module")
def peer(tmp_path_factory):
  d = tmp_path_factory.mktemp("megatron_router")
  cases, arrays = _build()
  np.savez(d / "in.npz", **arrays)
  (d / "cases.json").write_text(json.dumps(cases))
  r = subprocess.run([str(PEER), str(SCRIPT), str(d / "in.npz"), str(d / "cases.json"), str(d / "out.npz")],
                     capture_output=True, text=True, timeout=600)
  assert r.returncode == 0, r.stderr[-4000:]
  out = np.load(d / "out.npz")
  res = {}
  for name in out.files:
    cid, key = name.split("/", 1)
    res.setdefault(cid, {})[key] = out[name]
  inputs = {}
  for name, a in arrays.items():
    cid, key = name.split("/", 1)
    inputs.setdefault(cid, {})[key] = a
  return [(c, inputs.get(c["id"], {}), res.get(c["id"], {})) for c in cases]


def _of(peer, kind):
  got = [p for p in peer if p[0]["kind"] == kind]
  assert got, kind
  return got


def test_topk_routing_every_option(peer):
  cases = _of(peer, "topk")
  assert len(cases) >= 30
  for c, a, want in cases:
    probs, rmap = router.topk_routing(
        jnp.asarray(a["logits"]), c["topk"], use_pre_softmax=c["pre_softmax"], num_groups=c["num_groups"],
        group_topk=c["group_topk"], scaling_factor=c["scaling_factor"], score_function=c["score_function"],
        expert_bias=jnp.asarray(a["expert_bias"]) if "expert_bias" in a else None)
    np.testing.assert_array_equal(rmap, want["map"], err_msg=str(c))
    np.testing.assert_allclose(probs, want["probs"], rtol=0, atol=1e-6, err_msg=str(c))


def test_compute_routing_scores_for_aux_loss(peer):
  for c, a, want in _of(peer, "aux_scores"):
    rmap, scores = losses.compute_routing_scores_for_aux_loss(
        jnp.asarray(a["logits"]), c["topk"], c["score_function"],
        padding_mask=jnp.asarray(a["padding"]) if "padding" in a else None)
    np.testing.assert_array_equal(rmap, want["map"], err_msg=str(c))
    np.testing.assert_allclose(scores, want["scores"], rtol=0, atol=1e-6, err_msg=str(c))


def test_switch_load_balancing_loss_and_z_loss(peer):
  for c, a, want in _of(peer, "switch_loss"):
    got = losses.switch_load_balancing_loss(
        jnp.asarray(a["probs"]), jnp.asarray(a["tokens_per_expert"]), c["total"], c["topk"], c["num_experts"],
        c["coeff"], padding_mask=jnp.asarray(a["padding"]) if "padding" in a else None)
    np.testing.assert_allclose(got, want["loss"], rtol=1e-6, err_msg=str(c))
  for c, a, want in _of(peer, "z_loss"):
    got = losses.z_loss(jnp.asarray(a["logits"]), c["coeff"],
                        padding_mask=jnp.asarray(a["padding"]) if "padding" in a else None)
    np.testing.assert_allclose(got, want["loss"], rtol=1e-6, err_msg=str(c))


def test_sinkhorn(peer):
  for c, a, want in _of(peer, "sinkhorn"):
    np.testing.assert_allclose(router.sinkhorn(jnp.asarray(a["cost"]), tol=c["tol"]), want["out"],
                               rtol=1e-5, atol=1e-7, err_msg=str(c))


def _earliest_first_reference(probs, rmap, topk, cf, policy, pad):
  """NumPy: per expert keep the C best rows (probs) or the C earliest routed rows (position);
  ties go to the earliest token, as jax.lax.top_k and torch's CUDA top-k do."""
  T, E = probs.shape
  C = int(np.ceil(T * topk / E * cf))
  if C > T:
    keep = np.ones((T, E), bool)
  else:
    key = probs if policy == "probs" else rmap.astype(np.int32)
    keep = np.zeros((T, E), bool)
    for e in range(E):
      order = sorted(range(T), key=lambda t: (-key[t, e], t))
      keep[order[:C], e] = True
  final = keep if pad else rmap & keep
  return probs * final, final


def test_apply_token_dropping(peer):
  """Equal to Megatron wherever Megatron's choice is fixed by the values; where it picks among
  tied rows (the 'position' policy and the zero-probability rows that pad to capacity) torch's CPU
  top-k breaks ties arbitrarily (quickselect), so there the counts must agree and our choice must
  be the earliest rows (NumPy reference)."""
  for c, a, want in _of(peer, "drop"):
    args = (c["topk"], c["capacity_factor"], c["drop_policy"], c["pad_to_capacity"])
    probs, rmap = router.apply_token_dropping(jnp.asarray(a["probs"]), jnp.asarray(a["map"]), *args)
    ref_probs, ref_map = _earliest_first_reference(a["probs"], a["map"], *args)
    np.testing.assert_array_equal(rmap, ref_map, err_msg=str(c))
    np.testing.assert_array_equal(probs, ref_probs, err_msg=str(c))
    np.testing.assert_array_equal(np.asarray(rmap).sum(0), want["map"].sum(0), err_msg=str(c))
    if c["drop_policy"] == "probs":  # the routed rows kept are fixed by the probabilities
      np.testing.assert_array_equal(np.asarray(rmap) & a["map"], want["map"] & a["map"], err_msg=str(c))
      np.testing.assert_allclose(probs, want["probs"], rtol=0, atol=1e-6, err_msg=str(c))
      if not c["pad_to_capacity"]:
        np.testing.assert_array_equal(rmap, want["map"], err_msg=str(c))
    else:
      assert not (want["map"] & ~a["map"]).any() or c["pad_to_capacity"]


def test_updated_expert_bias(peer):
  for c, a, want in _of(peer, "bias"):
    got = updated_expert_bias(jnp.asarray(a["tokens"]), jnp.asarray(a["bias"]), c["rate"])
    np.testing.assert_array_equal(got, want["bias"])


def _router_spec(c):
  lb = c["lb_type"]
  return ModelSpec(hidden_size=c["num_experts"], dtype="float32", moe=MoESpec(num_experts=c["num_experts"])).replace(
      router_topk=c["topk"],
      router_load_balancing_type=tuple(lb) if isinstance(lb, list) else lb,
      aux_loss_coeff=tuple(c["aux_coeff"]) if isinstance(c["aux_coeff"], list) else c["aux_coeff"],
      z_loss_coeff=c["z_coeff"] or 0.0, router_score_function=c["score_function"],
      router_pre_softmax=c["pre_softmax"], router_num_groups=c["num_groups"], router_group_topk=c["group_topk"],
      router_topk_scaling_factor=c["scaling_factor"], router_enable_expert_bias=c["expert_bias"],
      expert_capacity_factor=c["capacity_factor"], token_drop_policy=c["drop_policy"],
      pad_expert_input_to_capacity=c["pad_to_capacity"])


_LOGS = {"load_balancing_loss": "load_balancing_loss", "seq_load_balancing_loss": "seq_load_balancing_loss",
         "global_load_balancing_loss": "global_load_balancing_loss", "z_loss": "z_loss"}


def test_topk_router_whole_routing_losses_and_gradients(peer):
  """TopKRouter (identity gate, so x = logits) against Megatron's TopKRouter.routing:
  probs, maps, every logged loss, the step's expert counts, and d(sum(probs*w) + losses)/d logits."""
  cases = _of(peer, "router")
  for c, a, want in cases:
    spec = _router_spec(c)
    E, B, S = c["num_experts"], c["batch"], c["seq"]
    variables = {"params": {"kernel": jnp.eye(E, dtype=jnp.float32)}}
    mod = router.TopKRouter(spec)
    init = mod.init(jax.random.key(0), jnp.zeros((B * S, E)), B)
    moe_state = init.get("moe_state", {})
    if c["expert_bias"]:
      moe_state = {**moe_state, "expert_bias": ExpertBias(jnp.asarray(a["expert_bias"]),
                                                          moe_state["expert_bias"].local_tokens_per_expert)}
    for m in range(c["num_micro"]):
      x = jnp.asarray(a[f"logits{m}"]).reshape(B * S, E)
      w = jnp.asarray(a[f"w{m}"]).reshape(B * S, E)
      pad = jnp.asarray(a[f"padding{m}"]).reshape(B * S) if f"padding{m}" in a else None

      def f(x, moe_state):
        r, upd = mod.apply({**variables, "moe_state": moe_state}, x, B, pad, mutable=["moe_state"])
        return jnp.sum(r.probs_TE * w) + r.aux_loss + r.z_loss, (r, upd.get("moe_state", {}))

      grad, (r, new_state) = jax.grad(f, has_aux=True)(x, moe_state)
      msg = f"{c} micro {m}"
      if c["pad_to_capacity"]:  # zero-probability padding rows: torch CPU breaks the ties arbitrarily
        routed = np.asarray(r.probs_TE) > 0
        np.testing.assert_array_equal(routed, want[f"probs{m}"] > 0, err_msg=msg)
        np.testing.assert_array_equal(np.asarray(r.routing_map_TE).sum(0), want[f"map{m}"].sum(0), err_msg=msg)
      else:
        np.testing.assert_array_equal(r.routing_map_TE, want[f"map{m}"], err_msg=msg)
      np.testing.assert_allclose(r.probs_TE, want[f"probs{m}"], rtol=0, atol=1e-6, err_msg=msg)
      np.testing.assert_allclose(grad, want[f"grad{m}"], rtol=1e-5, atol=1e-6, err_msg=msg)
      logged = {k[len("log_"):-1]: v for k, v in want.items() if k.startswith("log_") and k.endswith(str(m))}
      assert set(logged) == {k for k, v in r.logs.items() if k != "z_loss" or c["z_coeff"]}, msg
      for name, v in logged.items():
        np.testing.assert_allclose(r.logs[name], v, rtol=1e-6, err_msg=f"{msg} {name}")
      moe_state = new_state
    if c["expert_bias"]:
      np.testing.assert_array_equal(moe_state["expert_bias"].local_tokens_per_expert, want["local_tokens_per_expert"])
