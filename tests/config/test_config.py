"""Config validation: each problem gives its own message naming the key and the fix."""
import subprocess
import sys

import jax
import pytest

from moejax.config import ConfigError, apply_overrides, base_config
from moejax.metrics.flops import num_params
from moejax.train.validate import validate


def _cfg(**sections):
  c = base_config()
  c.moe.num_experts = 8
  for dotted, v in sections.items():
    apply_overrides(c, {dotted.replace("__", "."): v})
  return c


@pytest.mark.parametrize("overrides,devices,message", [
    ({"moe__router_topk": 9}, None, "moe.router_topk=9 must be between 1 and moe.num_experts=8"),
    ({"moe__num_experts": 6, "parallel__ep": 4}, 8, "moe.num_experts=6 is not divisible by parallel.ep=4"),
    ({"model__num_attention_heads": 6, "model__num_query_groups": 6, "parallel__tp": 4}, 8,
     "model.num_attention_heads=6 is not divisible by parallel.tp=4"),
    ({"model__num_query_groups": 1, "parallel__tp": 2}, 8,
     "model.num_query_groups=1 (KV heads) is not divisible by parallel.tp=2"),
    ({"model__num_query_groups": 3}, None, "is not divisible by model.num_query_groups=3"),
    ({"train__global_batch_size": 12, "train__micro_batch_size": 1}, 8,
     "train.global_batch_size=12 is not divisible by train.micro_batch_size*dp=1*8=8"),
    ({"parallel__dp": 2}, 8, "mesh size parallel.dp*tp*cp*pp=2 != 8 devices"),
    ({"parallel__tp": 3, "model__num_attention_heads": 6, "model__num_query_groups": 3,
      "model__ffn_hidden_size": 120, "model__vocab_size": 258}, 8, "parallel.tp*cp*pp=3 does not divide the 8 devices"),
    ({"parallel__ep": 2, "parallel__tp": 2}, 8, "needs parallel.sequence_parallel=True"),
    ({"parallel__ep": 8, "parallel__etp": 2}, 8, "parallel.etp*ep*pp=16 does not divide the 8 devices"),
    ({"moe__layer_freq": [1, 0, 1]}, None, "must be a list of 2 zeros and ones"),
    ({"moe__router_score_function": "relu"}, None, "moe.router_score_function='relu' is not one of"),
    ({"moe__ffn_hidden_size": 100, "parallel__etp": 8}, 8, "moe.ffn_hidden_size=100 is not divisible by parallel.etp=8"),
    ({"model__vocab_size": 0}, None, "model.vocab_size=0 must be a positive integer"),
    ({"model__kv_channels": 0}, None, "model.kv_channels=0 must be a positive integer"),
    ({"model__rotary_base": 0.0}, None, "model.rotary_base=0.0 must be > 0"),
    ({"model__norm_epsilon": -1.0}, None, "model.norm_epsilon=-1.0 must be > 0"),
    ({"model__init_method_std": 0.0}, None, "model.init_method_std=0.0 must be > 0"),
    ({"model__mtp_loss_scaling_factor": -1.0}, None, "model.mtp_loss_scaling_factor=-1.0 must be >= 0"),
    ({"model__rope_type": "yarn", "model__original_max_position_embeddings": 0}, None,
     "model.original_max_position_embeddings=0 must be a positive integer"),
    ({"moe__ffn_hidden_size": 0}, None, "moe.ffn_hidden_size=0 must be a positive integer"),
    ({"moe__shared_expert_intermediate_size": -4}, None, "moe.shared_expert_intermediate_size=-4 must be"),
    ({"moe__router_group_topk": 3}, None, "moe.router_group_topk=3 needs moe.router_num_groups"),
    ({"moe__router_topk_scaling_factor": -1.0}, None, "moe.router_topk_scaling_factor=-1.0 must be > 0"),
    ({"moe__router_bias_update_rate": -1e-3}, None, "moe.router_bias_update_rate=-0.001 must be >= 0"),
    ({"moe__use_upcycling": True, "moe__upcycling_granularity": 0}, None,
     "moe.upcycling_granularity=0 must be a positive divisor of moe.num_experts=8"),
    ({"logging__peak_tflops_per_device": -1.0}, None, "logging.peak_tflops_per_device=-1.0 must be >= 0"),
    ({"model__kv_channels": 7}, None, "model.kv_channels=7 must be even: rotary embeddings turn pairs"),
    ({"model__rotary_percent": 1.5}, None, "model.rotary_percent=1.5 must be in (0, 1]"),
    ({"model__multi_latent_attention": True, "model__rotary_percent": 0.5}, None,
     "model.rotary_percent=0.5 does not apply to MLA"),
    ({"model__kv_channels": 16, "model__rotary_percent": 0.2}, None,
     "model.rotary_percent=0.2 of the head dim 16 gives 3 rotary channels: it must be an even number > 0"),
    ({"model__hidden_size": 100}, None,
     "the head dim model.hidden_size/num_attention_heads=25 must be even: rotary embeddings turn pairs"),
    ({"data__reset_attention_mask": True, "data__eod": 300}, None, "data.eod=300 is outside model.vocab_size=257"),
    ({"model__scan_unroll": -1}, None, "model.scan_unroll=-1 must be an integer >= 0"),
    ({"logging__profile": True, "logging__profile_step_start": 5, "logging__profile_step_end": 5}, None,
     "logging.profile_step_start=5 and logging.profile_step_end=5 must be integers with 0 <= start < end"),
])
def test_validation_error_names_key_and_fix(overrides, devices, message):
  cfg = _cfg(**overrides)
  with pytest.raises(ConfigError) as e:
    validate(cfg, devices)
  assert message in str(e.value)


