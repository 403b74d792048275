"""Muon (optim.optimizer='muon') against megatron-core's TensorParallelMuon (peer subprocess,
tests/peers/megatron_muon.py) on one layer's weights laid out as Megatron's, three steps; its
Newton-Schulz iteration against a float64 NumPy loop; which parameters it takes; tensor-parallel blocks
as Megatron's ranks see them; its state through `train.py` and the layouts' equality live in
tests/parallel."""
import json
import pathlib
import subprocess

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from moejax.config import ConfigError, base_config
from moejax.train import muon
from moejax.train.optim import make_optimizer, muon_labels
from moejax.train.validate import validate

REPO = pathlib.Path(__file__).resolve().parents[2]
PEER = REPO / ".peer-venv/bin/python"
H, HEADS, G, D, F, E = 32, 4, 2, 8, 24, 3


def _cfg(**optim):
  c = base_config()
  c.optim.update({"optimizer": "muon", "lr": 0.02, "min_lr": 0.02, "lr_decay_style": "constant",
                  "weight_decay": 0.1, "clip_grad": 0.0, **optim})
  return c


def _layer(rng, scale=1.0):
  n = lambda *s: (rng.normal(size=s) * scale).astype(np.float32)  # noqa: E731
  return {"decoder": {"layer": {
      "attention": {"q": n(H, HEADS, D), "k": n(H, G, D), "v": n(H, G, D), "o": n(HEADS, D, H)},
      "mlp": {"gate": n(H, F), "up": n(H, F), "down": n(F, H)},
      "moe": {"experts": {"w1": n(E, H, 2 * F), "w2": n(E, F, H)}, "router": {"kernel": n(H, E)}},
      "input_norm": {"scale": n(H)}}}}


def _megatron(tree):
  """Megatron's [out, in] weights of one layer: linear_qkv per query group (its heads' q, then k, v),
  linear_proj, linear_fc1 (gate rows, then up), linear_fc2, each expert's fc1/fc2, the router."""
  a, m, x = tree["attention"], tree["mlp"], tree["moe"]
  per = HEADS // G
  q = a["q"].reshape(-1, G, per * D)
  k, v = a["k"].reshape(-1, G, D), a["v"].reshape(-1, G, D)
  qkv = np.concatenate([q, k, v], axis=-1).reshape(q.shape[0], -1).T
  out = {"qkv": qkv, "proj": a["o"].reshape(HEADS * D, -1).T,
         "fc1": np.concatenate([m["gate"], m["up"]], axis=-1).T, "fc2": m["down"].T,
         "router": x["router"]["kernel"].T}
  for e in range(E):
    out[f"expert{e}_fc1"], out[f"expert{e}_fc2"] = x["experts"]["w1"][e].T, x["experts"]["w2"][e].T
  return {k: np.ascontiguousarray(v) for k, v in out.items()}


CASES = [
    {},  # Megatron's defaults: bf16 ("medium") iterations, quintic, spectral scale, split qkv, no Nesterov
    {"muon_fp32_matmul_prec": "highest", "muon_use_nesterov": True, "muon_scale_mode": "shape_scaling",
     "muon_split_qkv": False, "muon_coefficient_type": "polar_express", "muon_num_ns_steps": 9,
     "muon_extra_scale_factor": 0.2, "muon_momentum": 0.9},
    {"muon_fp32_matmul_prec": "highest", "muon_scale_mode": "unit_rms_norm", "muon_coefficient_type": "simple",
     "weight_decay": 0.0},
]


