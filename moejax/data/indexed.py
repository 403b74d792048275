"""Megatron-Core ``IndexedDataset`` (``.bin``/``.idx``): memory-mapped reader and writer.

Megatron users already have their corpora on disk in this format, so moejax reads and writes it
byte for byte. Written by hand because no library outside megatron-core (which needs torch)
implements it. Layout of ``<prefix>.idx`` (all little-endian)::

    9 bytes  magic  b"MMIDIDX\\x00\\x00"
    u64      version (1)
    u8       dtype code of the tokens in .bin (see DTYPE_CODES)
    u64      sequence count S
    u64      document count D (= number of documents + 1)
    i32[S]   sequence lengths (tokens)
    i64[S]   sequence pointers (byte offsets into .bin)
    i64[D]   document indices: sequence index where each document starts, last = S
    (i8[S]   sequence modes, multimodal datasets only)

``<prefix>.bin`` is the token ids of all sequences, concatenated, in that dtype.
"""

from __future__ import annotations

import functools
import hashlib
import os
import struct
from itertools import accumulate

import numpy as np

INDEX_HEADER = b"MMIDIDX\x00\x00"
INDEX_VERSION = 1
HEADER_BYTES = 9 + 8 + 1 + 8 + 8  # magic, version, dtype code, sequence count, document count

# Megatron-Core's DType enum: code -> numpy dtype (all codes Megatron writes).
DTYPE_CODES: dict[int, type] = {
    1: np.uint8,
    2: np.int8,
    3: np.int16,
    4: np.int32,
    5: np.int64,
    6: np.float64,
    7: np.float32,
    8: np.uint16,
}
_CODE_OF = {np.dtype(v): k for k, v in DTYPE_CODES.items()}


class IndexedDatasetError(ValueError):
    """A ``.bin``/``.idx`` pair that cannot be read; the message names the file and the fix."""


def idx_path(prefix: str) -> str:
    return prefix + ".idx"


def bin_path(prefix: str) -> str:
    return prefix + ".bin"


def dtype_code(dtype) -> int:
    """Megatron's numeric code for a token dtype."""
    try:
        return _CODE_OF[np.dtype(dtype)]
    except KeyError:
        raise ValueError(f"dtype {dtype} has no Megatron code; use one of "
                         f"{[np.dtype(v).name for v in DTYPE_CODES.values()]}") from None


def optimal_dtype(vocab_size: int | None) -> type:
    """Token dtype Megatron's preprocessor picks: uint16 below 65500 ids, else int32."""
    return np.uint16 if vocab_size is not None and vocab_size < 65500 else np.int32


