"""Every family against HF transformers on CPU: a tiny random model (tests/peers/hf_models.py: the
tricky options of each family, sharded safetensors with an index, a DeepSeek-V3 MTP layer) is
converted, our fp32 logits equal HF's within 1e-4, converting back gives the same tensors bit for
bit and a config.json `from_pretrained` loads into a model with the same logits.

Two peer subprocesses in all (build, check), and one for models that start in moejax. The exact commands of the issue's external check
(`python -m moejax.convert hf-to-moejax ...`, `python -m moejax.tools.logits ...`, no --config)
run as subprocesses for one family (whose way back goes through the command line's parser
in-process); the others call the same functions in-process.
"""
import json
import os
import pathlib
import subprocess
import sys

import jax
import numpy as np
import pytest

from moejax.convert import hf_to_moejax, load_checkpoint_config, moejax_to_hf
from moejax.convert.__main__ import main as convert_main
from moejax.convert.hf_io import HFCheckpoint
from moejax.tools.logits import logits

REPO = pathlib.Path(__file__).resolve().parents[2]
PEER = REPO / ".peer-venv/bin/python"
SCRIPT = REPO / "tests/peers/hf_models.py"
FAMILIES = ["mixtral", "qwen2_moe", "qwen3_moe", "deepseek_v2", "deepseek_v3", "glm4_moe"]
CLI_FAMILY = "deepseek_v3"
pytestmark = pytest.mark.skipif(not PEER.exists(), reason="HF transformers peer venv missing: run bash .ci/peer_venv.sh")


def _peer(*args):
  r = subprocess.run([str(PEER), str(SCRIPT), *map(str, args)], capture_output=True, text=True, timeout=600,
                     env=dict(os.environ, PYTHONPATH=""))
  assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-4000:]
  return r.stdout


def _cli(*args):
  r = subprocess.run([sys.executable, *args], cwd=REPO, capture_output=True, text=True, timeout=600,
                     env=dict(os.environ, PYTHONPATH=str(REPO), JAX_PLATFORMS="cpu"))
  assert r.returncode == 0, r.stderr[-4000:]
  return r.stderr


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
  d = tmp_path_factory.mktemp("hf")
  _peer("build", d)
  return d


@pytest.fixture(scope="module")
def converted(hf_dir, tmp_path_factory):
  """{family: (moejax dir, our logits)}; CLI_FAMILY through the two command lines."""
  out = {}
  for family in FAMILIES:
    d = tmp_path_factory.mktemp(family)
    tokens = json.load(open(hf_dir / family / "tokens.json"))
    if family == CLI_FAMILY:
      _cli("-m", "moejax.convert", "hf-to-moejax", "--family", family, "--hf", hf_dir / family, "--out", d)
      _cli("-m", "moejax.tools.logits", "--params", d, "--tokens", ",".join(map(str, tokens)), "--out", d / "l.npy")
      out[family] = (d, np.load(d / "l.npy"))
    else:
      hf_to_moejax(family, str(hf_dir / family), str(d))
      out[family] = (d, logits(load_checkpoint_config(str(d)), str(d), tokens))
  return out


@pytest.mark.parametrize("family", FAMILIES)
def test_logits_equal_transformers(hf_dir, converted, family):
  want = np.load(hf_dir / family / "ref_logits.npy")
  got = converted[family][1]
  assert got.dtype == np.float32 and got.shape == want.shape == (20, 100)  # vocab 100, padded to 128 inside
  np.testing.assert_allclose(got, want, rtol=0, atol=1e-4)


def test_round_trip_is_bitwise_and_loads_in_transformers(hf_dir, converted):
  for family in FAMILIES:
    export = hf_dir / f"{family}_export"
    if family == CLI_FAMILY:  # the command line's own parser, in-process
      convert_main(["moejax-to-hf", "--params", str(converted[family][0]), "--out", str(export)])
    else:
      moejax_to_hf(str(converted[family][0]), str(export))
    a, b = HFCheckpoint(str(hf_dir / family)), HFCheckpoint(str(export))
    assert sorted(a.files) == sorted(b.files), family
    for name in a.files:
      x, y = a.get(name), b.get(name)
      assert x.dtype == y.dtype and x.shape == y.shape and x.tobytes() == y.tobytes(), (family, name)
  if CLI_FAMILY == "deepseek_v3":  # the MTP layer went through moejax and back
    assert "model.layers.3.eh_proj.weight" in HFCheckpoint(str(hf_dir / "deepseek_v3_export")).files
  out = _peer("check", hf_dir)
  assert all(f"{family} ok" in out for family in FAMILIES), out


