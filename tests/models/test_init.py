"""Initialization: every kind of weight of a fresh GPTModel has megatron-core's standard deviation
(peer subprocess, tests/peers/megatron_init.py): N(0, init_method_std) for the input projections,
router, embedding (or embedding_init_method_std) and output layer, and Megatron's scaled
N(0, init_method_std / sqrt(2 · num_layers)) for each layer's output projections (attention's, the
dense, shared and routed experts' fc2)."""
import json
import pathlib
import subprocess

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn

from moejax.config import AttentionSpec, ModelSpec, MoESpec, RouterSpec
from moejax.models.gpt import GPTModel

REPO = pathlib.Path(__file__).resolve().parents[2]
PEER = REPO / ".peer-venv/bin/python"
CONFIG = dict(num_layers=4, hidden_size=256, ffn_hidden_size=512, moe_ffn_hidden_size=128,
              shared_expert_intermediate_size=256, num_experts=8, num_attention_heads=4, num_query_groups=2,
              vocab_size=2048, init_method_std=0.02, embedding_init_method_std=0.05, moe_layer_freq=[0, 1, 1, 1])
KINDS = {  # kind: the moejax param paths holding it
    "embedding": ("embedding/embedding",), "output_layer": ("output_layer/kernel",),
    "attn_in": ("attention/q", "attention/k", "attention/v"), "attn_out": ("attention/o",),
    "router": ("router/kernel",), "expert_fc1": ("experts/w1",), "expert_fc2": ("experts/w2",),
    "shared_fc1": ("shared_experts/gate", "shared_experts/up"), "shared_fc2": ("shared_experts/down",),
    "dense_fc1": ("mlp/gate", "mlp/up"), "dense_fc2": ("mlp/down",)}


def _ours() -> dict:
  c = CONFIG
  spec = ModelSpec(num_layers=c["num_layers"], hidden_size=c["hidden_size"], ffn_hidden_size=c["ffn_hidden_size"],
                   vocab_size=c["vocab_size"], init_method_std=c["init_method_std"],
                   embedding_init_method_std=c["embedding_init_method_std"], dtype="float32", scan_layers=False,
                   attention=AttentionSpec(num_attention_heads=c["num_attention_heads"],
                                           num_query_groups=c["num_query_groups"]),
                   moe=MoESpec(num_experts=c["num_experts"], ffn_hidden_size=c["moe_ffn_hidden_size"],
                               shared_expert_intermediate_size=c["shared_expert_intermediate_size"],
                               layer_freq=tuple(c["moe_layer_freq"]), router=RouterSpec(router_topk=2)))
  params = nn.unbox(jax.jit(GPTModel(spec).init)(jax.random.key(0), jnp.zeros((1, 8), jnp.int32))["params"])
  flat = {jax.tree_util.keystr(p, simple=True, separator="/"): v for p, v in jax.tree_util.tree_leaves_with_path(params)}
  return {kind: float(np.concatenate([np.ravel(v) for p, v in flat.items() if p.endswith(ends)]).std())
          for kind, ends in KINDS.items()}


def test_init_follows_megatrons_formulas():
  ours, c = _ours(), CONFIG
  scaled = c["init_method_std"] / np.sqrt(2 * c["num_layers"])
  for kind, std in ours.items():
    want = (c["embedding_init_method_std"] if kind == "embedding" else scaled if kind.endswith(("_out", "fc2"))
            else c["init_method_std"])
    np.testing.assert_allclose(std, want, rtol=0.05, err_msg=kind)


@pytest.mark.skipif(not PEER.exists(), reason="megatron-core peer venv missing: run .ci/peer_venv.sh")
def test_init_equals_megatron_core(tmp_path):
  (tmp_path / "config.json").write_text(json.dumps(CONFIG))
  r = subprocess.run([str(PEER), str(REPO / "tests/peers/megatron_init.py"), str(tmp_path / "config.json"),
                      str(tmp_path / "out.json")], capture_output=True, text=True, timeout=300)
  assert r.returncode == 0, r.stderr[-3000:]
  theirs, ours = json.load(open(tmp_path / "out.json")), _ours()
  assert theirs.keys() == ours.keys()
  for kind in ours:
    np.testing.assert_allclose(ours[kind], theirs[kind], rtol=0.05, err_msg=kind)
