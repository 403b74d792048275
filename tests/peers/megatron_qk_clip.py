"""Run inside the megatron-core peer venv: megatron-core's QK-clip weight updates (SelfAttention's
`_clip_linear_qkv`, MLASelfAttention's `_clip_q_proj_weight` and `_clip_kv_proj_weight`) on given
weights and per-head largest logits. Usage: python megatron_qk_clip.py IN.npz OUT.npz (called by
tests/layers/test_qk_clip.py). IN: `config` (JSON: heads, groups, head dims, alpha, threshold),
`logits` [N], and `qkv` [(N + 2 K) D, H] (GQA) or `q_up` [N (Dn + Dr), r] and `kv_up` [N (Dn + Dv), c]
(MLA); OUT: the same weights clipped. The methods run on a stand-in for the module holding only the
attributes they read (the modules themselves need Transformer Engine for their logits).
"""
import json
import sys
import types

import numpy as np
import torch
from megatron.core.transformer.attention import SelfAttention
from megatron.core.transformer.multi_latent_attention import MLASelfAttention


def run(data):
  c = json.loads(str(data["config"]))
  cfg = types.SimpleNamespace(qk_clip_alpha=c["alpha"], qk_clip_threshold=c["threshold"],
                              qk_head_dim=c.get("qk_head_dim"), qk_pos_emb_head_dim=c.get("qk_pos_emb_head_dim"),
                              v_head_dim=c.get("v_head_dim"))
  m = torch.tensor(data["logits"])
  if "qkv" in data.files:
    N, K, D = c["heads"], c["groups"], c["head_dim"]
    group = m.view(K, -1).max(dim=1).values
    me = types.SimpleNamespace(config=cfg, num_query_groups_per_partition=K, query_projection_size=N * D,
                               kv_projection_size=K * D)
    me.qk_clip_balancing_eta = torch.clamp(c["threshold"] / group, max=1.0).view(K, 1, 1)
    return {"qkv": SelfAttention._clip_linear_qkv(me, torch.tensor(data["qkv"]).clone()).numpy()}
  me = types.SimpleNamespace(config=cfg, num_attention_heads_per_partition=c["heads"])
  me.qk_clip_balancing_eta = torch.clamp(c["threshold"] / m, max=1.0).view(-1, 1, 1)
  return {"q_up": MLASelfAttention._clip_q_proj_weight(me, torch.tensor(data["q_up"]).clone()).numpy(),
          "kv_up": MLASelfAttention._clip_kv_proj_weight(me, torch.tensor(data["kv_up"]).clone()).numpy()}


if __name__ == "__main__":
  np.savez(sys.argv[2], **run(np.load(sys.argv[1])))
