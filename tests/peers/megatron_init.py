"""Run inside the megatron-core peer venv: the standard deviation of each kind of weight of a freshly
initialized megatron-core GPTModel (local layer specs, CPU initialization).

Usage: python megatron_init.py CONFIG.json OUT.json (called by tests/models/test_init.py). CONFIG has
num_layers, hidden_size, ffn_hidden_size, moe_ffn_hidden_size, shared_expert_intermediate_size,
num_experts, num_attention_heads, num_query_groups, vocab_size, init_method_std, embedding_init_method_std
and moe_layer_freq; OUT maps each kind (embedding, output_layer, attn_in, attn_out, dense_fc1, dense_fc2,
router, expert_fc1, expert_fc2, shared_fc1, shared_fc2) to the std of all its weights together.
One process, one CPU, a gloo world of size 1.
"""
import json
import os
import re
import sys

import torch

torch.cuda.current_device = lambda: torch.device("cpu")

KINDS = [("embedding", r"embedding\.word_embeddings"), ("output_layer", r"^output_layer"),
         ("attn_in", r"linear_qkv"), ("attn_out", r"linear_proj"), ("router", r"router\.weight"),
         ("expert_fc1", r"experts\.local_experts\.\d+\.linear_fc1"),
         ("expert_fc2", r"experts\.local_experts\.\d+\.linear_fc2"), ("shared_fc1", r"shared_experts\.linear_fc1"),
         ("shared_fc2", r"shared_experts\.linear_fc2"), ("dense_fc1", r"layers\.\d+\.mlp\.linear_fc1"),
         ("dense_fc2", r"layers\.\d+\.mlp\.linear_fc2")]


def main(config_path, out_path):
  c = json.load(open(config_path))
  os.environ.setdefault("MASTER_ADDR", "localhost")
  os.environ.setdefault("MASTER_PORT", "29531")
  torch.distributed.init_process_group("gloo", rank=0, world_size=1)
  from megatron.core import parallel_state
  parallel_state.initialize_model_parallel()
  from megatron.core.models.gpt import GPTModel
  from megatron.core.models.gpt.gpt_layer_specs import get_gpt_decoder_block_spec
  from megatron.core.transformer.transformer_config import TransformerConfig
  torch.manual_seed(0)
  cfg = TransformerConfig(
      num_layers=c["num_layers"], hidden_size=c["hidden_size"], ffn_hidden_size=c["ffn_hidden_size"],
      num_attention_heads=c["num_attention_heads"], num_query_groups=c["num_query_groups"],
      num_moe_experts=c["num_experts"], moe_router_topk=2, moe_ffn_hidden_size=c["moe_ffn_hidden_size"],
      moe_shared_expert_intermediate_size=c["shared_expert_intermediate_size"], moe_layer_freq=c["moe_layer_freq"],
      init_method_std=c["init_method_std"], embedding_init_method_std=c["embedding_init_method_std"],
      use_cpu_initialization=True, add_bias_linear=False, gated_linear_unit=True,
      activation_func=torch.nn.functional.silu, params_dtype=torch.float32, normalization="RMSNorm")
  spec = get_gpt_decoder_block_spec(cfg, use_transformer_engine=False)
  model = GPTModel(config=cfg, transformer_layer_spec=spec, vocab_size=c["vocab_size"], max_sequence_length=64,
                   share_embeddings_and_output_weights=False, position_embedding_type="rope")
  values = {kind: [] for kind, _ in KINDS}
  for name, p in model.named_parameters():
    kind = next((k for k, pattern in KINDS if re.search(pattern, name)), None)
    if kind is not None:
      values[kind].append(p.detach().flatten())
  json.dump({k: float(torch.cat(v).std()) for k, v in values.items() if v}, open(out_path, "w"))


if __name__ == "__main__":
  main(*sys.argv[1:])
