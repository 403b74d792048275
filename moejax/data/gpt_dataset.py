"""Megatron-Core's ``GPTDataset`` over an :class:`IndexedDataset`, index for index.

Documents (Megatron's GPT "documents" are the sequences of the ``.idx``) of one split are
shuffled per epoch with a seed, concatenated and cut into ``seq_length + 1`` token windows
(inputs = window[:-1], labels = window[1:]; consecutive windows share one token, so every token
is an input exactly once per epoch); as many epochs are stacked as the requested number of
samples needs, and the resulting samples are shuffled again. The three index arrays (document,
sample, shuffle) are built with the same NumPy ``RandomState`` call sequence as Megatron-Core, so
``GPTDataset(...)[i]`` equals megatron-core's sample ``i`` for the same seed, and they are cached
as ``.npy`` files next to the data.

Written by hand (no library builds Megatron's sample index); ``build_sample_index`` is a
vectorised NumPy form of Megatron's C++ ``build_sample_idx``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import re
import tempfile

import numpy as np

from moejax.data.indexed import IndexedDataset

log = logging.getLogger(__name__)

SPLIT_NAMES = ("train", "valid", "test")
PAD_TOKEN_ID = -1


# --------------------------------------------------------------------------- splits

def parse_split(split: str | list | tuple) -> list[float]:
    """``"99990,8,2"`` -> normalised ``[0.9999, 0.00008, 0.00002]`` (missing parts are 0)."""
    if isinstance(split, str):
        parts = [float(x) for x in re.findall(r"[.0-9]+", split)]
    else:
        parts = [float(x) for x in split]
    if not parts or len(parts) > 3 or any(p < 0 for p in parts) or sum(parts) <= 0:
        raise ValueError(f"data.split={split!r} must be up to three non-negative weights "
                         "train,valid,test with a positive sum, e.g. '99990,8,2'")
    parts += [0.0] * (3 - len(parts))
    total = float(np.sum(np.array(parts, dtype=np.float64)))
    return (np.array(parts, dtype=np.float64) / total).tolist()


def split_matrix(weights: list[float]) -> list[tuple[float, float] | None]:
    """Book-ends of each split in [0, 1]; None for a split of weight 0 (Megatron's matrix)."""
    bounds = [0.0]
    for w in weights:
        bounds.append(bounds[-1] + w)
    return [(lo, hi) if hi > lo else None for lo, hi in zip(bounds[:-1], bounds[1:])]


def split_ranges(num_elements: int, split, path: str = "", used=(True, True, True)) -> list[tuple[int, int] | None]:
    """Element ranges ``[beg, end)`` of train/valid/test (None for a split of weight 0). A split
    that is ``used`` but gets no element is an error (it would silently train or evaluate on
    nothing); an unused one is None."""
    matrix = split_matrix(parse_split(split))
    out = []
    for name, bookend, needed in zip(SPLIT_NAMES, matrix, used):
        if bookend is None:
            out.append(None)
            continue
        beg = int(round(bookend[0] * float(num_elements)))
        end = int(round(bookend[1] * float(num_elements)))
        if end <= beg and not needed:
            out.append(None)
            continue
        if end <= beg:
            raise ValueError(
                f"data.split={split!r} leaves the {name} set empty for {path or 'the dataset'} "
                f"({num_elements} documents): give {name} a larger weight, use more data, "
                f"or set its weight to 0 to have no {name} set.")
        out.append((beg, end))
    return out


# --------------------------------------------------------------------------- index building

def num_epochs_needed(tokens_per_epoch: int, num_samples: int | None, seq_length: int,
                      add_extra_token: int = 1) -> int:
    """Smallest number of epochs holding ``num_samples`` windows (Megatron's _get_num_epochs)."""
    if num_samples is None:
        return 1
    requested = num_samples * seq_length + add_extra_token
    return max(1, -(-requested // tokens_per_epoch))


def build_document_index(documents: np.ndarray, num_epochs: int, rng: np.random.RandomState,
                         separate_final_epoch: bool) -> np.ndarray:
    """``documents`` repeated ``num_epochs`` times and shuffled (the last epoch on its own when
    ``separate_final_epoch``, so a small final fraction is not biased towards some documents)."""
    if not separate_final_epoch or num_epochs == 1:
        doc_idx = np.tile(np.asarray(documents), num_epochs).astype(np.int32)
        rng.shuffle(doc_idx)
        return doc_idx
    first = build_document_index(documents, num_epochs - 1, rng, False)
    last = build_document_index(documents, 1, rng, False)
    return np.concatenate((first, last))


def build_sample_index(sizes: np.ndarray, document_index: np.ndarray, seq_length: int,
                       drop_last_partial_sequence: bool = True,
                       add_extra_token: int = 1) -> np.ndarray:
    """``[num_samples + 1, 2]``: (position in document_index, token offset) where each sample starts.

    Sample k covers global tokens ``[k*seq_length, (k+1)*seq_length + add_extra_token)`` of the
    concatenation of ``sizes[document_index]``. Same output as Megatron's C++ helper.
    """
    lengths = sizes[document_index].astype(np.int64)
    cum = np.cumsum(lengths)                    # inclusive
    total = int(cum[-1]) if len(cum) else 0
    if drop_last_partial_sequence:
        num_samples = (total - add_extra_token) // seq_length
    else:
        num_samples = int(np.ceil((total - add_extra_token) / seq_length))
    if num_samples < 1:
        raise ValueError(f"{total} tokens cannot fill one sequence of {seq_length}+{add_extra_token}")
    g = np.arange(num_samples + 1, dtype=np.int64) * seq_length
    out = np.empty((num_samples + 1, 2), np.int64)
    # The boundary is recorded in the document holding global token g - 1 + add_extra_token.
    j = np.searchsorted(cum, g - 1 + add_extra_token, side="right")
    overflow = g + add_extra_token > total          # only a kept partial last sample
    j = np.minimum(j, len(lengths) - 1)
    out[:, 0] = j
    out[:, 1] = g - (cum[j] - lengths[j])
    out[overflow, 0] = len(lengths) - 1
    out[overflow, 1] = lengths[-1] - add_extra_token
    out[0] = (0, 0)
    return out


def build_shuffle_index(num_samples: int, total_size: int, rng: np.random.RandomState) -> np.ndarray:
    """Permutation of ``[0, num_samples)`` followed by one of ``[num_samples, total_size)``."""
    dtype = np.uint32 if total_size < np.iinfo(np.uint32).max - 1 else np.int64
    first = np.arange(0, num_samples, dtype=dtype)
    rng.shuffle(first)
    if num_samples == total_size:
        return first
    last = np.arange(num_samples, total_size, dtype=dtype)
    rng.shuffle(last)
    return np.concatenate((first, last))


# --------------------------------------------------------------------------- masks

def ltor_position_ids_and_segments(tokens: np.ndarray, eod: int, reset_position_ids: bool,
                                   reset_attention_mask: bool):
    """Position ids and document segment ids for one row; both restart after each ``eod`` token
    when the reset flags are set (Megatron's _get_ltor_masks_and_position_ids, as vectors)."""
    n = tokens.shape[0]
    pos = np.arange(n, dtype=np.int32)
    seg = np.zeros(n, dtype=np.int32)
    if reset_position_ids or reset_attention_mask:
        after_eod = np.zeros(n, dtype=np.int32)
        after_eod[1:] = tokens[:-1] == eod
        seg_of = np.cumsum(after_eod, dtype=np.int32)
        if reset_attention_mask:
            seg = seg_of
        if reset_position_ids:
            starts = np.flatnonzero(np.concatenate(([1], after_eod[1:])))
            pos = pos - starts[seg_of].astype(np.int32)
    return pos, seg


def attention_mask_from_segments(segment_ids: np.ndarray) -> np.ndarray:
    """Megatron's boolean mask ``[1, S, S]`` (True = masked): causal and same-document."""
    s = segment_ids.shape[-1]
    causal = np.tril(np.ones((s, s), dtype=bool))
    same = segment_ids[:, None] == segment_ids[None, :]
    return ~(causal & same)[None]


# --------------------------------------------------------------------------- dataset

@dataclasses.dataclass(frozen=True)
class GPTDatasetConfig:
    """What defines the samples (and the cache key) of a GPTDataset."""

    sequence_length: int
    random_seed: int = 1234
    eod: int | None = None
    reset_position_ids: bool = False
    reset_attention_mask: bool = False
    eod_mask_loss: bool = False
    add_extra_token_to_sequence: bool = True
    drop_last_partial_validation_sequence: bool = True
    cache_dir: str | None = None   # None: <data dir>/cache/GPTDataset_indices

    def __post_init__(self):
        if self.sequence_length < 1:
            raise ValueError(f"sequence_length must be >= 1, got {self.sequence_length}")
        if (self.reset_position_ids or self.reset_attention_mask or self.eod_mask_loss) and self.eod is None:
            raise ValueError("reset_position_ids / reset_attention_mask / eod_mask_loss need the "
                             "tokenizer's end-of-document id (data.eod)")


class GPTDataset:
    """Random-access dataset of fixed-length samples, Megatron-Core's GPTDataset semantics.

    ``ds[i]`` -> dict of NumPy arrays of length ``sequence_length``: ``tokens``, ``labels``
    (int32), ``loss_mask`` (float32), ``position_ids`` (int32) and ``segment_ids`` (int32;
    0 everywhere unless ``reset_attention_mask``: then the document number inside the row).
    """

    def __init__(self, indexed: IndexedDataset, indices: np.ndarray, num_samples: int | None,
                 split: str, config: GPTDatasetConfig):
        self.dataset = indexed
        self.indices = np.asarray(indices, dtype=np.int32)
        self.num_samples = num_samples
        self.split = split
        self.config = config
        if len(self.indices) == 0:
            raise ValueError(f"{split} split of {indexed.path_prefix} has no document")
        self.description = {
            "class": "GPTDataset", "path_prefix": os.path.abspath(indexed.path_prefix),
            "num_sequences": len(indexed), "num_tokens": indexed.num_tokens,
            "content": indexed.fingerprint,
            "split": split, "indices": [int(self.indices[0]), int(self.indices[-1]) + 1, len(self.indices)],
            "num_samples": num_samples, "sequence_length": config.sequence_length,
            "random_seed": config.random_seed,
            "add_extra_token_to_sequence": config.add_extra_token_to_sequence,
            "drop_last_partial_validation_sequence": config.drop_last_partial_validation_sequence,
        }
        self.document_index, self.sample_index, self.shuffle_index = self._load_or_build()

    # ---- index construction / cache
    def _cache_paths(self):
        text = json.dumps(self.description, sort_keys=True, indent=1)
        digest = hashlib.md5(text.encode()).hexdigest()
        cache = self.config.cache_dir or os.path.join(
            os.path.dirname(os.path.abspath(self.dataset.path_prefix)), "cache", "GPTDataset_indices")
        base = os.path.join(cache, f"{digest}-GPTDataset-{self.split}")
        return text, cache, {k: f"{base}-{k}.npy" for k in ("document_index", "sample_index", "shuffle_index")}, base

    def _load_or_build(self):
        text, cache, paths, base = self._cache_paths()
        if all(os.path.isfile(p) for p in paths.values()):
            self.cache_hit = True
            return tuple(np.load(paths[k], mmap_mode="r") for k in ("document_index", "sample_index", "shuffle_index"))
        self.cache_hit = False
        arrays = self._build()
        try:
            os.makedirs(cache, exist_ok=True)
            for k, arr in zip(("document_index", "sample_index", "shuffle_index"), arrays):
                fd, tmp = tempfile.mkstemp(dir=cache, suffix=".npy.tmp")
                with os.fdopen(fd, "wb") as f:
                    np.save(f, arr)
                os.replace(tmp, paths[k])          # atomic: safe with several processes
            with open(base + "-description.txt", "w") as f:
                f.write(text)
        except OSError as e:
            log.warning("could not cache GPTDataset indices in %s (%s); set data.cache_dir to a "
                        "writable directory to avoid rebuilding them each run", cache, e)
        return arrays

    def _build(self):
        cfg = self.config
        extra = int(cfg.add_extra_token_to_sequence)
        seq = cfg.sequence_length
        tokens_per_epoch = int(np.sum(self.dataset.sequence_lengths[self.indices], dtype=np.int64))
        if tokens_per_epoch < seq + extra:
            raise ValueError(
                f"the {self.split} split of {self.dataset.path_prefix} holds {tokens_per_epoch} "
                f"tokens, fewer than one sample of {seq}+{extra}: lower model.seq_length or "
                "give this split more data (data.split).")
        num_epochs = num_epochs_needed(tokens_per_epoch, self.num_samples, seq, extra)
        separate_final_epoch = False
        if num_epochs > 1:
            sans_final = ((num_epochs - 1) * tokens_per_epoch - extra) // seq
            from_final = self.num_samples - sans_final
            per_epoch = (tokens_per_epoch - extra) // seq
            separate_final_epoch = from_final < int(0.80 * per_epoch)
        rng = np.random.RandomState(cfg.random_seed)
        document_index = build_document_index(self.indices, num_epochs, rng, separate_final_epoch)
        drop_last = True if self.split != "valid" else cfg.drop_last_partial_validation_sequence
        sample_index = build_sample_index(self.dataset.sequence_lengths, document_index, seq,
                                          drop_last, extra)
        n = sample_index.shape[0] - 1
        shuffle_index = build_shuffle_index(sans_final if separate_final_epoch else n, n, rng)
        self.num_epochs, self.separate_final_epoch = num_epochs, separate_final_epoch
        return document_index, sample_index, shuffle_index

    # ---- access
    def __len__(self) -> int:
        return self.sample_index.shape[0] - 1

    def window(self, idx: int) -> np.ndarray:
        """The ``sequence_length + extra`` raw token ids of sample ``idx`` (int64, pad = -1)."""
        i = int(self.shuffle_index[idx])
        (d0, o0), (d1, o1) = self.sample_index[i], self.sample_index[i + 1]
        d0, o0, d1, o1 = int(d0), int(o0), int(d1), int(o1)
        extra = int(self.config.add_extra_token_to_sequence)
        ds, doc = self.dataset, self.document_index
        if d0 == d1:
            parts = [ds.get(int(doc[d0]), o0, o1 - o0 + extra)]
        else:
            parts = [ds.get(int(doc[d0]), o0)]
            parts += [ds[int(doc[k])] for k in range(d0 + 1, d1)]
            parts.append(ds.get(int(doc[d1]), 0, o1 + extra))
        want = self.config.sequence_length + extra
        out = np.concatenate(parts).astype(np.int64)
        if out.shape[0] < want:
            out = np.concatenate([out, np.full(want - out.shape[0], PAD_TOKEN_ID, np.int64)])
        return out

    def __getitem__(self, idx: int) -> dict[str, np.ndarray]:
        cfg = self.config
        text = self.window(idx)
        if cfg.add_extra_token_to_sequence:
            tokens, labels = text[:-1], text[1:]
        else:
            tokens, labels = text, np.roll(text, -1)
            labels[-1] = PAD_TOKEN_ID
        loss_mask = np.ones(tokens.shape[0], np.float32)
        if cfg.eod_mask_loss:
            loss_mask[tokens == cfg.eod] = 0.0
        loss_mask[labels == PAD_TOKEN_ID] = 0.0
        pos, seg = ltor_position_ids_and_segments(tokens, cfg.eod, cfg.reset_position_ids,
                                                  cfg.reset_attention_mask)
        tokens = np.where(tokens == PAD_TOKEN_ID, 0, tokens).astype(np.int32)
        labels = np.where(labels == PAD_TOKEN_ID, 0, labels).astype(np.int32)
        return {"tokens": tokens, "labels": labels, "loss_mask": loss_mask,
                "position_ids": pos, "segment_ids": seg}
