"""Megatron runs → recipes: the Mixtral 8x7B script of Megatron-Core's MoE README, the DeepSeek-V3 launch
script of Megatron-LM's examples and Megatron-MoE-ModelZoo's Qwen3-30B-A3B config (tests/tools/fixtures/,
sources in their headers) become recipes that build and validate, with the script's values; every argument
sets a key or is listed with its reason; README's flag table is the code's table."""
import re

import pytest

from moejax.config import model_spec
from moejax.config.recipes import load_recipe
from moejax.data.batch_schedule import BatchSchedule
from moejax.tools.from_megatron import run
from moejax.tools.megatron_flags import FLAGS, UNMAPPED, convert, layer_pattern, split_arguments
from moejax.tools.megatron_yaml import yaml_arguments
from moejax.tools.shell_script import read_launch
from moejax.train.validate import validate


def _convert_script(repo_root, tmp_path, name):
  script = repo_root / "tests" / "tools" / "fixtures" / f"{name}_megatron.sh"
  out = tmp_path / f"{name}.py"
  assert run([str(script), "--out", str(out)]) == 0
  argv = read_launch(script.read_text()).arguments
  return load_recipe(str(out)), argv, out.read_text()


def _script_values_kept(cfg, argv):
  """Every argument of a plain kind (int, float, str, switch) has its value in the recipe;
  every argument sets a key or is listed in the recipe's docstring."""
  conv = convert(argv)
  listed = " ".join(given for given, _ in conv.notes)
  for flag, values in split_arguments(argv):
    if flag not in FLAGS:
      assert flag in listed, f"{flag} dropped silently"
      continue
    key, kind = FLAGS[flag]
    section, name = key.split(".")
    if any(given.startswith(flag) for given, _ in conv.notes + _later_notes(cfg, argv)):
      continue  # changed, with its reason in the docstring
    if kind in (int, float) and not any("$" in v for v in values):
      assert cfg[section][name] == kind(values[0]), flag
    elif kind is str and "$" not in values[0] and "your_own" not in values[0]:
      assert cfg[section][name] == values[0], flag
    elif kind is True or kind is False:
      assert cfg[section][name] is kind, flag


def _later_notes(cfg, argv):
  """Notes the command adds after the conversion (placeholders: data path, evaluation)."""
  return [("--eval-interval", "")] if cfg.data.source == "synthetic" and "--data-path" in argv else []


def test_mixtral_script(repo_root, tmp_path):
  cfg, argv, text = _convert_script(repo_root, tmp_path, "mixtral_8x7b")
  spec = model_spec(cfg)
  validate(cfg)
  validate(cfg, 32)  # the script's WORLD_SIZE: 4 nodes x 8 GPUs
  _script_values_kept(cfg, argv)
  assert (spec.num_layers, spec.hidden_size, spec.ffn_hidden_size, spec.attention.num_query_groups) == (32, 4096,
                                                                                                       14336, 8)
  assert (spec.moe.num_experts, spec.moe.router.router_topk, spec.moe.router.aux_loss_coeff) == (8, 2, 1e-2)
  assert spec.moe.dispatch.token_dispatcher_type == "alltoall" and spec.dtype == "bfloat16"
  assert spec.untie_embeddings_and_output_weights and spec.init_method_std == 0.01
  p, t, o = cfg.parallel, cfg.train, cfg.optim
  assert (p.tp, p.pp, p.ep, p.vpp, p.sequence_parallel) == (1, 4, 8, None, True)  # 32/4 layers / 8 per stage = 1
  assert (t.micro_batch_size, t.global_batch_size, t.seq_length, t.train_iters) == (1, 128, 4096, 500000)
  assert (o.lr, o.min_lr, o.lr_decay_iters, o.lr_warmup_iters, o.use_distributed_optimizer) == (1e-4, 1e-5, 320000,
                                                                                                500, True)
  assert o.adam_beta2 == 0.999  # Megatron's default, not moejax's
  assert "--overlap-grad-reduce: XLA schedules" in text and "--tokenizer-model $2" in text
  assert cfg.data.source == "synthetic" and "--data-path $3: a placeholder" in text
  assert "--eval-interval 1000: evaluation reads the validation split" in text


