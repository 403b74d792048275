"""Mixtral 8x22B (141B parameters, 39B active): 56 layers, all MoE, 8 experts top-2.

Architecture: mistralai/Mixtral-8x22B-v0.1 config.json (hidden 6144, FFN 16384, 48 heads, 8 KV
heads, vocab 32000, rope theta 1e6, aux-loss coefficient 0.001). Training values (not published):
as configs/mixtral_8x7b.py.
Layout: 64 H200 (8 nodes × 8): tp=8 with sequence parallelism, ep=8 × etp=8 (each expert over
a node's 8 GPUs): ~2.1B expert + 0.7B other parameters per GPU ≈ 56 GB of model state.
"""
import pathlib

from moejax.config.recipes import load_recipe


def get_config():
  c = load_recipe(str(pathlib.Path(__file__).with_name("mixtral_8x7b.py")))
  c.model.update(num_layers=56, hidden_size=6144, ffn_hidden_size=16384, num_attention_heads=48)
  c.moe.update(ffn_hidden_size=16384, aux_loss_coeff=1e-3)
  c.parallel.update(tp=8, ep=8, etp=8)
  c.train.update(global_batch_size=128)
  return c
