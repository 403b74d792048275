"""GPTDataset: equality with megatron-core, epoch coverage, splits, cache, masks."""

import numpy as np
import pytest

from moejax.data.blend import build_gpt_datasets
from moejax.data.gpt_dataset import (GPTDataset, GPTDatasetConfig, attention_mask_from_segments,
                                     build_sample_index, split_ranges)
from moejax.data.indexed import IndexedDataset

EOD = 7


def _doc_lengths(n, seed=0, lo=1, hi=60):
    return np.random.default_rng(seed).integers(lo, hi, n).tolist()


@pytest.mark.parametrize("reset,train_size", [(False, 1300), (True, 1500)])
def test_matches_megatron_core(tmp_path, make_indexed, megatron_dump, reset, train_size):
    """Index arrays and every sample equal megatron-core's for the same seed, over several epochs
    (with and without a separately shuffled final epoch), with and without EOD resets."""
    prefix = make_indexed(str(tmp_path / "corpus"), _doc_lengths(300, 1), eod=EOD if reset else None)
    seq = 32
    sizes = [train_size, 60, 17]   # train: several epochs; valid, test: < 1 epoch
    spec = dict(seed=1234, seq_length=seq, paths=[prefix], split="90,7,3", eod=EOD, reset=reset,
                cache=str(tmp_path / "mcache"), sizes=sizes, max_items=2000)
    ref = megatron_dump(spec)
    cfg = GPTDatasetConfig(sequence_length=seq, random_seed=1234, eod=EOD, reset_position_ids=reset,
                           reset_attention_mask=reset, eod_mask_loss=reset,
                           cache_dir=str(tmp_path / "ours"))
    ours = build_gpt_datasets([prefix], "90,7,3", sizes, cfg)
    assert ours[0].num_epochs > 1 and ours[0].separate_final_epoch == (train_size == 1300)
    for name, ds in zip(("train", "valid", "test"), ours):
        assert len(ds) == int(ref[f"{name}_len"])
        np.testing.assert_array_equal(ds.document_index, ref[f"{name}_document_index"])
        np.testing.assert_array_equal(ds.sample_index, ref[f"{name}_sample_index"])
        np.testing.assert_array_equal(ds.shuffle_index, ref[f"{name}_shuffle_index"])
        items = [ds[i] for i in range(len(ds))]
        for k in ("tokens", "labels", "loss_mask", "position_ids"):
            np.testing.assert_array_equal(np.stack([it[k] for it in items]), ref[f"{name}_{k}"], err_msg=f"{name} {k}")
        if reset:
            masks = np.stack([attention_mask_from_segments(it["segment_ids"]) for it in items[:8]])
            np.testing.assert_array_equal(masks, ref[f"{name}_attention_mask"])


def test_sample_index_matches_reference_loop():
    """Vectorised sample index == a direct transcription of Megatron's C++ loop, incl. empty
    documents, no extra token and a kept partial last sample."""
    def loop(sizes, doc_idx, seq, drop_last, extra):
        total = int(sizes[doc_idx].sum())
        n = (total - extra) // seq if drop_last else int(np.ceil((total - extra) / seq))
        out = [(0, 0)]
        d, off = 0, 0
        while len(out) <= n:
            rem = seq + extra
            while rem != 0:
                L = int(sizes[doc_idx[d]]) - off
                rem -= L
                if rem <= 0:
                    off += rem + L - extra
                    rem = 0
                else:
                    if d == len(doc_idx) - 1:
                        off = int(sizes[doc_idx[d]]) - extra
                        break
                    d += 1
                    off = 0
            out.append((d, off))
        return np.array(out)

    rng = np.random.default_rng(3)
    for trial in range(60):
        sizes = rng.integers(0, 12, 40).astype(np.int32)
        sizes[-1] = max(sizes[-1], 2)
        doc_idx = rng.permutation(np.tile(np.arange(40), 2)).astype(np.int32)
        doc_idx[-1] = 39
        seq = int(rng.integers(2, 9))
        for drop_last in (True, False):
            for extra in (0, 1):
                np.testing.assert_array_equal(build_sample_index(sizes, doc_idx, seq, drop_last, extra),
                                              loop(sizes, doc_idx, seq, drop_last, extra))


