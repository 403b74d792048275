"""Qwen3-235B-A22B (235B parameters, 22B active): 94 layers, 128 experts top-8 (renormalised),
GQA 64/4 with head_dim 128 and per-head QK RMSNorm; training values as configs/qwen3_30b_a3b.py.

Architecture: Qwen/Qwen3-235B-A22B config.json and the Qwen3 report (arXiv 2505.09388).
Layout: 128 H200 (16 nodes × 8): tp=4 with sequence parallelism (KV heads 4/4), ep=128 (one
expert per GPU): ~1.8B expert + 2.0B other parameters per GPU ≈ 76 GB of model state.
"""
import pathlib

from moejax.config.recipes import load_recipe


def get_config():
  c = load_recipe(str(pathlib.Path(__file__).with_name("qwen3_30b_a3b.py")))
  c.model.update(num_layers=94, hidden_size=4096, ffn_hidden_size=12288, num_attention_heads=64)
  c.moe.update(ffn_hidden_size=1536)
  c.parallel.update(tp=4, ep=128)
  c.train.update(global_batch_size=1024)
  return c
