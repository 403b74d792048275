"""Tokenizers for moejax data: the byte-level default and wrappers over real libraries.

Every tokenizer exposes the same small surface (``vocab_size``, ``eod``, ``encode``, ``decode``)
so the preprocessor and the loaders never care which library is behind it.
"""

from __future__ import annotations


class ByteTokenizer:
    """UTF-8 bytes as token ids 0..255 plus one end-of-document id 256 (vocab 257).

    The default tokenizer: needs no asset, round-trips any text exactly.
    """

    vocab_size = 257
    eod = 256

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))

    def decode(self, ids) -> str:
        return bytes(int(i) for i in ids if int(i) < 256).decode("utf-8", errors="replace")

    def __repr__(self) -> str:
        return "ByteTokenizer(vocab_size=257, eod=256)"