def test_one_epoch_every_train_token_once(tmp_path, make_indexed):
    """Over one epoch each token of the train split is an input exactly once, except the tail
    (< seq_length + 1 tokens) that cannot fill a last window; labels are inputs shifted by one."""
    lengths = _doc_lengths(500, 2, 1, 200)
    prefix = make_indexed(str(tmp_path / "c"), lengths)      # token id == global position
    seq = 64
    train, valid, test = build_gpt_datasets([prefix], "80,15,5", [None, None, None],
                                            GPTDatasetConfig(seq, 99, cache_dir=str(tmp_path / "k")))
    ds = IndexedDataset(prefix)
    beg, end = split_ranges(len(ds), "80,15,5")[0]
    train_tokens = np.concatenate([ds[i] for i in range(beg, end)]).astype(np.int64)
    inputs = np.concatenate([train[i]["tokens"] for i in range(len(train))]).astype(np.int64)
    assert len(np.unique(inputs)) == len(inputs), "a token appears twice as an input"
    assert np.isin(inputs, train_tokens).all()
    missing = np.setdiff1d(train_tokens, inputs)
    assert len(missing) < seq + 1 and len(inputs) == len(train) * seq
    # the missing tokens are the tail of the epoch's shuffled concatenation, not holes inside it
    epoch = np.concatenate([ds[int(d)] for d in train.document_index]).astype(np.int64)
    np.testing.assert_array_equal(np.sort(epoch[: len(train) * seq]), np.sort(inputs))
    for i in range(len(train)):
        it = train[i]
        np.testing.assert_array_equal(train.window(i)[1:], it["labels"])


def test_split_is_disjoint_and_covers(tmp_path, make_indexed):
    prefix = make_indexed(str(tmp_path / "c"), _doc_lengths(400, 4, 20, 80))
    dss = build_gpt_datasets([prefix], "90,8,2", [None] * 3, GPTDatasetConfig(16, 1, cache_dir=str(tmp_path / "k")))
    seen = [set(np.concatenate([d[i]["tokens"] for i in range(len(d))]).tolist()) for d in dss]
    assert not (seen[0] & seen[1]) and not (seen[0] & seen[2]) and not (seen[1] & seen[2])
    docs = [set(d.indices.tolist()) for d in dss]
    assert not (docs[0] & docs[1] | docs[0] & docs[2] | docs[1] & docs[2])
    assert set.union(*docs) == set(range(400))


def test_split_leaving_a_set_empty_is_an_error(tmp_path, make_indexed):
    prefix = make_indexed(str(tmp_path / "c"), [50] * 30)
    with pytest.raises(ValueError, match=r"data.split='99990,8,2' leaves the valid set empty .*30 documents"):
        build_gpt_datasets([prefix], "99990,8,2", [None] * 3, GPTDatasetConfig(16))
    with pytest.raises(ValueError, match="data.split"):
        split_ranges(10, "1,2,3,4")


def test_index_cache_next_to_data(tmp_path, make_indexed):
    prefix = make_indexed(str(tmp_path / "c"), _doc_lengths(100, 5))
    ds = IndexedDataset(prefix)
    a = GPTDataset(ds, np.arange(100), 500, "train", GPTDatasetConfig(32, 5))
    assert not a.cache_hit and (tmp_path / "cache" / "GPTDataset_indices").is_dir()
    b = GPTDataset(ds, np.arange(100), 500, "train", GPTDatasetConfig(32, 5))
    assert b.cache_hit
    np.testing.assert_array_equal(a.shuffle_index, b.shuffle_index)
    c = GPTDataset(ds, np.arange(100), 500, "train", GPTDatasetConfig(32, 6))  # other seed: new index
    assert not c.cache_hit and not np.array_equal(a.shuffle_index, c.shuffle_index)


def test_a_reordered_corpus_gets_a_fresh_index(tmp_path, make_indexed):
    """Finding 6: the same corpus preprocessed again in another order reused the stale index (same
    document and token counts) and failed with an IndexError, or could give wrong samples."""
    lengths = _doc_lengths(60, 3)
    prefix = make_indexed(str(tmp_path / "c"), lengths)
    first = GPTDataset(IndexedDataset(prefix), np.arange(60), 200, "train", GPTDatasetConfig(32, 5))
    assert not first.cache_hit
    make_indexed(prefix, lengths[::-1])  # same counts, other order
    again = GPTDataset(IndexedDataset(prefix), np.arange(60), 200, "train", GPTDatasetConfig(32, 5))
    fresh = GPTDataset(IndexedDataset(prefix), np.arange(60), 200, "train",
                       GPTDatasetConfig(32, 5, cache_dir=str(tmp_path / "elsewhere")))
    assert not again.cache_hit
    for i in range(len(fresh)):
        np.testing.assert_array_equal(again.window(i), fresh.window(i))
    assert GPTDataset(IndexedDataset(prefix), np.arange(60), 200, "train", GPTDatasetConfig(32, 5)).cache_hit


def test_reset_position_ids_and_masks_numpy_reference():
    from moejax.data.gpt_dataset import ltor_position_ids_and_segments
    toks = np.array([5, 1, EOD, 3, 4, EOD, EOD, 9, 2])
    pos, seg = ltor_position_ids_and_segments(toks, EOD, True, True)
    assert pos.tolist() == [0, 1, 2, 0, 1, 2, 0, 0, 1]
    assert seg.tolist() == [0, 0, 0, 1, 1, 1, 2, 3, 3]
    pos, seg = ltor_position_ids_and_segments(toks, EOD, False, False)
    assert pos.tolist() == list(range(9)) and seg.tolist() == [0] * 9