def test_deepseek_v3_script(repo_root, tmp_path):
  """NVIDIA's own launch script as it is: its arguments come from an array grown in `if` blocks and
  run inside a string under srun in an sbatch here-document."""
  cfg, argv, text = _convert_script(repo_root, tmp_path, "deepseek_v3")
  spec = model_spec(cfg)
  validate(cfg)
  validate(cfg, 8)
  _script_values_kept(cfg, argv)
  assert spec.moe_pattern == (False,) * 3 + (True,) * 58
  mla = spec.attention.mla
  assert mla.multi_latent_attention and (mla.q_lora_rank, mla.kv_lora_rank, mla.qk_pos_emb_head_dim) == (1536, 512, 64)
  assert spec.attention.rotary_scaling.rope_type == "yarn"  # MLA's default in Megatron
  r = spec.moe.router
  assert (r.router_score_function, r.router_enable_expert_bias, r.router_topk_scaling_factor) == ("sigmoid", True, 2.5)
  assert (r.router_num_groups, r.router_group_topk, spec.mtp_num_layers) == (8, 4, 1)
  assert tuple(cfg.train.recompute_modules) == ("mlp", "moe", "mla_up_proj", "layernorm")
  assert cfg.train.train_samples == 585937500 and cfg.train.train_iters is None  # sample-based, as the script
  assert BatchSchedule.of(cfg).train_iters == 585937500 // 2048 and not cfg.train.check_for_nan_in_loss_and_grad
  assert "--moe-token-dispatcher-type flex: moe.token_dispatcher_type='alltoall'" in text
  assert "(no --vocab-size): Megatron takes the vocabulary size from the tokenizer" in text
  # USE_MEGATRON_FSDP=1 and WANDB=1 by default add their arguments, PROFILE=0 does not
  assert cfg.parallel.fsdp and "--profile" not in argv and "--wandb-project your_own_wandb_project: moejax logs" in text
  assert "unknown to moejax" not in text and "(script)" not in text


def _readme_table(repo_root):
  """(flags, keys) of each row of README's "Megatron flags → config keys" table that names a flag."""
  text = (repo_root / "README.md").read_text()
  table = text.split("## Megatron flags → config keys")[1].split("\n## ")[0]
  rows = []
  for line in table.splitlines()[3:]:
    cells = line.split("|")
    if len(cells) < 3:
      continue
    flags = re.findall(r"`(--[a-z0-9-]+)", cells[1])
    keys = re.findall(r"\b((?:model|moe|parallel|train|optim|data|checkpoint|logging)\.\w+)",
                      re.sub(r"\([^)]*\)", "", cells[2]))
    if flags:
      rows.append((flags, keys))
  return rows


def test_readme_table_is_the_code_table(repo_root):
  rows = _readme_table(repo_root)
  in_readme = set()
  for flags, keys in rows:
    for i, flag in enumerate(flags):
      in_readme.add(flag)
      assert flag in FLAGS, f"README maps {flag}, the converter does not"
      want = keys[i] if len(keys) == len(flags) else keys[0]
      assert FLAGS[flag][0] == want, f"README: {flag} -> {want}; code: {FLAGS[flag][0]}"
  assert not set(FLAGS) - in_readme, f"missing from README's table: {sorted(set(FLAGS) - in_readme)}"


def test_every_flag_of_the_moe_guide_is_known(repo_root):
  """Each flag of Megatron-Core's MoE README maps to a key or has its reason."""
  path = repo_root / "tests" / "tools" / "fixtures" / "megatron_moe_readme_flags.txt"
  flags = [line.strip() for line in path.read_text().splitlines() if line.startswith("--")]
  assert len(flags) > 100
  assert [f for f in flags if f not in FLAGS and f not in UNMAPPED] == []
  conv = convert(["--moe-layer-recompute", "--fp8-format", "e4m3"])
  assert conv.values["train.recompute_modules"] == ("moe",) and conv.values["train.recompute_granularity"] == "selective"
  assert ("--fp8-format e4m3", UNMAPPED["--fp8-format"]) in conv.notes


def test_argument_list_and_unknown_arguments(tmp_path, capsys):
  out = tmp_path / "r.py"
  assert run(["--out", str(out), "--", "--num-layers", "4", "--moe-layer-freq", "([1]*1+[0]*1)*2",
              "--num-experts", "4", "--frobnicate", "3", "--lr=2e-4"]) == 0
  cfg = load_recipe(str(out))
  assert cfg.model.num_layers == 4 and tuple(cfg.moe.layer_freq) == (1, 0, 1, 0) and cfg.optim.lr == 2e-4
  assert "not mapped: --frobnicate 3: unknown to moejax" in capsys.readouterr().err
  assert "--frobnicate 3: unknown to moejax" in out.read_text()


