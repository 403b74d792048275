"""Blending several GPT datasets with weights, Megatron-Core's ``BlendedDataset`` semantics.

``data.path = ["0.3", "a", "0.7", "b"]`` (like Megatron's ``--data-path``) draws 30% of the
samples from prefix ``a`` and 70% from ``b``; the interleaving is Megatron's deterministic greedy
schedule (each next sample goes to the dataset furthest below its target share), so sample ``i``
is the same as in megatron-core. ``build_gpt_datasets`` turns a data config into the
train/valid/test datasets.
"""

from __future__ import annotations

import math
import os

import numpy as np

from moejax.data.gpt_dataset import SPLIT_NAMES, GPTDataset, GPTDatasetConfig, split_ranges
from moejax.data.indexed import IndexedDataset

MID_LEVEL_SURPLUS = 0.005  # Megatron's mid_level_dataset_surplus: margin built per dataset


def parse_blend(paths) -> tuple[list[str], list[float] | None]:
    """``["0.3", "a", "0.7", "b"]`` -> (["a", "b"], [0.3, 0.7]); ``["a", "b"]`` -> (["a", "b"], None).

    Also accepts one string ``"0.3 a 0.7 b"``. Weights are normalised later.
    """
    if isinstance(paths, str):
        paths = paths.split()
    paths = [str(p).strip() for p in paths]
    if not paths:
        raise ValueError("data.path is empty: give one or more .bin/.idx path prefixes, "
                         "optionally each preceded by a weight: ['0.3', 'a', '0.7', 'b']")
    if len(paths) % 2 == 0:
        try:
            weights = [float(w) for w in paths[0::2]]
        except ValueError:
            weights = None
        if weights is not None:
            if any(w < 0 for w in weights) or sum(weights) <= 0:
                raise ValueError(f"data.path weights {weights} must be >= 0 with a positive sum")
            return paths[1::2], weights
    for p in paths:
        try:
            float(p)
        except ValueError:
            continue
        raise ValueError(f"data.path={paths}: '{p}' looks like a weight but weights and prefixes "
                         "must alternate: ['0.3', 'a', '0.7', 'b']")
    return paths, None


def normalize(weights) -> list[float]:
    w = np.asarray(weights, dtype=np.float64)
    return (w / w.sum()).tolist()


def build_blending_indices(weights, size: int) -> tuple[np.ndarray, np.ndarray]:
    """(dataset of sample i, its index inside that dataset) for ``size`` samples.

    Megatron's greedy schedule (helpers.cpp build_blending_indices), by hand because no library
    has it: sample i goes to the dataset with the largest ``weight * max(i, 1) - drawn``.
    """
    w = [float(x) for x in weights]
    n = len(w)
    counts = [0] * n
    dataset_index = np.empty(size, np.int16)
    sample_index = np.empty(size, np.int64)
    for i in range(size):
        x = float(max(i, 1))
        best, best_err = 0, w[0] * x - counts[0]
        for d in range(1, n):
            err = w[d] * x - counts[d]
            if err > best_err:
                best, best_err = d, err
        dataset_index[i] = best
        sample_index[i] = counts[best]
        counts[best] += 1
    return dataset_index, sample_index


class BlendedDataset:
    """``size`` samples interleaved from ``datasets`` by ``weights``; each item carries
    ``dataset_id``. Index arrays are cached next to the first dataset's GPT indices."""

    def __init__(self, datasets, weights, size: int, cache_dir: str | None = None):
        if len(datasets) != len(weights):
            raise ValueError("one weight per dataset")
        self.datasets = list(datasets)
        self.weights = normalize(weights)
        self.size = int(size)
        self.dataset_index, self.dataset_sample_index = self._load_or_build(cache_dir)
        used = np.bincount(self.dataset_index, minlength=len(self.datasets))
        for d, (ds, u) in enumerate(zip(self.datasets, used)):
            if u > len(ds):
                raise ValueError(f"blend draws {u} samples from dataset {d} which has only {len(ds)}")

    def _load_or_build(self, cache_dir):
        import hashlib
        import json
        # the parts' descriptions carry their content fingerprints: new data, new blend index
        key = json.dumps({"weights": self.weights, "size": self.size,
                          "parts": [getattr(d, "description", None) for d in self.datasets]}, sort_keys=True)
        name = hashlib.md5(key.encode()).hexdigest()
        path = os.path.join(cache_dir, f"{name}-BlendedDataset.npz") if cache_dir else None
        if path and os.path.isfile(path):
            with np.load(path) as z:
                return z["dataset_index"], z["dataset_sample_index"]
        di, dsi = build_blending_indices(self.weights, self.size)
        if path:
            try:
                os.makedirs(cache_dir, exist_ok=True)
                tmp = path + f".{os.getpid()}.tmp.npz"
                np.savez(tmp, dataset_index=di, dataset_sample_index=dsi)
                os.replace(tmp, path)
            except OSError:
                pass
        return di, dsi

    def __len__(self) -> int:
        return self.size

    def window(self, idx: int) -> np.ndarray:
        """The raw ``sequence_length + 1`` token window of sample ``idx``."""
        return self.datasets[int(self.dataset_index[idx])].window(int(self.dataset_sample_index[idx]))

    def __getitem__(self, idx: int) -> dict[str, np.ndarray]:
        d = int(self.dataset_index[idx])
        item = self.datasets[d][int(self.dataset_sample_index[idx])]
        item["dataset_id"] = np.int32(d)
        return item