class IndexedDataset:
    """Memory-mapped reader with Megatron-Core's surface.

    ``len(ds)`` sequences; ``ds[i]`` the token ids of sequence i (a read-only NumPy view);
    ``ds[a:b]`` a list of them; ``ds.get(i, offset, length)`` a part of one;
    ``ds.sequence_lengths``, ``ds.sequence_pointers``, ``ds.document_indices``.
    """

    def __init__(self, path_prefix: str, multimodal: bool = False):
        self.path_prefix = str(path_prefix)
        self.multimodal = multimodal
        self._open()

    def _open(self) -> None:
        ipath, bpath = idx_path(self.path_prefix), bin_path(self.path_prefix)
        for p, what in ((ipath, "index"), (bpath, "data")):
            if not os.path.isfile(p):
                raise IndexedDatasetError(
                    f"Megatron {what} file {p} not found. data.path entries are path prefixes "
                    f"without extension: both {self.path_prefix}.bin and {self.path_prefix}.idx "
                    "must exist (make them with `python -m moejax.data.preprocess`).")
        isize = os.path.getsize(ipath)
        if isize < HEADER_BYTES:
            raise IndexedDatasetError(f"{ipath} is {isize} bytes, shorter than the {HEADER_BYTES}-"
                                      "byte header: the file is truncated; regenerate it.")
        with open(ipath, "rb") as f:
            head = f.read(HEADER_BYTES)
        if head[:9] != INDEX_HEADER:
            raise IndexedDatasetError(f"{ipath} does not start with Megatron's magic {INDEX_HEADER!r} "
                                      f"(got {head[:9]!r}): not an MMIDIDX index file.")
        version, = struct.unpack("<Q", head[9:17])
        if version != INDEX_VERSION:
            raise IndexedDatasetError(f"{ipath} has index version {version}; only version 1 exists.")
        code = head[17]
        if code not in DTYPE_CODES:
            raise IndexedDatasetError(f"{ipath} has unknown dtype code {code}; Megatron codes are "
                                      f"{sorted(DTYPE_CODES)}.")
        self.dtype = np.dtype(DTYPE_CODES[code])
        self.sequence_count, self.document_count = struct.unpack("<QQ", head[18:34])
        S, D = self.sequence_count, self.document_count
        need = HEADER_BYTES + 4 * S + 8 * S + 8 * D + (S if self.multimodal else 0)
        if isize < need:
            raise IndexedDatasetError(f"{ipath} is {isize} bytes but its header announces {S} "
                                      f"sequences and {D} document indices ({need} bytes): truncated.")
        self._idx_mmap = np.memmap(ipath, mode="r", dtype=np.uint8)
        buf = self._idx_mmap
        off = HEADER_BYTES
        self.sequence_lengths = np.frombuffer(buf, np.int32, S, off)
        off += 4 * S
        self.sequence_pointers = np.frombuffer(buf, np.int64, S, off)
        off += 8 * S
        self.document_indices = np.frombuffer(buf, np.int64, D, off)
        off += 8 * D
        self.sequence_modes = np.frombuffer(buf, np.int8, S, off) if self.multimodal else None
        if D == 0 or self.document_indices[-1] != S:
            raise IndexedDatasetError(f"{ipath}: the last document index must equal the sequence "
                                      f"count {S}; the index is corrupt.")
        end = int(self.sequence_pointers[-1]) + int(self.sequence_lengths[-1]) * self.dtype.itemsize if S else 0
        bsize = os.path.getsize(bin_path(self.path_prefix))
        if bsize < end:
            raise IndexedDatasetError(
                f"{bin_path(self.path_prefix)} is {bsize} bytes but {ipath} needs {end} "
                f"({S} sequences of {self.dtype.name}): the .bin is truncated or belongs to another "
                "index; copy it again or re-run the preprocessor.")
        self._bin_mmap = np.memmap(bin_path(self.path_prefix), mode="r", dtype=np.uint8) if bsize else np.zeros(0, np.uint8)

    # Pickling re-opens the maps (Grain worker processes get a fresh mmap).
    def __getstate__(self):
        return (self.path_prefix, self.multimodal)

    def __setstate__(self, state):
        self.path_prefix, self.multimodal = state
        self._open()

    def __len__(self) -> int:
        return self.sequence_count

    @property
    def num_tokens(self) -> int:
        return int(self.sequence_lengths.sum(dtype=np.int64))

    @functools.cached_property
    def fingerprint(self) -> dict:
        """What a sample index built over this dataset depends on, for cache keys: the ``.idx``
        size and mtime and a hash of its header, sequence lengths and document index (what the
        index is built from; 12 bytes per sequence, hashed at > 1 GB/s), so a corpus written again
        in another order gets a fresh index even with the same counts."""
        ipath = idx_path(self.path_prefix)
        st = os.stat(ipath)
        h = hashlib.blake2b(digest_size=16)
        h.update(self._idx_mmap[:HEADER_BYTES].tobytes())
        h.update(self.sequence_lengths.tobytes())
        h.update(self.document_indices.tobytes())
        return {"idx_bytes": st.st_size, "idx_mtime_ns": st.st_mtime_ns, "idx_hash": h.hexdigest()}

    def _read(self, count: int, byte_offset: int) -> np.ndarray:
        return np.frombuffer(self._bin_mmap, self.dtype, count, byte_offset)

    def __getitem__(self, idx):
        if isinstance(idx, (int, np.integer)):
            if idx < 0:
                idx += self.sequence_count
            if not 0 <= idx < self.sequence_count:
                raise IndexError(f"sequence {idx} out of range for {self.sequence_count} sequences")
            return self._read(int(self.sequence_lengths[idx]), int(self.sequence_pointers[idx]))
        if isinstance(idx, slice):
            start, stop, step = idx.indices(len(self))
            if step != 1:
                raise ValueError("Slices into an IndexedDataset must be contiguous")
            lengths = self.sequence_lengths[start:stop]
            if len(lengths) == 0:
                return []
            flat = self._read(int(lengths.sum(dtype=np.int64)), int(self.sequence_pointers[start]))
            return np.split(flat, list(accumulate(lengths.tolist()))[:-1])
        raise TypeError(f"Unexpected index type {type(idx)}")

    def get(self, idx: int, offset: int = 0, length: int | None = None) -> np.ndarray:
        """Tokens ``[offset, offset+length)`` of sequence ``idx`` (to its end when length is None)."""
        seq_len = int(self.sequence_lengths[idx])
        if length is None:
            length = seq_len - offset
        if offset < 0 or length < 0 or offset + length > seq_len:
            raise IndexError(f"get({idx}, offset={offset}, length={length}) outside a sequence of {seq_len}")
        return self._read(length, int(self.sequence_pointers[idx]) + offset * self.dtype.itemsize)

    def documents(self):
        """Per document, the list of its sequences (what Megatron's preprocessor calls sentences)."""
        di = self.document_indices
        for d in range(len(di) - 1):
            yield [self[i] for i in range(int(di[d]), int(di[d + 1]))]

    @staticmethod
    def exists(path_prefix: str) -> bool:
        return os.path.isfile(idx_path(path_prefix)) and os.path.isfile(bin_path(path_prefix))

    def __repr__(self) -> str:
        return (f"IndexedDataset({self.path_prefix!r}, dtype={self.dtype.name}, "
                f"sequences={self.sequence_count}, documents={self.document_count - 1})")


