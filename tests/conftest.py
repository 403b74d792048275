"""Test setup: 8 emulated CPU devices (set before JAX starts) and shared helpers."""
import os

os.environ.setdefault("JAX_NUM_CPU_DEVICES", "8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
flags = os.environ.get("XLA_FLAGS", "")
# LLVM at -O0 for the CPU executables: compiling dominates these small tests, and -O0 takes about a
# third off the suite (numbers are the same IEEE operations; both sides of every comparison use it).
if "xla_backend_optimization_level" not in flags:
  flags += " --xla_backend_optimization_level=0"
os.environ["XLA_FLAGS"] = flags.strip()
# The subprocesses the tests start (train.py, a notebook kernel) inherit both: they set their own
# JAX_NUM_CPU_DEVICES and keep XLA_FLAGS, so they compile at -O0 too (a quarter off a train.py run).

# One persistent XLA cache per test session, shared with the subprocesses it starts (train.py runs):
# a config compiled twice (a run and its resume, a layout run again) compiles once.
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
  import atexit
  import shutil
  import tempfile
  os.environ["JAX_COMPILATION_CACHE_DIR"] = tempfile.mkdtemp(prefix="moejax-xla-cache-")
  os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "1")
  atexit.register(shutil.rmtree, os.environ["JAX_COMPILATION_CACHE_DIR"], True)

import pathlib  # noqa: E402

import pytest  # noqa: E402

REPO = pathlib.Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def repo_root() -> pathlib.Path:
  return REPO


def _small_moe_config(**moe):
  """A 2-layer, 8-expert fp32 model on synthetic tokens (train/state/replay tests)."""
  from moejax.config import base_config
  c = base_config()
  c.model.update(num_layers=2, hidden_size=32, ffn_hidden_size=64, num_attention_heads=4, num_query_groups=2,
                 vocab_size=257, dtype="float32")
  c.moe.update(num_experts=8, router_topk=2, ffn_hidden_size=32, **moe)
  c.train.update(seq_length=32, micro_batch_size=4, global_batch_size=8, train_iters=2)
  c.data.source = "synthetic"
  return c


def _single_device_setup(cfg):
  """(layout, rules, model, optimizer, schedule, fresh state, abstract state, shardings) on one device."""
  import jax
  from flax import linen as nn

  from moejax.config import model_spec
  from moejax.models.gpt import GPTModel
  from moejax.parallel.mesh import make_mesh
  from moejax.parallel.sharding import logical_axis_rules
  from moejax.train.optim import lr_schedule, make_optimizer
  from moejax.train.state import init_state, state_shardings
  from moejax.train.validate import validate
  validate(cfg, 1)
  layout = make_mesh(cfg, jax.devices()[:1])
  rules = logical_axis_rules(layout, False)
  model = GPTModel(model_spec(cfg))
  opt, sched = make_optimizer(cfg), lr_schedule(cfg)
  with nn.logical_axis_rules(rules):
    abstract, shardings = state_shardings(model, opt, cfg.train.seq_length, layout.mesh, rules)
  with jax.set_mesh(layout.mesh), nn.logical_axis_rules(rules):
    state = init_state(model, opt, cfg.train.seq_length, 0, shardings)
  return layout, rules, model, opt, sched, state, abstract, shardings


@pytest.fixture(scope="session")
def small_moe_config():
  return _small_moe_config


@pytest.fixture(scope="session")
def single_device_setup():
  return _single_device_setup


@pytest.fixture(scope="session")
def small_moe_tokens():
  """Two micro-batches of 4 rows of 33 tokens for `small_moe_config`."""
  import jax
  return jax.random.randint(jax.random.key(7), (2, 4, 33), 0, 257)