class WindowSource:
    """Grain ``RandomAccessDataSource`` over a GPT or blended dataset: record i is sample i's
    ``seq_length + 1`` token window as int32 (inputs = [:-1], labels = [1:])."""

    def __init__(self, dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, idx) -> np.ndarray:
        return self.dataset.window(int(idx)).astype(np.int32)

    def __repr__(self) -> str:
        return f"WindowSource({len(self)} samples)"


def _sizes_per_dataset(weights, target_sizes, surplus: float = 0.0):
    return [[None if t is None else int(math.ceil(math.ceil(t * w) * (1 + surplus)))
             for t in target_sizes] for w in weights]


def build_gpt_datasets(paths, split: str, num_samples: tuple, config: GPTDatasetConfig,
                       vocab_size: int | None = None, used=(True, True, True)):
    """Train/valid/test datasets (None where the split weight is 0 or the split is not ``used``)
    from ``data.path``.

    ``num_samples``: samples wanted per split (None = one epoch). One prefix without weight gives
    a plain :class:`GPTDataset`; several give a :class:`BlendedDataset` (weights default to the
    datasets' sizes, as in Megatron).
    """
    prefixes, weights = parse_blend(paths)
    indexed = []
    for p in prefixes:
        ds = IndexedDataset(p)
        if vocab_size is not None:
            check_vocab(ds, vocab_size)
        indexed.append(ds)
    ranges = [[r if needed else None for r, needed in zip(split_ranges(len(ds), split, ds.path_prefix, used), used)]
              for ds in indexed]
    if len(prefixes) == 1 and weights is None:
        return [None if r is None else
                GPTDataset(indexed[0], np.arange(*r, dtype=np.int32), n, name, config)
                for name, r, n in zip(SPLIT_NAMES, ranges[0], num_samples)]
    if weights is not None:
        weights = normalize(weights)
        target = _sizes_per_dataset(weights, num_samples)
        buffered = _sizes_per_dataset(weights, num_samples, MID_LEVEL_SURPLUS)
    else:
        buffered = [[None] * 3 for _ in prefixes]
    out = []
    for s, name in enumerate(SPLIT_NAMES):
        if ranges[0][s] is None:
            out.append(None)
            continue
        parts = [GPTDataset(ds, np.arange(*ranges[k][s], dtype=np.int32), buffered[k][s], name, config)
                 for k, ds in enumerate(indexed)]
        if weights is not None:
            if num_samples[s] is None:
                raise ValueError("blending with weights needs a number of samples per split")
            w, size = weights, sum(t[s] for t in target)
        else:
            w = [len(p) for p in parts]
            size = sum(w) if num_samples[s] is None else min(num_samples[s], sum(w))
        cache = config.cache_dir or os.path.join(
            os.path.dirname(os.path.abspath(prefixes[0])), "cache", "GPTDataset_indices")
        out.append(BlendedDataset(parts, w, size, cache_dir=cache))
    return out


def check_vocab(ds: IndexedDataset, vocab_size: int, scan_tokens: int = 50_000_000) -> None:
    """Refuse token data the model cannot embed: float dtypes, or ids >= ``vocab_size``.

    Scans up to ``scan_tokens`` tokens (the whole file for small corpora, else the first ones).
    """
    if not np.issubdtype(ds.dtype, np.integer):
        raise ValueError(f"{ds.path_prefix}.bin holds {ds.dtype.name} values, not token ids: "
                         "GPT training needs an integer dtype (re-run the preprocessor).")
    n = min(ds.num_tokens, scan_tokens)
    if n == 0:
        raise ValueError(f"{ds.path_prefix} holds no token")
    top = int(np.frombuffer(ds._bin_mmap, ds.dtype, n, 0).max())
    if top >= vocab_size:
        raise ValueError(
            f"{ds.path_prefix}.bin contains token id {top} but model.vocab_size is {vocab_size}: "
            "the data was tokenized with a larger vocabulary; set model.vocab_size >= "
            f"{top + 1} or re-tokenize with the model's tokenizer.")
