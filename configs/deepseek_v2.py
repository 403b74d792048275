"""DeepSeek-V2 (236B parameters, 21B active): 60 layers (the first dense), MLA (q_lora_rank 1536,
kv_lora_rank 512, 128 + 64 rotary q/k head dims, v 128), 2 shared + 160 routed experts top-6,
softmax routing limited to the 3 best of 8 device groups (a group scored by its best expert),
routed scaling 16, YaRN as in the released config; otherwise as configs/deepseek_v2_lite.py.

Source: DeepSeek-V2 report (arXiv 2405.04434) §3 and deepseek-ai/DeepSeek-V2 config.json:
init std 0.006, AdamW (0.9, 0.95), weight decay 0.1, clip 1.0, expert-level balance α1 = 0.003 (moejax
has no device- and communication-level balance losses), 8.1T tokens of 4096. Sample-based as the report
counts: the batch ramps from 2304 to 9216 sequences over the first 225B tokens (the report gives no
increment: 2304 here, four sizes); lr 2.4e-4 after a 2000-step warmup (2000 × 2304 samples), then a cosine
to 2.4e-5 (the report multiplies it by 0.316 after 60% and 90% of the tokens, a step decay Megatron has not).
Layout: 256 H200 (32 nodes × 8): tp=8 with sequence parallelism, ep=32 × etp=8 (5 experts per
expert-parallel rank, each over 8 GPUs): ~0.9B expert + 2.2B other parameters per GPU ≈ 62 GB.
"""
import pathlib

from moejax.config.recipes import load_recipe


def get_config():
  c = load_recipe(str(pathlib.Path(__file__).with_name("deepseek_v2_lite.py")))
  c.model.update(num_layers=60, hidden_size=5120, ffn_hidden_size=12288, num_attention_heads=128,
                 num_query_groups=128, q_lora_rank=1536)
  c.moe.update(num_experts=160, ffn_hidden_size=1536, shared_expert_intermediate_size=3072,
               layer_freq=[0] + [1] * 59, router_num_groups=8, router_group_topk=3, router_group_scoring="max",
               router_topk_scaling_factor=16.0, aux_loss_coeff=3e-3)
  c.parallel.update(tp=8, sequence_parallel=True, ep=32, etp=8)
  tokens = lambda n: int(n) // 4096  # noqa: E731  samples of 4096 tokens
  c.train.update(train_iters=None, train_samples=tokens(8.1e12), global_batch_size=9216,
                 rampup_batch_size=(2304, 2304, tokens(225e9)))
  c.optim.update(lr=2.4e-4, min_lr=2.4e-5, lr_warmup_iters=0, lr_warmup_samples=2000 * 2304)
  return c
