"""Blending: equality with megatron-core, frequencies within 2% over 10k samples, parsing."""

import numpy as np
import pytest

from moejax.data.blend import (BlendedDataset, build_blending_indices, build_gpt_datasets,
                               check_vocab, parse_blend)
from moejax.data.gpt_dataset import GPTDatasetConfig
from moejax.data.indexed import IndexedDataset


def test_parse_blend():
    assert parse_blend(["0.3", "a", "0.7", "b"]) == (["a", "b"], [0.3, 0.7])
    assert parse_blend(["a", "b"]) == (["a", "b"], None)
    assert parse_blend("30 a 70 b") == (["a", "b"], [30.0, 70.0])
    with pytest.raises(ValueError, match="alternate"):
        parse_blend(["0.3", "a", "b"])
    with pytest.raises(ValueError, match="empty"):
        parse_blend([])


def test_matches_megatron_core(tmp_path, make_indexed, megatron_dump):
    a = make_indexed(str(tmp_path / "a"), np.random.default_rng(0).integers(5, 80, 200).tolist())
    b = make_indexed(str(tmp_path / "b"), np.random.default_rng(1).integers(5, 80, 150).tolist(), start=10**6)
    paths = ["0.3", a, "0.7", b]
    sizes = [900, 40, 20]
    ref = megatron_dump(dict(seed=7, seq_length=24, paths=paths, split="95,3,2", eod=0, reset=False,
                             cache=str(tmp_path / "mcache"), sizes=sizes, max_items=1000))
    ours = build_gpt_datasets(paths, "95,3,2", sizes, GPTDatasetConfig(24, 7, cache_dir=str(tmp_path / "o")))
    for name, ds in zip(("train", "valid", "test"), ours):
        assert isinstance(ds, BlendedDataset) and len(ds) == int(ref[f"{name}_len"])
        np.testing.assert_array_equal(ds.dataset_index, ref[f"{name}_dataset_index"])
        np.testing.assert_array_equal(ds.dataset_sample_index, ref[f"{name}_dataset_sample_index"])
        toks = np.stack([ds[i]["tokens"] for i in range(len(ds))])
        np.testing.assert_array_equal(toks, ref[f"{name}_tokens"])


def test_frequencies_match_weights_over_10k(tmp_path, make_indexed):
    a = make_indexed(str(tmp_path / "a"), [300] * 100)
    b = make_indexed(str(tmp_path / "b"), [300] * 100, start=10**6)
    c = make_indexed(str(tmp_path / "c"), [300] * 100, start=2 * 10**6)
    weights = [0.2, 0.5, 0.3]
    train, _, _ = build_gpt_datasets(["0.2", a, "0.5", b, "0.3", c], "100,0,0", [10_000, None, None],
                                     GPTDatasetConfig(16, 3, cache_dir=str(tmp_path / "k")))
    ids = np.array([train[i]["dataset_id"] for i in range(10_000)])
    # from the tokens themselves, not only the bookkeeping: which file did each sample come from
    src = np.array([train[i]["tokens"][0] // 10**6 for i in range(10_000)])
    np.testing.assert_array_equal(ids, src)
    freq = np.bincount(src, minlength=3) / 10_000
    assert np.all(np.abs(freq - weights) < 0.02), freq
    # and over every prefix window of 1000 samples too (the schedule interleaves, never bunches)
    for s in range(0, 10_000, 1000):
        f = np.bincount(src[s:s + 1000], minlength=3) / 1000
        assert np.all(np.abs(f - weights) < 0.02), (s, f)


def test_greedy_schedule_is_exact_on_small_case():
    di, dsi = build_blending_indices([0.5, 0.5], 6)
    assert di.tolist() == [0, 1, 0, 1, 0, 1] and dsi.tolist() == [0, 0, 1, 1, 2, 2]


def test_vocab_and_dtype_mismatch_errors(tmp_path, make_indexed):
    p = make_indexed(str(tmp_path / "v"), [100] * 10)   # ids 0..999
    ds = IndexedDataset(p)
    check_vocab(ds, 1000)
    with pytest.raises(ValueError, match=r"token id 999 but model.vocab_size is 500"):
        check_vocab(ds, 500)
    with pytest.raises(ValueError, match="vocab_size"):
        build_gpt_datasets([p], "1,0,0", [None] * 3, GPTDatasetConfig(8), vocab_size=257)
    from moejax.data.indexed import IndexedDatasetBuilder
    fb = IndexedDatasetBuilder(str(tmp_path / "f.bin"), dtype=np.float32)
    fb.add_item(np.ones(4))
    fb.end_document()
    fb.finalize(str(tmp_path / "f.idx"))
    with pytest.raises(ValueError, match="float32 values, not token ids"):
        check_vocab(IndexedDataset(str(tmp_path / "f")), 1000)