def test_logging_switches(tmp_path, capsys):
  """--log-params-norm and --log-num-zeros-in-grad set their logging keys (and are not listed as unmapped)."""
  out = tmp_path / "r.py"
  assert run(["--out", str(out), "--", "--num-layers", "2", "--log-params-norm", "--log-num-zeros-in-grad"]) == 0
  cfg = load_recipe(str(out))
  assert cfg.logging.log_params_norm is True and cfg.logging.log_num_zeros_in_grad is True
  assert "--log-" not in capsys.readouterr().err and "--log-" not in out.read_text()


def test_layer_pattern_is_not_eval():
  assert layer_pattern("[0]*3+[1]*2") == (0, 0, 0, 1, 1) and layer_pattern("2") == 2
  with pytest.raises(ValueError, match="only integers"):
    layer_pattern("__import__('os').getcwd()")


def test_missing_script_or_no_arguments_is_one_line(capsys):
  for argv, said in ((["/nonexistent/run.sh"], "/nonexistent/run.sh: no such launch script"), ([], "nothing to convert")):
    with pytest.raises(SystemExit) as e:
      run(argv)
    assert e.value.code == 2 and said in capsys.readouterr().err


def test_fsdp_strategy_offload_fraction_per_token_loss_and_partial_rotary():
  """Megatron's FSDP is ZeRO-3 only with its default strategy; the offload fraction counts only with the
  offload switch, in either order; per-token loss and partial rotary set their keys."""
  fsdp = lambda *a: convert(list(a)).values.get("parallel.fsdp")  # noqa: E731
  assert fsdp("--use-megatron-fsdp") is True
  assert fsdp("--use-megatron-fsdp", "--data-parallel-sharding-strategy", "optim_grads_params") is True
  assert fsdp("--data-parallel-sharding-strategy", "optim_grads", "--use-megatron-fsdp") is False
  assert fsdp("--use-torch-fsdp2", "--data-parallel-sharding-strategy", "no_shard") is False
  offload = lambda *a: convert(list(a)).values.get("optim.optimizer_cpu_offload")  # noqa: E731
  assert offload("--optimizer-cpu-offload") == 1.0 and offload("--optimizer-offload-fraction", "0.5") == 0.0
  assert offload("--optimizer-offload-fraction", "0.5", "--optimizer-cpu-offload") == 0.5
  assert offload("--optimizer-cpu-offload", "--optimizer-offload-fraction", "0.25") == 0.25
  assert convert(["--calculate-per-token-loss"]).values["train.calculate_per_token_loss"] is True
  assert convert(["--rotary-percent", "0.5"]).values["model.rotary_percent"] == 0.5


# Megatron-MoE-ModelZoo's runtime table (runtime_configs/benchmarking/runtime.conf) for Qwen3-30B-A3B, as its
# sbatch script exports them before filling the config, and best_practice/qwen3/run_30b.sh's first run's extra flag
QWEN3_ZOO = dict(TP="1", PP="1", EP="8", CP="1", VPP="1", MBS="1", GBS="256", SEQ_LEN="4096",
                 MOE_TOKEN_DISPATCHER="alltoall", MOE_GROUPED_GEMM="true")


def test_modelzoo_qwen3_config(repo_root, tmp_path):
  path = repo_root / "tests" / "tools" / "fixtures" / "qwen3_30b_a3b_modelzoo.yaml"
  out = tmp_path / "qwen3.py"
  sets = [f"--set={k}={v}" for k, v in QWEN3_ZOO.items()]
  assert run([str(path), *sets, "--out", str(out), "--", "--moe-router-force-load-balancing"]) == 0
  cfg, text = load_recipe(str(out)), out.read_text()
  argv = yaml_arguments(path.read_text(), QWEN3_ZOO) + ["--moe-router-force-load-balancing"]
  validate(cfg)
  validate(cfg, 32)  # the table's 4 nodes x 8 GPUs
  _script_values_kept(cfg, argv)
  spec = model_spec(cfg)
  assert (spec.num_layers, spec.hidden_size, spec.attention.num_query_groups, spec.attention.kv_channels) == (48, 2048,
                                                                                                            4, 128)
  assert spec.attention.qk_layernorm and spec.norm_epsilon == 1e-6 and spec.make_vocab_size_divisible_by == 1187
  r = spec.moe.router
  assert (spec.moe.num_experts, spec.moe_ffn_hidden_size, r.router_topk, r.aux_loss_coeff) == (128, 768, 8, 1e-3)
  assert r.router_force_load_balancing and not r.router_pre_softmax  # `--moe-router-pre-softmax: false` left out
  assert (cfg.parallel.ep, cfg.train.global_batch_size, cfg.train.train_samples) == (8, 256, 268554688)
  assert BatchSchedule.of(cfg).train_iters == 268554688 // 256
  assert cfg.optim.lr == 1.2e-4 and cfg.logging.log_params_norm
  assert "--moe-router-pre-softmax" not in argv and "--wandb-exp-name Qwen3-30B-A3B-TP1PP1EP8CP1VPP1-MBS1GBS256-${COMMENT}" \
      in text  # a variable not given stays as written
  assert "unknown to moejax" not in text