def test_per_layer_params_convert_both_ways(hf_dir, tmp_path):
  """hf-to-moejax --no-scan-layers: DeepSeek-V3 (dense and MoE layers, expert biases, an MTP layer)
  as decoder/layer_k params gives HF's logits and converts back bit for bit."""
  family = "deepseek_v3"
  convert_main(["hf-to-moejax", "--family", family, "--hf", str(hf_dir / family), "--out", str(tmp_path / "m"),
                "--no-scan-layers"])
  cfg = load_checkpoint_config(str(tmp_path / "m"))
  assert cfg.model.scan_layers is False
  tokens = json.load(open(hf_dir / family / "tokens.json"))
  np.testing.assert_allclose(logits(cfg, str(tmp_path / "m"), tokens), np.load(hf_dir / family / "ref_logits.npy"),
                             rtol=0, atol=1e-4)
  moejax_to_hf(str(tmp_path / "m"), str(tmp_path / "hf"))
  a, b = HFCheckpoint(str(hf_dir / family)), HFCheckpoint(str(tmp_path / "hf"))
  assert sorted(a.files) == sorted(b.files)
  assert all(a.get(n).tobytes() == b.get(n).tobytes() for n in a.files)


def test_a_training_checkpoint_step_exports_too(hf_dir, converted, tmp_path):
  """RUN/checkpoints/STEP/state (params and moe_state inside a train state) is read like DIR/params."""
  import jax
  import orbax.checkpoint as ocp
  from flax import linen as nn

  from moejax.checkpoint.manager import load_weights
  from moejax.config import model_spec
  from moejax.models.gpt import GPTModel
  family = "deepseek_v3"
  d = str(converted[family][0])
  cfg = load_checkpoint_config(d)
  abstract = jax.eval_shape(GPTModel(model_spec(cfg)).init, jax.random.key(0), jax.ShapeDtypeStruct((1, 8), "int32"))
  rep = jax.sharding.make_single_device_sharding(jax.devices()[0])
  wanted = {"params": nn.unbox(abstract["params"]), "moe_state": abstract["moe_state"]}
  loaded = load_weights(d, wanted, jax.tree.map(lambda _: rep, wanted))
  params, state = loaded["params"], loaded["moe_state"]
  with ocp.StandardCheckpointer() as ckpt:
    ckpt.save(tmp_path / "step" / "state", {"step": 7, "params": params, "moe_state": state})
  moejax_to_hf(str(tmp_path / "step"), str(tmp_path / "hf"), family, cfg)
  a, b = HFCheckpoint(str(hf_dir / family)), HFCheckpoint(str(tmp_path / "hf"))
  assert sorted(a.files) == sorted(b.files)
  assert all(a.get(n).tobytes() == b.get(n).tobytes() for n in a.files)


@pytest.mark.slow
def test_training_starts_from_a_converted_checkpoint_on_another_layout(converted, tmp_path):
  """train.py with only `--config.checkpoint.load_params=DIR` (its config from DIR) on 2 devices
  with ep=2. Fast coverage of the parts: tests/test_cli.py (the config from DIR),
  tests/checkpoint/test_params.py (weights into another layout), tests/checkpoint/test_streaming.py
  (the router state beside them)."""
  d = converted["deepseek_v3"][0]
  r = subprocess.run([sys.executable, "train.py", f"--config.checkpoint.load_params={d}", "--workdir", str(tmp_path),
                      "--config.parallel.ep=2", "--config.data.source=synthetic", "--config.train.train_iters=1",
                      "--config.train.seq_length=16", "--config.train.global_batch_size=2",
                      "--config.model.dtype=float32", "--config.logging.tensorboard=False"],
                     cwd=REPO, capture_output=True, text=True, timeout=900,
                     env=dict(os.environ, PYTHONPATH=str(REPO), JAX_PLATFORMS="cpu", JAX_NUM_CPU_DEVICES="2"))
  assert r.returncode == 0, r.stderr[-3000:]
  assert f"loaded the weights of {d}" in r.stderr and "2 device(s): tp=1 cp=1 pp=1 ep=2" in r.stderr
  row = json.loads(open(tmp_path / "metrics.jsonl").readline())
  assert np.isfinite(row["lm_loss"]) and row["mtp_loss"] > 0