@pytest.mark.skipif(not PEER.exists(), reason="megatron-core peer venv missing: run .ci/peer_venv.sh")
@pytest.mark.parametrize("case", [pytest.param(i, marks=pytest.mark.slow if i else ()) for i in range(len(CASES))])
def test_muon_matches_megatron(tmp_path, case):
  cfg = _cfg(**CASES[case])
  o = cfg.optim
  rng = np.random.default_rng(case)
  params = _layer(rng, 0.05)
  grads = [_layer(rng, 10.0 ** -k) for k in (1, 2, 3)]
  mine = _megatron(params["decoder"]["layer"])
  theirs_in = {"config": json.dumps({
      "lr": o.lr, "weight_decay": o.weight_decay, "momentum_beta": o.muon_momentum,
      "use_nesterov": o.muon_use_nesterov, "split_qkv": o.muon_split_qkv, "qkv_split_shapes": [HEADS // G * D, D, D],
      "fp32_matmul_prec": o.muon_fp32_matmul_prec, "coefficient_type": o.muon_coefficient_type,
      "num_ns_steps": o.muon_num_ns_steps, "scale_mode": o.muon_scale_mode,
      "extra_scale_factor": o.muon_extra_scale_factor, "mode": o.muon_tp_mode})}
  for name, w in mine.items():
    theirs_in[name] = w
    theirs_in[f"{name}/grads"] = np.stack([_megatron(g["decoder"]["layer"])[name] for g in grads])
  np.savez(tmp_path / "in.npz", **theirs_in)
  r = subprocess.run([str(PEER), str(REPO / "tests/peers/megatron_muon.py"), str(tmp_path / "in.npz"),
                      str(tmp_path / "out.npz")], capture_output=True, text=True, timeout=300)
  assert r.returncode == 0, r.stderr[-3000:]
  theirs = np.load(tmp_path / "out.npz")

  opt = make_optimizer(cfg)
  p = jax.tree.map(jnp.asarray, params)
  state = opt.init(p)
  step = jax.jit(lambda g, s, p: (lambda u, s: (jax.tree.map(lambda a, b: a + b, p, u), s))(*opt.update(g, s, p)))
  # bf16 iterations round differently in torch's CPU kernels and XLA's; fp32 ones agree to rounding
  tol = 1e-2 if o.muon_fp32_matmul_prec == "medium" else 2e-5  # measured: 2.6e-3 and 6.2e-6
  for s, g in enumerate(grads):
    before = _megatron(jax.tree.map(np.asarray, p)["decoder"]["layer"])
    p, state = step(jax.tree.map(jnp.asarray, g), state, p)
    after = _megatron(jax.tree.map(np.asarray, p)["decoder"]["layer"])
    for name in mine:
      ours, ref = after[name] - before[name], theirs[name][s] - before[name]
      err = np.linalg.norm(ours - ref) / np.linalg.norm(ref)
      assert err < tol, (s, name, err)


def _numpy_ns(x, steps, kind):
  """Megatron's Newton-Schulz on a [out, in] matrix in float64: transposed when out > in, normalized,
  then X ← aX + (bA + cA²)X with A = XXᵀ."""
  t = x.shape[0] > x.shape[1]
  X = x.T if t else x
  X = X / max(np.linalg.norm(X), 1e-7)
  for a, b, c in muon.coefficients(kind, steps):
    A = X @ X.T
    X = a * X + (b * A + c * A @ A) @ X
  return X.T if t else X


@pytest.mark.parametrize("shape", [(3, 16, 24), (24, 16), (16, 16), (2, 1, 16)])
@pytest.mark.parametrize("kind,steps", [("quintic", 5), ("simple", 3), ("polar_express", 10)])
def test_newton_schulz_matches_numpy(shape, kind, steps):
  x = np.random.default_rng(0).normal(size=shape)
  ours = np.asarray(muon.newton_schulz(jnp.asarray(x, jnp.float32), steps, kind, "highest"))
  ref = np.stack([_numpy_ns(m.T, steps, kind).T for m in x.reshape(-1, *shape[-2:])]).reshape(shape)
  np.testing.assert_allclose(ours, ref, rtol=1e-4, atol=1e-5)
  # it orthogonalizes: the singular values of the result lie near 1 (the quintic sets trade exactness
  # for speed: within [0.6, 1.3]), whatever the input's were
  if steps >= 5 and min(shape[-2:]) > 1:
    sv = np.linalg.svd(ours.reshape(-1, *shape[-2:]), compute_uv=False)
    assert sv.min() > 0.5 and sv.max() < 1.35, (sv.min(), sv.max())


def test_labels_follow_megatron():
  """Megatron's rule: 2-D weights other than the embedding and output layer by Muon; here the scan's
  layer axis does not count, and MLA's, MTP's, the shared experts' and the router's matrices are in."""
  from flax import linen as nn

  from moejax.config import model_spec
  from moejax.models.gpt import GPTModel
  c = base_config()
  c.model.update(num_layers=2, hidden_size=32, ffn_hidden_size=64, num_attention_heads=4, vocab_size=64,
                 multi_latent_attention=True, q_lora_rank=16, kv_lora_rank=8, qk_head_dim=8,
                 qk_pos_emb_head_dim=4, v_head_dim=8, mtp_num_layers=1, add_qkv_bias=True)
  c.moe.update(num_experts=4, router_topk=2, ffn_hidden_size=16, layer_freq=(0, 1),
               shared_expert_intermediate_size=16, shared_expert_gate=True)
  params = jax.eval_shape(lambda: GPTModel(model_spec(c)).init(jax.random.key(0), jnp.zeros((1, 8), jnp.int32)))
  labels = {jax.tree_util.keystr(k): v for k, v in
            jax.tree_util.tree_flatten_with_path(muon_labels(nn.unbox(params)["params"]))[0]}
  adam = sorted(k for k, v in labels.items() if v == "adam")
  assert all(k.endswith("['scale']") or "bias" in k for k in adam if "embedding" not in k and "output" not in k), adam
  assert "['embedding']['embedding']" in adam and "['output_layer']['kernel']" in adam
  for name in ("q_down", "kv_up", "'o'", "w1", "w2", "['router']['kernel']", "gate_weight", "eh_proj", "'gate'",
               "'down'"):
    assert any(name in k and v == "muon" for k, v in labels.items()), name
  with pytest.raises(ValueError, match="no matrix view of parameter"):
    muon_labels({"decoder": {"mystery": jnp.zeros((4, 4))}})


def test_blockwise_tensor_parallel_blocks():
  """At tp=2 `blockwise` orthogonalizes each rank's block as Megatron's ranks do: q, k, v over their
  heads, o over its input heads, the MLP's gate and up together per rank (Megatron's local fc1 holds its
  rank's gate and up rows), the experts' over etp; `duplicated` the whole matrix."""
  rng = np.random.default_rng(3)
  grads = _layer(rng)
  g_ = jax.tree.map(jnp.asarray, grads)
  blocks = lambda c: make_optimizer(c).update(g_, make_optimizer(c).init(g_), g_)[0]  # noqa: E731
  c = _cfg(lr=1.0, min_lr=1.0, weight_decay=0.0, muon_fp32_matmul_prec="highest", muon_momentum=0.0)
  c.parallel.update(tp=2, etp=1)
  got = jax.tree.map(np.asarray, blocks(c))["decoder"]["layer"]
  g = grads["decoder"]["layer"]

  def ns(m):  # [in, out] → -scale · NS, Megatron's spectral scale of the block
    return -np.sqrt(max(m.shape)) * np.asarray(muon.newton_schulz(jnp.asarray(m), 5, "quintic", "highest"))

  q = g["attention"]["q"]
  for r in range(2):
    part = q[:, r * 2:(r + 1) * 2].reshape(H, -1)
    np.testing.assert_allclose(got["attention"]["q"][:, r * 2:(r + 1) * 2].reshape(H, -1), ns(part), atol=1e-5)
    o = g["attention"]["o"][r * 2:(r + 1) * 2].reshape(-1, H)
    np.testing.assert_allclose(got["attention"]["o"][r * 2:(r + 1) * 2].reshape(-1, H), ns(o), atol=1e-5)
    cols = slice(r * F // 2, (r + 1) * F // 2)
    fc1 = ns(np.concatenate([g["mlp"]["gate"][:, cols], g["mlp"]["up"][:, cols]], axis=-1))
    np.testing.assert_allclose(got["mlp"]["gate"][:, cols], fc1[:, :F // 2], atol=1e-5)
    np.testing.assert_allclose(got["mlp"]["up"][:, cols], fc1[:, F // 2:], atol=1e-5)
  w1 = g["moe"]["experts"]["w1"]
  np.testing.assert_allclose(got["moe"]["experts"]["w1"], np.stack([ns(w) for w in w1]), atol=1e-5)  # etp=1
  c.optim.muon_tp_mode = "duplicated"
  whole = jax.tree.map(np.asarray, blocks(c))["decoder"]["layer"]
  np.testing.assert_allclose(whole["attention"]["q"].reshape(H, -1), ns(q.reshape(H, -1)), atol=1e-5)


def test_bad_settings_name_the_key():
  c = _cfg(muon_num_ns_steps=0)
  with pytest.raises(ConfigError, match="optim.muon_num_ns_steps=0"):
    validate(c, 1)
  c = _cfg(muon_momentum=1.0)
  with pytest.raises(ConfigError, match="optim.muon_momentum=1.0"):
    validate(c, 1)


def test_blockwise_refuses_a_matrix_that_does_not_split():
  c = _cfg(muon_tp_mode="blockwise")
  c.parallel.tp = 3
  g = {"decoder": {"mlp": {"down": jnp.ones((8, 4))}}}
  opt = make_optimizer(c)
  with pytest.raises(ValueError, match=r"\['down'\] has 8 rows .* not divisible by 3 ranks"):
    opt.update(g, opt.init(g), g)
