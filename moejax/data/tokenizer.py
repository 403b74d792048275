"""Tokenizers for moejax data: the byte-level default and wrappers over real libraries.

Every tokenizer exposes the same small surface (``vocab_size``, ``eod``, ``encode``, ``decode``)
so the preprocessor and the loaders never care which library is behind it.
"""

from __future__ import annotations

import os


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


ASSETS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "assets")
# GPT-4 (cl100k) split pattern; tiktoken applies it before BPE.
TIKTOKEN_PATTERN = (r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]++[\r\n]*"""
                    r"""|\s*[\r\n]|\s+(?!\S)|\s+""")
_EOD_NAMES = ("<|endoftext|>", "</s>", "<eos>", "<|end_of_text|>", "<|eot_id|>", "[EOS]", "<|im_end|>")


class HFTokenizer:
    """A Hugging Face ``tokenizers`` JSON file (``tokenizer.json``); no special tokens are added
    by ``encode``; ``eod`` is the first of the usual end-of-text tokens the vocabulary has."""

    def __init__(self, path: str):
        from tokenizers import Tokenizer

        _require_file(path, "hf")
        self.tok = Tokenizer.from_file(path)
        self.vocab_size = self.tok.get_vocab_size(with_added_tokens=True)
        vocab = self.tok.get_vocab(with_added_tokens=True)
        self.eod = next((vocab[n] for n in _EOD_NAMES if n in vocab), None)

    def encode(self, text: str) -> list[int]:
        return self.tok.encode(text, add_special_tokens=False).ids

    def decode(self, ids) -> str:
        return self.tok.decode([int(i) for i in ids], skip_special_tokens=False)


class SentencePieceTokenizer:
    """A SentencePiece model, Llama-2 style as in Megatron's ``Llama2Tokenizer``: each document
    starts with BOS, ``eod`` is EOS."""

    def __init__(self, path: str):
        import sentencepiece as spm

        _require_file(path, "sentencepiece")
        self.sp = spm.SentencePieceProcessor(model_file=path)
        self.vocab_size = self.sp.vocab_size()
        self.bos, self.eod = self.sp.bos_id(), self.sp.eos_id()
        if self.eod < 0:
            raise ValueError(f"SentencePiece model {path} has no EOS piece; train it with eos_id >= 0")

    def encode(self, text: str) -> list[int]:
        ids = self.sp.encode(text)
        return [self.bos] + ids if self.bos >= 0 else ids

    def decode(self, ids) -> str:
        return self.sp.decode([int(i) for i in ids])


class TiktokenTokenizer:
    """A tiktoken BPE rank file: a name shipped in ``moejax/data/assets`` (``moejax_bpe_8k``) or a
    path to a ``.tiktoken`` file; ``<|endoftext|>`` is appended as the id after the ranks (eod)."""

    def __init__(self, name_or_path: str):
        import tiktoken
        from tiktoken.load import load_tiktoken_bpe

        path = name_or_path
        if not os.path.isfile(path):
            shipped = os.path.join(ASSETS, f"{name_or_path}.tiktoken")
            if not os.path.isfile(shipped):
                have = sorted(f[:-9] for f in os.listdir(ASSETS) if f.endswith(".tiktoken"))
                raise ValueError(f"tiktoken encoding {name_or_path!r} is neither a file nor one of "
                                 f"the encodings shipped with moejax {have}")
            path = shipped
        ranks = load_tiktoken_bpe(path)
        self.eod = len(ranks)
        self.enc = tiktoken.Encoding(name=os.path.basename(path), pat_str=TIKTOKEN_PATTERN,
                                     mergeable_ranks=ranks, special_tokens={"<|endoftext|>": self.eod})
        self.vocab_size = self.eod + 1

    def encode(self, text: str) -> list[int]:
        return self.enc.encode_ordinary(text)

    def decode(self, ids) -> str:
        return self.enc.decode([int(i) for i in ids])


def _require_file(path: str, kind: str) -> None:
    if not os.path.isfile(path):
        raise ValueError(f"tokenizer file {path!r} for --tokenizer {kind}:PATH does not exist")


TOKENIZER_TYPES = {
    "byte": lambda _: ByteTokenizer(),
    "hf": HFTokenizer, "huggingface": HFTokenizer,
    "sentencepiece": SentencePieceTokenizer, "spm": SentencePieceTokenizer, "llama2": SentencePieceTokenizer,
    "tiktoken": TiktokenTokenizer,
}


def build_tokenizer(spec: str | None):
    """``"TYPE:PATH"`` -> tokenizer. Types: byte (default, no path), hf, sentencepiece (Llama-2
    style), tiktoken (shipped name or file)."""
    if not spec or spec == "byte":
        return ByteTokenizer()
    kind, _, path = spec.partition(":")
    kind = kind.lower()
    if kind not in TOKENIZER_TYPES:
        raise ValueError(f"tokenizer {spec!r}: type {kind!r} unknown; use TYPE:PATH with TYPE in "
                         f"{sorted(TOKENIZER_TYPES)} (e.g. hf:tokenizer.json, sentencepiece:tok.model, "
                         "tiktoken:moejax_bpe_8k, byte)")
    if kind != "byte" and not path:
        raise ValueError(f"tokenizer {spec!r} needs a path: {kind}:PATH")
    return TOKENIZER_TYPES[kind](path)
