"""Token sources needing no download: Python's own docs text, or synthetic tokens."""
from __future__ import annotations

import numpy as np

from moejax.data.tokenizer import ByteTokenizer


def pydoc_tokens() -> np.ndarray:
  """~490 KB of English from `pydoc_data.topics` (ships with CPython), byte-tokenized.

  Topics are joined in sorted order with an end-of-document token after each.
  """
  import pydoc_data.topics as topics

  tok = ByteTokenizer()
  ids: list[int] = []
  for name in sorted(topics.topics):
    ids += tok.encode(topics.topics[name])
    ids.append(tok.eod)
  return np.asarray(ids, dtype=np.int32)


class TokenWindows:
  """Random-access source of consecutive `length`-token windows of a token stream.

  Windows start every `length - 1` tokens so each label position is used once,
  as in Megatron's GPT dataset.
  """

  def __init__(self, tokens: np.ndarray, length: int):
    if len(tokens) < length:
      raise ValueError(f"the corpus has {len(tokens)} tokens, fewer than train.seq_length+1={length}")
    self.tokens, self.length = tokens, length
    self._n = (len(tokens) - 1) // (length - 1)

  def __len__(self):
    return self._n

  def __getitem__(self, i):
    start = int(i) * (self.length - 1)
    return self.tokens[start:start + self.length]


class SyntheticWindows:
  """Uniform random tokens, a fixed function of (seed, index): for benchmarks."""

  def __init__(self, vocab_size: int, length: int, seed: int, size: int = 1 << 30):
    self.vocab_size, self.length, self.seed, self._n = vocab_size, length, seed, size

  def __len__(self):
    return self._n

  def __getitem__(self, i):
    rng = np.random.default_rng((self.seed, int(i)))
    return rng.integers(0, self.vocab_size, self.length, dtype=np.int32)
