"""Pipeline layout (Megatron's grammar and splits, checked against megatron-core) and the tick schedule."""
import json
import os
import subprocess
from pathlib import Path

import pytest

from moejax.config import base_config
from moejax.parallel.mesh import problems
from moejax.parallel.pipeline import layout_problems, make_schedule, parse_layout, pipeline_layout

PEER_PY = Path(__file__).resolve().parents[2] / ".peer-venv" / "bin" / "python"
LAYOUTS = ["Et*3|(tt|)*29,m|L", "Ettt|tt|t|tL", "E|t*4|(t|)*2,tL"]
SPLITS = [(8, 2, None, None, None), (8, 2, 2, None, None), (10, 4, None, 1, 3), (12, 4, 2, 4, 2),
          (14, 4, 2, 4, 2), (8, 2, 3, None, None), (7, 2, None, 3, None), (16, 4, 2, None, 2)]
PEER = """
import json, sys, torch
from megatron.core.transformer.pipeline_parallel_layer_layout import PipelineParallelLayerLayout
from megatron.core.transformer.transformer_config import TransformerConfig
from megatron.core.transformer.transformer_block import get_num_layers_to_build
from megatron.core.transformer.transformer_layer import get_transformer_layer_offset
layouts, splits = json.loads(sys.argv[1]), json.loads(sys.argv[2])
char = {"embedding": "E", "decoder": "t", "mtp": "m", "loss": "L"}
out = {"layouts": [["".join(char[x.name] for x in st) for st in PipelineParallelLayerLayout.parse_str_to_list(s)]
                   for s in layouts], "splits": []}
for L, pp, vpp, first, last in splits:
  try:
    cfg = TransformerConfig(num_layers=L, hidden_size=8, num_attention_heads=1, pipeline_model_parallel_size=pp,
                            virtual_pipeline_model_parallel_size=vpp, num_layers_in_first_pipeline_stage=first,
                            num_layers_in_last_pipeline_stage=last, pipeline_dtype=torch.float32)
    stages = [[get_transformer_layer_offset(cfg, vp_stage=c if vpp else None, pp_rank=r),
               get_num_layers_to_build(cfg, vp_stage=c if vpp else None, pp_rank=r)]
              for c in range(vpp or 1) for r in range(pp)]
  except (ValueError, AssertionError):
    stages = None
  out["splits"].append(stages)
print(json.dumps(out))
"""


def _cfg(num_layers, pp, vpp=None, first=None, last=None, layout=None, mtp=0, fsdp=False, offload=(),
         scan_layers=True):
  c = base_config()
  c.model.update(num_layers=num_layers, mtp_num_layers=mtp, scan_layers=scan_layers)
  c.parallel.fsdp = fsdp
  c.train.offload_modules = offload
  c.parallel.update(pp=pp, vpp=vpp, decoder_first_pipeline_num_layers=first, decoder_last_pipeline_num_layers=last,
                    pipeline_layout=layout)
  return c


def test_layouts_and_splits_match_megatron_core():
  """Layout strings parse as megatron-core's parser does; the even and first/last splits give
  every virtual stage megatron-core's layer offset and count, and the same splits are refused."""
  if not PEER_PY.exists():
    pytest.skip("peer venv missing: build it with `bash .ci/peer_venv.sh` (torch + megatron-core)")
  proc = subprocess.run([str(PEER_PY), "-c", PEER, json.dumps(LAYOUTS), json.dumps(SPLITS)], capture_output=True,
                        text=True, timeout=600, env=dict(os.environ, PYTHONPATH=""))
  assert proc.returncode == 0, proc.stderr[-3000:]
  peer = json.loads(proc.stdout.strip().splitlines()[-1])
  assert [parse_layout(s) for s in LAYOUTS] == peer["layouts"]
  for (L, pp, vpp, first, last), stages in zip(SPLITS, peer["splits"]):
    cfg = _cfg(L, pp, vpp, first, last)
    bad = layout_problems(cfg)
    if stages is None:
      assert bad, (L, pp, vpp, first, last)
      continue
    assert not bad, bad
    lay = pipeline_layout(cfg)
    ours = [[lay.decoder_layers(r, c)[0] if lay.decoder_layers(r, c) else None, len(lay.decoder_layers(r, c))]
            for c in range(lay.vpp) for r in range(pp)]
    assert ours == [[off if n else None, n] for off, n in stages]


def test_layout_places_embedding_and_loss_and_derives_vpp():
  lay = pipeline_layout(_cfg(8, 2, layout="Et*3|tt|t|ttL"))
  assert (lay.pp, lay.vpp) == (2, 2)
  assert lay.stage(0, 0) == "Ettt" and lay.stage(1, 1) == "ttL"
  assert lay.decoder_layers(0, 1) == [5] and lay.decoder_layers(1, 1) == [6, 7]
  even = pipeline_layout(_cfg(8, 2, vpp=2))
  assert even.stages == ("Ett", "tt", "tt", "ttL")
  assert "pp rank 1: decoder*2 | decoder*2,loss" in even.describe()


