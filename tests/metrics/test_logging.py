"""Metrics to metrics.jsonl and the MoE load summaries."""
import json

import numpy as np
import pytest

from moejax.metrics.logging import MetricsWriter, moe_records


def test_moe_records_imbalance_losses_and_per_layer():
  counts = np.array([[4.0, 4.0, 4.0, 4.0], [8.0, 4.0, 2.0, 2.0]])
  metrics = {"tokens_per_expert": counts, "moe_dropped_fraction": np.array([0.0, 0.5]),
             "moe_losses": {"load_balancing_loss": np.array([1.0, 3.0])}}
  out = moe_records(metrics, per_layer=True)
  assert out["moe_load_imbalance"] == pytest.approx((1.0 + 2.0) / 2)
  assert out["moe_load_imbalance_max"] == pytest.approx(2.0)
  assert out["moe/load_balancing_loss"] == pytest.approx(2.0)
  assert out["moe_dropped_fraction"] == pytest.approx(0.25)
  assert out["moe/layer_1/load_imbalance"] == pytest.approx(2.0)
  assert out["moe_tokens_per_expert"] == counts.tolist()
  assert moe_records({"tokens_per_expert": np.zeros((0, 0))}) == {"moe_load_imbalance": None}


def test_writer_appends_one_json_line_per_step(tmp_path):
  w = MetricsWriter(str(tmp_path), tensorboard=False)
  w.write(1, {"loss": 2.5, "mfu": None})
  w.write(2, {"loss": 2.0, "mfu": None})
  w.close()
  rows = [json.loads(line) for line in open(tmp_path / "metrics.jsonl")]
  assert rows == [{"step": 1, "loss": 2.5, "mfu": None}, {"step": 2, "loss": 2.0, "mfu": None}]


def test_console_line_has_the_norms_and_every_digit_of_the_zero_count(tmp_path, capsys):
  w = MetricsWriter(str(tmp_path), tensorboard=False)
  w.write(1, {"loss": 2.5, "grad_norm": 1.25, "num_zeros_in_grad": 13184032.0, "params_norm": 13.8547}, console=True)
  w.close()
  assert "| grad_norm 1.25 | num_zeros_in_grad 13184032 | params_norm 13.9" in capsys.readouterr().err


def _events(path):
  """(step, kind) of each event in a TensorBoard event file (TFRecord framing: length, crc, data, crc)."""
  import struct

  from tensorboardX.proto.event_pb2 import Event
  out, data = [], open(path, "rb").read()
  while data:
    n, = struct.unpack("<Q", data[:8])
    e = Event.FromString(data[12:12 + n])
    data = data[16 + n:]
    kind = "start" if e.HasField("session_log") else "scalar" if e.HasField("summary") else "other"
    out.append((e.step, kind))
  return out


def test_a_resume_cuts_the_rows_after_its_step_and_purges_them_in_tensorboard(tmp_path):
  """Finding 5: after a crash at step 30 and a resume from 20, steps 21-30 were logged twice."""
  w = MetricsWriter(str(tmp_path), tensorboard=True)
  for step in range(1, 6):
    w.write(step, {"loss": float(step)})
  w.close()
  with open(tmp_path / "metrics.jsonl", "a") as f:
    f.write('{"step": 6, "lo')  # a row cut short by the crash
  w = MetricsWriter(str(tmp_path), tensorboard=True, start_step=3)  # resumed from the checkpoint at step 3
  for step in range(4, 7):
    w.write(step, {"loss": 10.0 + step})
  w.close()
  rows = [json.loads(line) for line in open(tmp_path / "metrics.jsonl")]
  assert [(r["step"], r["loss"]) for r in rows] == [(1, 1.0), (2, 2.0), (3, 3.0), (4, 14.0), (5, 15.0), (6, 16.0)]
  files = sorted((tmp_path / "tensorboard").iterdir(), key=lambda p: p.stat().st_mtime_ns)
  assert len(files) == 2  # a new event file for the resumed run
  resumed = _events(files[1])
  # TensorBoard purges every earlier event at step >= 4 when it reads this session start
  assert (4, "start") in resumed[:3] and [s for s, k in resumed if k == "scalar"] == [4, 5, 6]