def test_modelzoo_config_reading_and_script_variables(repo_root, tmp_path, capsys):
  text = "ENV_VARS:\n  A: 1\nMODEL_ARGS:\n  --num-layers: ${L}\n  --bf16: true\n  --swiglu: false\n" \
         "  --recompute-modules: moe_act layernorm\n  --lr: 1.2e-4\n  --data-path: ${DATA}\n"
  assert yaml_arguments(text, {"L": "4"}) == ["--num-layers", "4", "--bf16", "--recompute-modules", "moe_act",
                                              "layernorm", "--lr", "0.00012", "--data-path", "${DATA}"]
  with pytest.raises(ValueError, match="no MODEL_ARGS mapping"):
    yaml_arguments("ENV_VARS: {}\n", {})
  # --set: a script's ${NAME:-default} takes the given value, as if exported before it runs
  script = repo_root / "tests" / "tools" / "fixtures" / "deepseek_v3_megatron.sh"
  out = tmp_path / "ds.py"
  assert run([str(script), "--set", "EP=16", "--set", "USE_MEGATRON_FSDP=0", "--out", str(out)]) == 0
  cfg = load_recipe(str(out))
  assert cfg.parallel.ep == 16 and not cfg.parallel.fsdp
  with pytest.raises(SystemExit) as e:
    run([str(script), "--set", "EP"])
  assert e.value.code == 2 and "--set EP: give NAME=VALUE" in capsys.readouterr().err


def test_megatron_defaults_moejax_lacks_are_named(repo_root):
  """A run that leaves GeLU MLPs, LayerNorm, learned positions or linear biases at Megatron's defaults
  is not moejax's model: each is named; the fixtures' runs set them all. Megatron's default dropout (0.1
  hidden and attention) is moejax's dropout at 0.1."""
  missing = ("(no --swiglu)", "(no --normalization)", "(no --position-embedding-type)", "(no --disable-bias-linear)")
  out = convert(["--num-layers", "2"])
  notes = dict(out.notes)
  assert all(notes[m].startswith("NOT THE SAME RUN") for m in missing)
  assert (out.values["model.hidden_dropout"], out.values["model.attention_dropout"]) == (0.1, 0.1)
  assert convert(["--hidden-dropout", "0.0", "--attention-dropout", "0.05"]).values["model.attention_dropout"] == 0.05
  for name in ("mixtral_8x7b", "deepseek_v3"):
    argv = read_launch((repo_root / "tests" / "tools" / "fixtures" / f"{name}_megatron.sh").read_text()).arguments
    assert not set(missing) & set(dict(convert(argv).notes)), name


def test_sizes_megatron_derives_when_the_run_gives_none():
  """Megatron's dense FFN width from the hidden size (4x, 2/3 of it rounded down to 64 with --swiglu), and
  multi-head attention unless --group-query-attention (its --num-query-groups is read only then)."""
  v = convert(["--hidden-size", "256", "--num-attention-heads", "16", "--swiglu"]).values
  assert (v["model.ffn_hidden_size"], v["model.num_query_groups"]) == (640, 16)
  v = convert(["--hidden-size", "256", "--num-attention-heads", "16", "--num-query-groups", "4"]).values
  assert (v["model.ffn_hidden_size"], v["model.num_query_groups"]) == (1024, 16)
  v = convert(["--hidden-size", "256", "--num-attention-heads", "16", "--group-query-attention",
               "--num-query-groups", "4", "--ffn-hidden-size", "96"]).values
  assert (v["model.ffn_hidden_size"], v["model.num_query_groups"]) == (96, 4)