@pytest.mark.parametrize("kw, message", [
    (dict(num_layers=8, pp=1, vpp=2), "parallel.vpp is set but parallel.pp=1"),
    (dict(num_layers=7, pp=2), "model.num_layers=7 is not divisible by parallel.pp=2"),
    (dict(num_layers=8, pp=2, vpp=3), "not divisible by parallel.vpp=3"),
    (dict(num_layers=8, pp=2, layout="Et*4|t*4"), "the loss L must come once, last"),
    (dict(num_layers=8, pp=2, layout="Et*4|t*3L"), "places 7 decoder layers"),
    (dict(num_layers=8, pp=2, layout="Et*4|t*4|L"), "3 stages"),
    (dict(num_layers=8, pp=2, layout="Et*4|t*4mL"), "MTP stages are not supported yet"),
    (dict(num_layers=8, pp=2, mtp=1), "model.mtp_num_layers=1 with parallel.pp=2: MTP layers are not pipelined"),
    (dict(num_layers=8, pp=2, fsdp=True), "parallel.fsdp=True with parallel.pp=2"),
    (dict(num_layers=8, pp=2, scan_layers=False), "model.scan_layers=False with parallel.pp=2"),
    (dict(num_layers=8, pp=2, offload=("attn_norm",)), "train.offload_modules=['attn_norm'] with parallel.pp=2"),
    (dict(num_layers=8, pp=2, layout="Et*4|tx*4L"), "characters ['x']"),
    (dict(num_layers=8, pp=2, vpp=2, layout="Et*4|t*4L"), "parallel.pp*vpp=4"),
    (dict(num_layers=8, pp=2, first=3, layout="Et*4|t*4L"), "cannot be combined"),
    (dict(num_layers=8, pp=2, first=9), "leave -1 layers"),
])
def test_invalid_pipeline_settings_give_one_line(kw, message):
  (line,) = layout_problems(_cfg(**kw))
  assert message in line and "\n" not in line


def test_context_parallel_checks():
  c = _cfg(2, 1)
  c.parallel.cp = 4
  c.train.seq_length = 20
  assert any("2*parallel.cp=8" in p for p in problems(c))
  c.train.seq_length = 32
  c.moe.update(num_experts=8, expert_capacity_factor=1.0, token_drop_policy="position")
  assert any("token_drop_policy='position'" in p for p in problems(c))


@pytest.mark.parametrize("kind", ["1f1b", "gpipe"])
@pytest.mark.parametrize("pp, vpp, m", [(2, 1, 4), (4, 1, 8), (4, 2, 8), (2, 2, 6), (2, 2, 3), (3, 2, 5)])
def test_schedule_is_consistent(pp, vpp, m, kind):
  """Every (micro-batch, virtual stage) runs one forward and one later backward on its rank; an
  activation is consumed the tick after it is sent, a cotangent likewise; each virtual stage
  sees its micro-batches in order (the MoE state threads through them); store slots never clash."""
  s, V = make_schedule(pp, vpp, m, kind), pp * vpp
  f, b, busy = {}, {}, {}
  for t in range(s.ticks):
    for r in range(pp):
      v = lambda chunk: chunk * pp + r  # noqa: E731
      if s.f_store[t, r]:
        key = (int(s.f_micro[t, r]), v(s.f_chunk[t, r]))
        assert s.f_run[t, r] == (key[1] != V - 1)
        f[key] = (t, int(s.f_slot[t, r]))
      if s.b_run[t, r]:
        b[int(s.b_micro[t, r]), v(s.b_chunk[t, r])] = (t, int(s.b_slot[t, r]))
  assert set(f) == set(b) == {(i, v) for i in range(m) for v in range(V)}
  for (i, v), (tf, slot) in f.items():
    tb, b_slot = b[i, v]
    assert tb >= tf and b_slot == slot
    if v:
      assert tf == f[i, v - 1][0] + 1
    if v < V - 1:
      assert tb == b[i, v + 1][0] + 1
    if i:
      assert tf > f[i - 1, v][0]
    for t in range(tf, tb + 1):
      assert busy.setdefault((v % pp, slot, t), (i, v)) == (i, v)


@pytest.mark.parametrize("pp, vpp, m", [(2, 1, 4), (4, 1, 8), (4, 1, 16), (4, 2, 8), (4, 4, 16), (8, 2, 16)])
def test_bubble_fraction_is_megatrons_formula(pp, vpp, m):
  """(pp−1)/(m·vpp) for both schedules when pp divides m: vpp virtual stages cut it vpp-fold."""
  for kind in ("1f1b", "gpipe"):
    s = make_schedule(pp, vpp, m, kind)
    assert s.bubble_fraction == pytest.approx((pp - 1) / (m * vpp))
    assert f"bubble fraction {(pp - 1) / (m * vpp):.4f}" in s.describe()
  assert make_schedule(pp, 1, m).bubble_fraction == pytest.approx(vpp * make_schedule(pp, vpp, m).bubble_fraction)


def test_1f1b_stores_a_bounded_number_of_inputs():
  """1f1b keeps pp·(vpp+1)−1 stage inputs per rank however many micro-batches; gpipe keeps all."""
  for pp, vpp in ((2, 1), (4, 1), (4, 2)):
    assert {make_schedule(pp, vpp, m).slots for m in (2 * pp, 4 * pp, 16 * pp)} == {pp * (vpp + 1) - 1}
    assert make_schedule(pp, vpp, 16, "gpipe").slots == 16 * vpp

