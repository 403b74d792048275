"""Tokenize a JSONL corpus into Megatron-compatible ``.bin``/``.idx`` files.

    python -m moejax.data.preprocess --input docs.jsonl --json-keys text \\
        --tokenizer hf:tokenizer.json --output-prefix out --append-eod --workers 8

Like Megatron's ``tools/preprocess_data.py``: one document per JSON line, one output dataset per
JSON key named ``{output_prefix}_{key}_document.{bin,idx}``, token dtype uint16 when the
vocabulary has fewer than 65500 ids else int32. Tokenizers (``--tokenizer TYPE:PATH``): ``byte``
(default), ``hf:tokenizer.json``, ``sentencepiece:tokenizer.model`` (Llama-2 style, BOS first),
``tiktoken:NAME_OR_FILE``. megatron-core reads the output as is.
"""

from __future__ import annotations

import argparse
import gzip
import json
import multiprocessing as mp
import os
import sys
import time

import numpy as np
from tqdm import tqdm

from moejax.config.args import positive
from moejax.data.indexed import IndexedDatasetBuilder, bin_path, idx_path, optimal_dtype
from moejax.data.tokenizer import build_tokenizer

_worker = {}


def _init_worker(spec: str, keys: list[str], append_eod: bool, src: str) -> None:
    _worker.update(tok=build_tokenizer(spec), keys=keys, append_eod=append_eod, src=src)


def _encode(item: tuple[int, bytes]):
    """(line number, raw line) -> (line length in bytes, {key: token ids or None if blank line})."""
    lineno, line = item
    tok, keys = _worker["tok"], _worker["keys"]
    if not line.strip():
        return len(line), None
    try:
        doc = json.loads(line)
    except json.JSONDecodeError as e:
        raise ValueError(f"{_worker['src']} line {lineno}: not valid JSON ({e})") from None
    out = {}
    for k in keys:
        if not isinstance(doc, dict) or k not in doc:
            raise ValueError(f"{_worker['src']} line {lineno}: no key {k!r} (--json-keys); keys "
                             f"present: {sorted(doc) if isinstance(doc, dict) else type(doc).__name__}")
        if not isinstance(doc[k], str):  # str() would turn a null into the text "None"
            raise ValueError(f"{_worker['src']} line {lineno}: key {k!r} holds {json.dumps(doc[k])[:40]}, not "
                             "text; fix or drop that line")
        ids = tok.encode(doc[k])
        if _worker["append_eod"]:
            ids.append(tok.eod)
        out[k] = np.asarray(ids, dtype=np.int64)
    return len(line), out


def _lines(path: str):
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rb") as f:
        for i, line in enumerate(f, 1):
            yield i, line


def preprocess(input_path: str, output_prefix: str, json_keys=("text",), tokenizer: str = "byte",
               append_eod: bool = False, workers: int = 1, chunk_size: int = 64,
               progress: bool = True) -> dict[str, str]:
    """Writes one dataset per key; returns ``{key: path_prefix}``."""
    if not os.path.isfile(input_path):
        raise FileNotFoundError(f"--input {input_path} does not exist")
    tok = build_tokenizer(tokenizer)
    if append_eod and tok.eod is None:
        raise ValueError(f"--append-eod: tokenizer {tokenizer} has no end-of-document token")
    dtype = optimal_dtype(tok.vocab_size)
    out_dir = os.path.dirname(os.path.abspath(output_prefix))
    os.makedirs(out_dir, exist_ok=True)
    prefixes = {k: f"{output_prefix}_{k}_document" for k in json_keys}
    builders = {k: IndexedDatasetBuilder(bin_path(p), dtype=dtype) for k, p in prefixes.items()}
    args = (tokenizer, list(json_keys), append_eod, input_path)
    total = os.path.getsize(input_path) if not input_path.endswith(".gz") else None
    bar = tqdm(total=total, unit="B", unit_scale=True, desc=f"tokenize {os.path.basename(input_path)}",
               disable=not progress, file=sys.stderr)
    docs = tokens = skipped = 0
    t0 = time.time()
    if workers > 1:
        pool = mp.get_context("spawn").Pool(workers, _init_worker, args)
        results = pool.imap(_encode, _lines(input_path), chunksize=chunk_size)
    else:
        pool = None
        _init_worker(*args)
        results = map(_encode, _lines(input_path))
    try:
        for nbytes, enc in results:
            bar.update(nbytes)
            if enc is None:
                skipped += 1
                continue
            for k, ids in enc.items():
                if ids.size:
                    builders[k].add_document(ids, [ids.size])
                    tokens += ids.size
            docs += 1
            if docs % 1000 == 0:
                bar.set_postfix(docs=docs, tok_per_s=f"{tokens / (time.time() - t0):.3g}")
        for k, b in builders.items():
            b.finalize(idx_path(prefixes[k]))
    except BaseException:  # a bad line or a kill: no half-written dataset, an earlier one stays whole
        for b in builders.values():
            b.discard()
        raise
    finally:
        bar.close()
        if pool is not None:
            pool.close()
            pool.join()
    dt = time.time() - t0
    print(f"preprocess: {docs} documents, {tokens} tokens ({dtype.__name__}) in {dt:.1f}s "
          f"({tokens / max(dt, 1e-9):.3g} tokens/s); {skipped} blank lines skipped -> "
          + ", ".join(prefixes.values()), file=sys.stderr)
    return prefixes


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--input", required=True, help="JSONL file (optionally .gz), one document per line")
    p.add_argument("--json-keys", nargs="+", default=["text"], help="keys to tokenize (default: text)")
    p.add_argument("--tokenizer", default="byte",
                   help="TYPE:PATH: byte | hf:tokenizer.json | sentencepiece:tok.model | tiktoken:NAME_OR_FILE")
    p.add_argument("--output-prefix", required=True, help="writes {prefix}_{key}_document.{bin,idx}")
    p.add_argument("--append-eod", action="store_true", help="append the end-of-document token")
    p.add_argument("--workers", type=positive(int), default=1, help="tokenizer processes")
    p.add_argument("--chunk-size", type=positive(int), default=64, help="lines per task sent to a worker")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    a = p.parse_args(argv)
    try:
        preprocess(a.input, a.output_prefix, a.json_keys, a.tokenizer, a.append_eod, a.workers,
                   a.chunk_size, progress=not a.no_progress)
    except (ValueError, FileNotFoundError) as e:
        p.exit(2, f"error: {e}\n")


if __name__ == "__main__":
    main()
