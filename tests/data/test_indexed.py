"""IndexedDataset against files written by megatron-core and against our own writer."""

import json
import os
import shutil
import struct

import numpy as np
import pytest

from moejax.data.indexed import (DTYPE_CODES, IndexedDataset, IndexedDatasetBuilder,
                                 IndexedDatasetError)


def test_fixtures_read_back_exactly(megatron_fixtures):
    for prefix, exp in megatron_fixtures:
        ds = IndexedDataset(prefix)
        assert ds.dtype == np.dtype(exp["dtype"])
        assert len(ds) == exp["num_sequences"]
        assert ds.document_indices.tolist() == exp["document_indices"]
        docs = list(ds.documents())
        assert len(docs) == len(exp["documents"])
        for got, want in zip(docs, exp["documents"]):
            assert [s.tolist() for s in got] == want
        flat = [s for d in exp["documents"] for s in d]
        assert ds.sequence_lengths.tolist() == [len(s) for s in flat]
        for i, s in enumerate(flat):
            assert ds[i].tolist() == s
            assert ds[i].dtype == ds.dtype
        # slices and partial reads agree with the JSON too
        assert [x.tolist() for x in ds[3:9]] == flat[3:9]
        i = int(np.argmax(ds.sequence_lengths))
        assert ds.get(i, offset=2, length=5).tolist() == flat[i][2:7]
        assert ds.get(i, offset=3).tolist() == flat[i][3:]


@pytest.mark.parametrize("code", sorted(DTYPE_CODES))
def test_roundtrip_all_megatron_dtypes(tmp_path, code):
    dtype = np.dtype(DTYPE_CODES[code])
    rng = np.random.default_rng(code)
    prefix = str(tmp_path / "d")
    b = IndexedDatasetBuilder(prefix + ".bin", dtype=dtype)
    docs = []
    for _ in range(7):
        seqs = [rng.integers(0, 100, rng.integers(0, 20)).astype(dtype) for _ in range(rng.integers(1, 4))]
        for s in seqs:
            b.add_item(s)
        b.end_document()
        docs.append(seqs)
    b.finalize(prefix + ".idx")
    ds = IndexedDataset(prefix)
    with open(prefix + ".idx", "rb") as f:
        assert f.read(9) == b"MMIDIDX\x00\x00" and struct.unpack("<Q", f.read(8))[0] == 1
        assert f.read(1)[0] == code
    assert ds.dtype == dtype
    got = list(ds.documents())
    assert [[s.tolist() for s in d] for d in got] == [[s.tolist() for s in d] for d in docs]


def test_add_index_concatenates(tmp_path, megatron_fixtures):
    prefix, exp = megatron_fixtures[1]  # uint16
    out = str(tmp_path / "cat")
    b = IndexedDatasetBuilder(out + ".bin", dtype=np.uint16)
    b.add_index(prefix)
    b.add_index(prefix)
    b.finalize(out + ".idx")
    ds = IndexedDataset(out)
    assert [[s.tolist() for s in d] for d in ds.documents()] == exp["documents"] * 2


def test_missing_idx_is_a_clear_error(tmp_path, megatron_fixtures):
    prefix, _ = megatron_fixtures[0]
    shutil.copy(prefix + ".bin", tmp_path / "x.bin")
    with pytest.raises(IndexedDatasetError, match=r"x\.idx not found.*preprocess"):
        IndexedDataset(str(tmp_path / "x"))


def test_truncated_bin_is_a_clear_error(tmp_path, megatron_fixtures):
    prefix, _ = megatron_fixtures[0]
    shutil.copy(prefix + ".idx", tmp_path / "x.idx")
    data = open(prefix + ".bin", "rb").read()
    (tmp_path / "x.bin").write_bytes(data[: len(data) - 10])
    with pytest.raises(IndexedDatasetError, match=r"x\.bin is \d+ bytes .* truncated"):
        IndexedDataset(str(tmp_path / "x"))


def test_bad_magic_and_truncated_idx(tmp_path, megatron_fixtures):
    prefix, _ = megatron_fixtures[0]
    shutil.copy(prefix + ".bin", tmp_path / "x.bin")
    idx = open(prefix + ".idx", "rb").read()
    (tmp_path / "x.idx").write_bytes(b"NOTMAGIC!" + idx[9:])
    with pytest.raises(IndexedDatasetError, match="magic"):
        IndexedDataset(str(tmp_path / "x"))
    (tmp_path / "x.idx").write_bytes(idx[:100])
    with pytest.raises(IndexedDatasetError, match="truncated"):
        IndexedDataset(str(tmp_path / "x"))


def test_writer_refuses_ids_that_do_not_fit(tmp_path):
    b = IndexedDatasetBuilder(str(tmp_path / "y.bin"), dtype=np.uint16)
    with pytest.raises(ValueError, match="do not fit uint16"):
        b.add_item(np.array([1, 70000]))


def test_megatron_core_reads_our_files(tmp_path, run_peer):
    """Files from our builder are read by megatron-core's own IndexedDataset identically."""
    rng = np.random.default_rng(0)
    expected = {}
    for dtype in (np.uint16, np.int32):
        prefix = str(tmp_path / np.dtype(dtype).name)
        b = IndexedDatasetBuilder(prefix + ".bin", dtype=dtype)
        docs = []
        for _ in range(20):
            seqs = [rng.integers(0, 60000, rng.integers(1, 50)).tolist() for _ in range(rng.integers(1, 3))]
            for s in seqs:
                b.add_item(np.array(s))
            b.end_document()
            docs.append(seqs)
        b.finalize(prefix + ".idx")
        expected[prefix] = docs
    script = (
        "import json,sys\n"
        "from megatron.core.datasets.indexed_dataset import IndexedDataset\n"
        "out={}\n"
        "for p in sys.argv[1:]:\n"
        "    ds=IndexedDataset(p)\n"
        "    di=ds.document_indices.tolist()\n"
        "    out[p]=[[ds[i].tolist() for i in range(di[d],di[d+1])] for d in range(len(di)-1)]\n"
        "print(json.dumps(out))\n")
    got = json.loads(run_peer(script, *expected).strip().splitlines()[-1])
    assert got == expected
