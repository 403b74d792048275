"""QK-clip (model.qk_clip, Megatron's MuonClip): the largest attention logit per head against NumPy
(causal, documents, a sequence off the chunk size); the weight updates against megatron-core's own
(peer subprocess, tests/peers/megatron_qk_clip.py) for grouped-query attention and MLA; and through a
train step: the clipped params, the logged logit, the reset state."""
import json
import pathlib
import subprocess

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn

from moejax.config import ConfigError, base_config, model_spec
from moejax.layers.qk_clip import MaxAttentionLogits, clip_attention, clip_qk, max_attention_logits
from moejax.parallel.context import load_balanced_order
from moejax.models.gpt import GPTModel
from moejax.moe.state import MOE_STATE
from moejax.train.optim import lr_schedule, make_optimizer
from moejax.train.state import TrainState
from moejax.train.step import make_train_step
from moejax.train.validate import validate

REPO = pathlib.Path(__file__).resolve().parents[2]
PEER = REPO / ".peer-venv/bin/python"


@pytest.mark.parametrize("documents", [False, True])
def test_max_attention_logits_matches_numpy(documents):
  rng = np.random.default_rng(0)
  B, S, N, K, D = 2, 300, 4, 2, 8        # 300 rows: a chunk of 256 and a part-filled one
  q, k = rng.normal(size=(B, S, N, D)).astype(np.float32), rng.normal(size=(B, S, K, D)).astype(np.float32)
  seg = np.cumsum(rng.random((B, S)) < 0.02, axis=1) if documents else None
  got = np.asarray(max_attention_logits(jnp.asarray(q), jnp.asarray(k), None if seg is None else jnp.asarray(seg),
                                        0.3))
  s = np.einsum("bqnd,bsnd->bnqs", q.astype(np.float64), np.repeat(k, N // K, axis=2)) * 0.3
  see = np.tril(np.ones((S, S), bool))[None]
  if seg is not None:
    see = see & (seg[:, :, None] == seg[:, None, :])
  want = np.where(see[:, None], s, -np.inf).max(axis=(0, 2, 3))
  np.testing.assert_allclose(got, want, rtol=1e-5)


def test_max_attention_logits_in_context_parallel_order():
  """Slots in cp's load-balanced order with their positions given: the logits of the natural order."""
  rng = np.random.default_rng(1)
  B, S, N, K, D = 2, 296, 4, 2, 8        # 2·cp = 4 chunks of 74; blocks of 256: a part-filled one
  q, k = rng.normal(size=(B, S, N, D)).astype(np.float32), rng.normal(size=(B, S, K, D)).astype(np.float32)
  seg = np.cumsum(rng.random((B, S)) < 0.02, axis=1)
  order = load_balanced_order(S, 2)
  want = max_attention_logits(jnp.asarray(q), jnp.asarray(k), jnp.asarray(seg), 0.3)
  got = max_attention_logits(jnp.asarray(q[:, order]), jnp.asarray(k[:, order]), jnp.asarray(seg[:, order]), 0.3,
                             positions_S=order)
  np.testing.assert_allclose(got, want, rtol=1e-6)


def test_context_parallel_run_equals_one_device(small_moe_config, tmp_path):
  """QK-clip at cp=2 × dp=4 on 8 devices (a threshold the first step's logits pass): three steps' losses
  and largest logits equal one device's."""
  from moejax.train.loop import train
  states = {}
  for name, devices, parallel in (("one", 1, {}), ("cp2", 8, dict(cp=2))):
    cfg = small_moe_config()
    cfg.model.update(qk_clip=True, qk_clip_threshold=0.05)
    cfg.train.update(train_iters=3, micro_batch_size=4 if devices == 1 else 1, log_interval=100)
    cfg.parallel.update(**parallel)
    cfg.logging.tensorboard = False
    rows = train(cfg, str(tmp_path / name), devices=jax.devices()[:devices])
    states[name] = [(r["loss"], r["max_attention_logit"]) for r in rows]
  np.testing.assert_allclose(states["cp2"], states["one"], rtol=1e-5)
  assert states["one"][0][1] > 0.05  # the first step's logits pass the threshold: the later steps run clipped


def _peer(tmp_path, arrays):
  np.savez(tmp_path / "in.npz", **arrays)
  r = subprocess.run([str(PEER), str(REPO / "tests/peers/megatron_qk_clip.py"), str(tmp_path / "in.npz"),
                      str(tmp_path / "out.npz")], capture_output=True, text=True, timeout=300)
  assert r.returncode == 0, r.stderr[-3000:]
  return np.load(tmp_path / "out.npz")


def _spec(**model):
  c = base_config()
  c.model.update(qk_clip=True, qk_clip_alpha=0.3, qk_clip_threshold=5.0, **model)
  return model_spec(c)


@pytest.mark.skipif(not PEER.exists(), reason="megatron-core peer venv missing: run .ci/peer_venv.sh")
def test_gqa_clip_matches_megatron(tmp_path):
  """Megatron's linear_qkv [(N + 2K) D, H] holds per group its heads' q rows, then k, then v."""
  spec = _spec(num_attention_heads=4, num_query_groups=2, hidden_size=32)
  H, N, K, D = 32, 4, 2, spec.head_dim
  rng = np.random.default_rng(1)
  att = {n: rng.normal(size=shape).astype(np.float32) for n, shape in
         (("q", (H, N, D)), ("k", (H, K, D)), ("v", (H, K, D)), ("q_bias", (N, D)))}
  logits = np.array([2.0, 9.0, 4.0, 3.0], np.float32)  # group 0 clips (max 9 > 5), group 1 does not
  mine = clip_attention(jax.tree.map(jnp.asarray, att), MaxAttentionLogits(jnp.asarray(logits)), spec)

  def qkv(a):
    q, kk, v = a["q"].reshape(H, K, N // K * D), a["k"], a["v"]
    return np.concatenate([q, kk, v], axis=-1).reshape(H, -1).T

  theirs = _peer(tmp_path, {"config": json.dumps(dict(heads=N, groups=K, head_dim=D, alpha=0.3, threshold=5.0)),
                            "logits": logits, "qkv": qkv(att)})
  np.testing.assert_allclose(qkv(jax.tree.map(np.asarray, mine)), theirs["qkv"], rtol=1e-6)
  assert not np.allclose(theirs["qkv"], qkv(att))                       # it clipped
  np.testing.assert_array_equal(np.asarray(mine["q_bias"]), att["q_bias"])  # biases stay


@pytest.mark.skipif(not PEER.exists(), reason="megatron-core peer venv missing: run .ci/peer_venv.sh")
def test_mla_clip_matches_megatron(tmp_path):
  spec = _spec(multi_latent_attention=True, num_attention_heads=3, num_query_groups=3, hidden_size=24,
               q_lora_rank=10, kv_lora_rank=12, qk_head_dim=6, qk_pos_emb_head_dim=4, v_head_dim=5)
  N, Dn, Dr, Dv = 3, 6, 4, 5
  rng = np.random.default_rng(2)
  att = {"q_up": rng.normal(size=(10, N, Dn + Dr)).astype(np.float32),
         "kv_up": rng.normal(size=(12, N, Dn + Dv)).astype(np.float32)}
  logits = np.array([20.0, 1.0, 7.5], np.float32)
  mine = jax.tree.map(np.asarray, clip_attention(jax.tree.map(jnp.asarray, att), MaxAttentionLogits(jnp.asarray(logits)),
                                                 spec))
  cfg = dict(heads=N, alpha=0.3, threshold=5.0, qk_head_dim=Dn, qk_pos_emb_head_dim=Dr, v_head_dim=Dv)
  theirs = _peer(tmp_path, {"config": json.dumps(cfg), "logits": logits,
                            **{n: w.reshape(w.shape[0], -1).T for n, w in att.items()}})
  for n in att:
    np.testing.assert_allclose(mine[n].reshape(mine[n].shape[0], -1).T, theirs[n], rtol=1e-6, err_msg=n)


def test_train_step_clips_after_the_update_and_logs(small_moe_config):
  """One step with a threshold every head passes: the params are the unclipped step's, clipped by the
  logits of the step's forward pass; `max_attention_logit` is their largest; the state is reset."""
  cfg = small_moe_config()
  cfg.model.update(qk_clip=True, qk_clip_threshold=0.05)
  cfg.optim.update(lr=1e-3, min_lr=1e-3, lr_decay_style="constant")
  spec = model_spec(cfg)
  model, opt = GPTModel(spec), make_optimizer(cfg)
  tokens = jax.random.randint(jax.random.key(3), (1, 4, 33), 0, 257)
  variables = model.init(jax.random.key(0), tokens[0, :, :-1])
  params, moe_state = nn.unbox(variables["params"]), variables[MOE_STATE]
  state = TrainState(jnp.zeros((), jnp.int32), params, opt.init(params), moe_state)
  new, metrics = jax.jit(make_train_step(model, opt, lr_schedule(cfg)))(state, tokens)

  _, seen = model.apply({"params": params, MOE_STATE: moe_state}, tokens[0, :, :-1], mutable=[MOE_STATE])
  cfg.model.qk_clip = False
  plain = make_train_step(GPTModel(model_spec(cfg)), opt, lr_schedule(cfg))
  unclipped, _ = jax.jit(plain)(TrainState(state.step, params, opt.init(params), {}), tokens)
  want = clip_qk(unclipped.params, seen[MOE_STATE], spec)
  for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(new.params), jax.tree.leaves(want)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7, err_msg=jax.tree_util.keystr(path))
  q_new, q_old = (np.asarray(p["decoder"]["segment_0"]["block_0"]["attention"]["q"]) for p in (new.params, unclipped.params))
  assert np.all(np.abs(q_new) <= np.abs(q_old) + 1e-9) and not np.allclose(q_new, q_old)
  largest = max(float(jnp.max(x.value)) for x in jax.tree.leaves(
      seen[MOE_STATE], is_leaf=lambda x: isinstance(x, MaxAttentionLogits)) if isinstance(x, MaxAttentionLogits))
  assert float(metrics["max_attention_logit"]) == pytest.approx(largest, rel=1e-6) and largest > 0.05
  assert all(float(jnp.max(jnp.abs(x.value))) == 0 for x in jax.tree.leaves(
      new.moe_state, is_leaf=lambda x: isinstance(x, MaxAttentionLogits)) if isinstance(x, MaxAttentionLogits))


def test_bad_settings_name_the_key():
  for model, message in ((dict(qk_clip_alpha=1.5), "model.qk_clip_alpha=1.5 must be in [0, 1]"),
                         (dict(qk_clip_threshold=0.0), "model.qk_clip_threshold=0.0 must be > 0")):
    c = base_config()
    c.model.update(qk_clip=True, **model)
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]")):
      validate(c, 1)