def test_every_problem_reported_once():
  cfg = _cfg(moe__router_topk=9, parallel__ep=3)
  with pytest.raises(ConfigError) as e:
    validate(cfg, 8)
  assert len(e.value.problems) >= 2


def test_unknown_key_in_recipe_and_override():
  cfg = base_config()
  cfg.moe.num_expert = 8
  with pytest.raises(ConfigError, match=r"unknown key moe.num_expert .*did you mean moe.num_experts"):
    validate(cfg)
  with pytest.raises(ConfigError, match="unknown key moe.topk"):
    apply_overrides(base_config(), {"moe.topk": 2})


def test_cli_override_and_unknown_key(tmp_path, repo_root):
  """train.py takes dotted overrides; a misspelt one fails before anything compiles."""
  out = subprocess.run([sys.executable, "train.py", "--config", "configs/tiny_moe.py",
                        "--config.moe.num_experts=6", "--config.parallel.ep=4", "--workdir", str(tmp_path)],
                       cwd=repo_root, capture_output=True, text=True, timeout=120,
                       env={**__import__("os").environ, "JAX_NUM_CPU_DEVICES": "8"})
  assert out.returncode != 0
  assert "moe.num_experts=6 is not divisible by parallel.ep=4" in out.stderr
  assert "Traceback" not in out.stderr
  out = subprocess.run([sys.executable, "train.py", "--config", "configs/tiny_moe.py",
                        "--config.moe.num_expert=6", "--workdir", str(tmp_path)],
                       cwd=repo_root, capture_output=True, text=True, timeout=120)
  assert out.returncode != 0
  assert "unknown key moe.num_expert (did you mean moe.num_experts?)" in out.stderr
  assert "Traceback" not in out.stderr


def test_cli_none_override(tmp_path, repo_root):
  """`--config.a.b=None` sets a key whose type allows None (ml_collections' flag parser cannot) and
  refuses the others in one line."""
  def train(*flags):
    return subprocess.run([sys.executable, "train.py", "--config", "configs/tiny_moe.py", *flags, "--workdir",
                           str(tmp_path)], cwd=repo_root, capture_output=True, text=True, timeout=120,
                          env={**__import__("os").environ, "JAX_NUM_CPU_DEVICES": "8"})
  out = train("--config.moe.num_experts=None", "--config.parallel.ep=4")  # a dense model: ep has no experts
  assert out.returncode != 0 and "Traceback" not in out.stderr
  assert "parallel.ep=4 needs moe.num_experts to be set" in out.stderr
  out = train("--config.model.hidden_size=None")
  assert out.returncode != 0 and "Traceback" not in out.stderr
  assert "model.hidden_size cannot be None: give a value (its default is 64)" in out.stderr


def test_mixtral_recipe_has_real_hyperparameters_and_46_7b_params(repo_root):
  sys.path.insert(0, str(repo_root))
  from configs import mixtral_8x7b
  from moejax.config import model_spec
  from moejax.models.gpt import GPTModel
  cfg = mixtral_8x7b.get_config()
  m = cfg.model
  assert (m.num_layers, m.hidden_size, m.ffn_hidden_size, m.num_attention_heads, m.num_query_groups,
          m.vocab_size, m.rotary_base) == (32, 4096, 14336, 32, 8, 32000, 1e6)
  assert (cfg.moe.num_experts, cfg.moe.router_topk) == (8, 2)
  validate(cfg, 16)  # its layout: 2 nodes of 8
  model = GPTModel(model_spec(cfg))
  shapes = jax.eval_shape(model.init, jax.random.key(0), jax.ShapeDtypeStruct((1, 16), "int32"))
  n = sum(x.size for x in jax.tree.leaves(shapes["params"]))
  assert abs(n - 46.7e9) <= 0.1e9, n
  assert n == num_params(model_spec(cfg))


@pytest.mark.parametrize("overrides,message", [
    ({"train__recompute_modules": ("core_attn", "bogus")}, "['bogus'] not among"),
    ({"train__offload_modules": ("core_attn",), "train__recompute_granularity": "full"},
     "full recomputation keeps no activations to offload"),
    ({"train__recompute_granularity": "selective", "train__recompute_modules": ("mla_up_proj",)},
     "'mla_up_proj' but this model has no multi-latent attention"),
    ({"optim__exp_avg_dtype": "bf16"}, "optim.exp_avg_dtype='bf16' needs optim.use_precision_aware_optimizer=True"),
    ({"optim__optimizer_cpu_offload": 1.5}, "optim.optimizer_cpu_offload=1.5 must be a fraction in [0, 1]"),
])
def test_memory_keys_checked(overrides, message):
  with pytest.raises(ConfigError) as e:
    validate(_cfg(**overrides))
  assert message in str(e.value)