@pytest.mark.slow
def test_other_corners_of_each_family(tmp_path):
  """VARIANTS of tests/peers/hf_models.py (top-1, tied embeddings, no q_lora in V3, rope_interleave
  False, attention_bias, a zero-width shared expert, ...): the same three checks. The default
  configs above cover every family."""
  _peer("build-variants", tmp_path)
  for family in FAMILIES:
    d = tmp_path / f"{family}_moejax"
    hf_to_moejax(family, str(tmp_path / family), str(d))
    got = logits(load_checkpoint_config(str(d)), str(d), json.load(open(tmp_path / family / "tokens.json")))
    np.testing.assert_allclose(got, np.load(tmp_path / family / "ref_logits.npy"), rtol=0, atol=1e-4, err_msg=family)
    moejax_to_hf(str(d), str(tmp_path / f"{family}_export"))
    a, b = HFCheckpoint(str(tmp_path / family)), HFCheckpoint(str(tmp_path / f"{family}_export"))
    assert sorted(a.files) == sorted(b.files), family
    assert all(a.get(n).dtype == b.get(n).dtype and a.get(n).tobytes() == b.get(n).tobytes() for n in a.files)
  assert _peer("check", tmp_path).count(" ok") == len(FAMILIES)


def test_models_trained_in_moejax_export_to_transformers(tmp_path):
  """The round trips above start from HF's configs; a model made in moejax may differ in ways they
  do not: the tiny recipe's experts (128) are narrower than its dense FFN (256), and mixtral's
  config.json took intermediate_size from the dense width, so transformers refused the export
  (size mismatch). Mixtral (all MoE), Qwen3-MoE with a dense first layer (mlp_only_layers, of
  the dense width) and GLM-4.5 (DeepSeek-V3's router, shared expert, half-rotary heads, QKV biases):
  random weights saved by moejax, exported, loaded by `from_pretrained`, give our logits."""
  from flax import linen as nn

  from moejax.checkpoint.manager import save_params
  from moejax.config import model_spec
  from moejax.config.recipes import load_recipe
  from moejax.models.gpt import GPTModel
  tokens = [3, 1, 4, 1, 5, 9, 2, 6, 5, 3, 5, 8]
  glm = dict(layer_freq=(0, 1, 1, 1), router_score_function="sigmoid", router_enable_expert_bias=True,
             router_num_groups=4, router_group_topk=2, router_group_scoring="sum_top2", router_topk_scaling_factor=2.5,
             shared_expert_intermediate_size=128)
  cases = {"mixtral": {}, "qwen3_moe": dict(layer_freq=(0, 1, 1, 1)), "glm4_moe": glm}
  for family, moe in cases.items():
    cfg = load_recipe(str(REPO / "configs" / "tiny_moe.py"))
    cfg.model.update(init_method_std=0.1, qk_layernorm=family == "qwen3_moe")
    if family == "glm4_moe":
      cfg.model.update(rotary_percent=0.5, add_qkv_bias=True, mtp_num_layers=0)
    cfg.moe.update(aux_loss_coeff=0.0, z_loss_coeff=0.0, **moe)
    spec = model_spec(cfg)
    assert spec.moe_ffn_hidden_size != spec.ffn_hidden_size
    variables = jax.jit(GPTModel(spec).init)(jax.random.key(7), np.zeros((1, len(tokens)), np.int32))
    save_params(str(tmp_path / family), nn.unbox(variables["params"]))
    moejax_to_hf(str(tmp_path / family), str(tmp_path / f"{family}_hf"), family, cfg)
    json.dump(tokens, open(tmp_path / f"{family}_hf" / "tokens.json", "w"))
    _peer("logits", tmp_path / f"{family}_hf")
    np.testing.assert_allclose(np.load(tmp_path / f"{family}_hf" / "hf_logits.npy"),
                               logits(cfg, str(tmp_path / family), tokens), rtol=0, atol=1e-4, err_msg=family)
