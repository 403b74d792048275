"""The Grain loader over Megatron data: batch layout, determinism, resumable iterator state,
evaluation batches and the split of a global batch over processes."""

import json
import shutil

import grain
import jax
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from moejax.config import base_config
from moejax.train.validate import validate
from moejax.data.batch_schedule import BatchSchedule
from moejax.data.blend import WindowSource
from moejax.data.loader import (gpt_datasets, local_batches, make_dataset, make_eval_dataset,
                                process_rows, split_sizes)


@pytest.fixture
def cfg(tmp_path, make_indexed):
    a = make_indexed(str(tmp_path / "a"), np.random.default_rng(0).integers(20, 300, 300).tolist())
    b = make_indexed(str(tmp_path / "b"), np.random.default_rng(1).integers(20, 300, 200).tolist(), start=100_000)
    c = base_config()
    c.model.vocab_size = 200_000
    c.data.update(source="indexed", path=("0.6", a, "0.4", b), split="90,8,2", cache_dir=str(tmp_path / "cache"))
    c.train.update(train_iters=20, micro_batch_size=2, global_batch_size=8, seq_length=32,
                   eval_interval=5, eval_iters=2)
    validate(c, 2)
    return c


def test_batches_are_the_blended_samples_in_order(cfg):
    ds = make_dataset(cfg, num_devices=2)          # dp=2, micro 2 -> 2 micro-batches of 4 rows
    train = gpt_datasets(cfg)[0]
    assert len(ds) == cfg.train.train_iters
    for s in (0, 7, 19):
        batch = ds[s]
        assert batch.shape == (2, 4, 33) and batch.dtype == np.int32
        want = np.stack([train.window(s * 8 + i) for i in range(8)]).reshape(2, 4, 33)
        np.testing.assert_array_equal(batch, want)


def test_deterministic_across_fresh_builds(cfg, tmp_path):
    first = [make_dataset(cfg, 2)[s] for s in range(0, 20, 3)]
    shutil.rmtree(tmp_path / "cache")               # rebuild every index from scratch
    again = [make_dataset(cfg, 2)[s] for s in range(0, 20, 3)]
    for x, y in zip(first, again):
        np.testing.assert_array_equal(x, y)


def test_grain_iterator_state_resumes_exactly(cfg):
    """A Grain iterator's state, saved (as JSON, like a checkpoint's metadata) after 6 batches and
    restored into a new iterator, continues with exactly the uninterrupted batches."""
    ds = make_dataset(cfg, 2).to_iter_dataset(grain.ReadOptions(num_threads=2, prefetch_buffer_size=4))
    whole = list(iter(ds))
    it = iter(ds)
    for _ in range(6):
        next(it)
    state = json.loads(json.dumps(it.get_state()))
    resumed = iter(make_dataset(cfg, 2).to_iter_dataset(grain.ReadOptions(num_threads=2)))
    resumed.set_state(state)
    rest = list(resumed)
    assert len(rest) == len(whole) - 6
    for x, y in zip(rest, whole[6:]):
        np.testing.assert_array_equal(x, y)


def test_eval_batches_come_from_the_validation_split(cfg):
    ev = make_eval_dataset(cfg, 2)
    assert split_sizes(cfg) == (160, 5 * 2 * 8, 16)   # 20//5+1 evaluations of 2 batches
    assert len(ev) >= (20 // 5 + 1) * 2
    train_tokens = set(np.concatenate([make_dataset(cfg, 2)[s].ravel() for s in range(20)]).tolist())
    eval_tokens = set(np.concatenate([ev[i].ravel() for i in range(len(ev))]).tolist())
    assert not train_tokens & eval_tokens
    cfg.train.eval_interval = 0
    assert make_eval_dataset(cfg, 2) is None


def test_global_batch_split_over_processes(cfg):
    """Emulated 2 hosts x 4 devices: each host's rows are disjoint, cover the global batch, and its
    local batches are exactly its slice of the global batch (what make_array_from_process_local_data
    assembles)."""
    devices = np.array(jax.devices()[:8])
    if len(devices) < 8:
        pytest.skip("needs the 8 emulated CPU devices of tests/conftest.py")
    mesh = Mesh(devices, ("dp",))
    sharding = NamedSharding(mesh, P(None, "dp", None))
    cfg.train.update(micro_batch_size=1, global_batch_size=16)
    n_micro, shape = 2, (2, 8, 33)
    full = make_dataset(cfg, 8)
    records = grain.MapDataset.source(WindowSource(gpt_datasets(cfg)[0]))
    all_rows = []
    for host in range(2):
        rows = process_rows(sharding, shape, devices[4 * host: 4 * host + 4])
        all_rows.append(rows)
        local = local_batches(records, BatchSchedule(16), 16 // n_micro, rows)
        for s in (0, 5):
            np.testing.assert_array_equal(local[s], full[s][:, rows])
    assert sorted(np.concatenate(all_rows).tolist()) == list(range(8))
    assert not set(all_rows[0]) & set(all_rows[1])
    np.testing.assert_array_equal(process_rows(sharding, shape), np.arange(8))  # one process: all


def test_config_errors_for_bad_data(tmp_path, make_indexed):
    from moejax.config import ConfigError
    c = base_config()
    c.data.update(source="indexed", path=(str(tmp_path / "missing"),))
    with pytest.raises(ConfigError, match=r"data.path entry .*missing.idx not found"):
        validate(c, 1)
    small = make_indexed(str(tmp_path / "small"), [40] * 20)
    c.data.update(path=(small,), split="99990,8,2")
    validate(c, 1)  # the valid and test sets are empty, but this run reads neither
    c.train.eval_interval = 5
    with pytest.raises(ConfigError, match="leaves the valid set empty"):
        validate(c, 1)
    c.train.eval_interval = 0
    c.data.update(split="100,0,0")
    c.train.eval_interval = 5
    with pytest.raises(ConfigError, match="validation set weight 0"):
        validate(c, 1)
    c2 = base_config()
    c2.train.eval_interval = 5
    with pytest.raises(ConfigError, match="needs a validation split"):
        validate(c2, 1)
