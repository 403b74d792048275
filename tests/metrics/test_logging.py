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