def write_index(path: str, dtype, sequence_lengths, document_indices, sequence_modes=None) -> None:
    """Write an ``.idx`` exactly as Megatron-Core's ``_IndexWriter`` does."""
    lengths = np.asarray(sequence_lengths, dtype=np.int32)
    itemsize = np.dtype(dtype).itemsize
    pointers = np.zeros(len(lengths), np.int64)
    if len(lengths) > 1:
        np.cumsum(lengths[:-1].astype(np.int64) * itemsize, out=pointers[1:])
    docs = np.asarray(document_indices, dtype=np.int64)
    with open(path, "wb") as f:
        f.write(INDEX_HEADER)
        f.write(struct.pack("<Q", INDEX_VERSION))
        f.write(struct.pack("<B", dtype_code(dtype)))
        f.write(struct.pack("<Q", len(lengths)))
        f.write(struct.pack("<Q", len(docs)))
        f.write(lengths.tobytes(order="C"))
        f.write(pointers.tobytes(order="C"))
        f.write(docs.tobytes(order="C"))
        if sequence_modes is not None:
            f.write(np.asarray(sequence_modes, dtype=np.int8).tobytes(order="C"))


class IndexedDatasetBuilder:
    """Streaming writer with Megatron-Core's ``IndexedDatasetBuilder`` surface.

    ``add_item(ids)`` appends one sequence, ``end_document()`` closes a document,
    ``add_document(ids, lengths)`` does both, ``add_index(prefix)`` appends another dataset,
    ``finalize(idx_path)`` writes the index. Both files are written beside their names and renamed
    into place by ``finalize`` (``discard()`` drops them), so a run that stops halfway leaves an
    earlier dataset of the same name whole, never a new ``.bin`` beside an old ``.idx``.
    """

    def __init__(self, bin_file: str, dtype=np.int32, multimodal: bool = False):
        self.dtype = np.dtype(dtype)
        dtype_code(self.dtype)
        self.bin_file = bin_file
        self._data = open(bin_file + ".tmp", "wb")
        self.sequence_lengths: list[int] = []
        self.document_indices: list[int] = [0]
        self.sequence_modes: list[int] | None = [] if multimodal else None

    def _check_range(self, arr: np.ndarray) -> None:
        if arr.size and np.issubdtype(self.dtype, np.integer):
            info = np.iinfo(self.dtype)
            lo, hi = int(arr.min()), int(arr.max())
            if lo < info.min or hi > info.max:
                raise ValueError(f"token ids in [{lo}, {hi}] do not fit {self.dtype.name} "
                                 f"({self.bin_file}); use a wider dtype (int32) for this vocabulary.")

    def add_item(self, tokens, mode: int = 0) -> None:
        arr = np.asarray(tokens)
        self._check_range(arr)
        self._data.write(arr.astype(self.dtype, copy=False).tobytes(order="C"))
        self.sequence_lengths.append(int(arr.size))
        if self.sequence_modes is not None:
            self.sequence_modes.append(mode)

    def add_document(self, tokens, lengths, modes=None) -> None:
        arr = np.asarray(tokens)
        if int(sum(lengths)) != arr.size:
            raise ValueError(f"add_document: lengths sum to {sum(lengths)} but {arr.size} tokens given")
        self._check_range(arr)
        self._data.write(arr.astype(self.dtype, copy=False).tobytes(order="C"))
        self.sequence_lengths.extend(int(x) for x in lengths)
        self.document_indices.append(len(self.sequence_lengths))
        if self.sequence_modes is not None:
            self.sequence_modes.extend(modes if modes is not None else [0] * len(lengths))

    def end_document(self) -> None:
        self.document_indices.append(len(self.sequence_lengths))

    def add_index(self, path_prefix: str) -> None:
        other = IndexedDataset(path_prefix, multimodal=self.sequence_modes is not None)
        if other.dtype != self.dtype:
            raise ValueError(f"add_index: {path_prefix} holds {other.dtype.name}, builder writes "
                             f"{self.dtype.name}")
        offset = len(self.sequence_lengths)
        self.sequence_lengths.extend(other.sequence_lengths.tolist())
        self.document_indices.extend((offset + other.document_indices[1:]).tolist())
        if self.sequence_modes is not None:
            self.sequence_modes.extend(other.sequence_modes.tolist())
        with open(bin_path(path_prefix), "rb") as f:
            while chunk := f.read(1 << 24):
                self._data.write(chunk)

    def finalize(self, idx_file: str) -> None:
        self._data.close()
        write_index(idx_file + ".tmp", self.dtype, self.sequence_lengths, self.document_indices,
                    self.sequence_modes)
        os.replace(self.bin_file + ".tmp", self.bin_file)
        os.replace(idx_file + ".tmp", idx_file)

    def discard(self) -> None:
        """Closes and removes what was written; an earlier dataset of the same name stays."""
        self._data.close()
        if os.path.exists(self.bin_file + ".tmp"):
            os.remove(self.bin_file + ".tmp")