def test_muon_arguments(tmp_path):
  """--optimizer muon and its --muon-* arguments set their keys; the recipe validates; an optimizer
  moejax lacks is refused naming the key."""
  out = tmp_path / "r.py"
  assert run(["--out", str(out), "--", "--num-layers", "2", "--optimizer", "muon", "--muon-momentum", "0.9",
              "--muon-use-nesterov", "--muon-num-ns-steps", "7", "--muon-scale-mode", "shape_scaling",
              "--muon-fp32-matmul-prec", "highest", "--muon-extra-scale-factor", "0.2", "--muon-no-split-qkv",
              "--muon-tp-mode", "duplicated", "--muon-coefficient-type", "polar_express"]) == 0
  o = load_recipe(str(out)).optim
  assert (o.optimizer, o.muon_momentum, o.muon_use_nesterov, o.muon_num_ns_steps, o.muon_scale_mode,
          o.muon_fp32_matmul_prec, o.muon_extra_scale_factor, o.muon_split_qkv, o.muon_tp_mode,
          o.muon_coefficient_type) == ("muon", 0.9, True, 7, "shape_scaling", "highest", 0.2, False, "duplicated",
                                       "polar_express")
  assert "--muon" not in out.read_text() and "--optimizer" not in out.read_text()  # none left unmapped
  assert run(["--out", str(tmp_path / "s.py"), "--", "--num-layers", "2", "--optimizer", "sgd"]) == 1


def test_glm45_arguments_give_the_zoo_model(repo_root, tmp_path):
  """GLM-4.5's Megatron model arguments (as RL frameworks on Megatron launch it: --rotary-percent 0.5,
  --add-qkv-bias, QK-norm, sigmoid routing with expert bias, routed scaling 2.5) give the model of
  configs/glm4_5.py."""
  args = ("--disable-bias-linear --qk-layernorm --group-query-attention --num-attention-heads 96 --num-query-groups 8 "
          "--kv-channels 128 --num-layers 92 --hidden-size 5120 --ffn-hidden-size 12288 --add-qkv-bias "
          "--normalization RMSNorm --position-embedding-type rope --rotary-percent 0.5 --swiglu "
          "--untie-embeddings-and-output-weights --vocab-size 151552 --rotary-base 1000000 --moe-ffn-hidden-size 1536 "
          "--moe-shared-expert-intermediate-size 1536 --moe-router-score-function sigmoid --moe-router-enable-expert-bias "
          "--moe-router-topk 8 --moe-router-topk-scaling-factor 2.5 --moe-layer-freq [0]*3+[1]*89 --num-experts 160 "
          "--attention-dropout 0 --hidden-dropout 0 --bf16").split()
  out = tmp_path / "glm.py"
  assert run(["--out", str(out), "--", *args]) == 0
  ours, zoo = model_spec(load_recipe(str(out))), model_spec(load_recipe(str(repo_root / "configs" / "glm4_5.py")))
  assert ours.attention == zoo.attention and ours.attention.rotary_percent == 0.5
  assert (ours.moe.num_experts, ours.moe.layer_freq, ours.moe_ffn_hidden_size) == (
      zoo.moe.num_experts, zoo.moe.layer_freq, zoo.moe_ffn_hidden_size)
  assert "NOT THE SAME RUN" not in out.read_text()


def test_qk_clip_arguments():
  v = convert(["--qk-clip", "--qk-clip-alpha", "0.4", "--qk-clip-threshold", "50", "--log-max-attention-logit"]).values
  assert (v["model.qk_clip"], v["model.qk_clip_alpha"], v["model.qk_clip_threshold"],
          v["model.log_max_attention_logit"]) == (True, 0.4, 50.0, True)


def test_sample_based_training_and_batch_ramp_up(tmp_path):
  """--train-samples, --lr-*-samples and --rampup-batch-size become the sample-based keys as given (no
  rounding to whole batches) and the recipe validates; --step-batch-size-schedule too."""
  out = tmp_path / "r.py"
  assert run(["--out", str(out), "--", "--num-layers", "2", "--global-batch-size", "64", "--micro-batch-size", "1",
              "--train-samples", "100000", "--lr-warmup-samples", "1000", "--lr-decay-samples", "90000",
              "--lr-wsd-decay-samples", "5000", "--lr-decay-style", "WSD", "--rampup-batch-size", "16", "16",
              "20000"]) == 0
  cfg = load_recipe(str(out))
  validate(cfg, 8)
  t, o = cfg.train, cfg.optim
  assert (t.train_samples, t.train_iters, tuple(t.rampup_batch_size)) == (100000, None, (16, 16, 20000))
  assert (o.lr_warmup_samples, o.lr_decay_samples, o.lr_wsd_decay_samples) == (1000, 90000, 5000)
  assert BatchSchedule.of(cfg).sizes() == [16, 32, 48, 64]
  assert convert(["--step-batch-size-schedule", "0:768 250B:1536 500B:3072"]).values[
      "train.step_batch_size_schedule"] == "0:768 250B:1536 500B:3072"
