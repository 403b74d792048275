"""Preprocessor: JSONL -> .bin/.idx with each tokenizer; megatron-core reads the output back."""

import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest

from moejax.data.indexed import IndexedDataset
from moejax.data.preprocess import main, preprocess
from moejax.data.tokenizer import (ByteTokenizer, HFTokenizer, SentencePieceTokenizer,
                                   TiktokenTokenizer, build_tokenizer)

TEXTS = [
    "Mixture-of-Experts layers route each token to its top-k experts.",
    "Héllo wörld — ünïcode ✓ and emoji 🚀 survive the round trip.",
    "",
    "def f(x):\n    return x ** 2  # code with newlines\n",
] + [f"document number {i}: " + "lorem ipsum dolor sit amet " * (i % 7 + 1) for i in range(60)]


@pytest.fixture(scope="module")
def jsonl(tmp_path_factory):
    d = tmp_path_factory.mktemp("jsonl")
    p = d / "docs.jsonl"
    with open(p, "w") as f:
        for i, t in enumerate(TEXTS):
            f.write(json.dumps({"text": t, "title": f"t{i}", "id": i}) + "\n")
        f.write("\n")  # a blank line is skipped
    return str(p)


def _expected(tok, texts, append_eod=True):
    out = []
    for t in texts:
        ids = tok.encode(t) + ([tok.eod] if append_eod else [])
        if ids:
            out.append(ids)
    return out


def _read(prefix):
    return [s.tolist() for s in IndexedDataset(prefix)[0:len(IndexedDataset(prefix))]]


def test_byte_tokenizer_two_workers_and_two_keys(jsonl, tmp_path):
    out = preprocess(jsonl, str(tmp_path / "o"), ["text", "title"], "byte", append_eod=True,
                     workers=2, chunk_size=4, progress=False)
    assert out == {"text": str(tmp_path / "o_text_document"), "title": str(tmp_path / "o_title_document")}
    tok = ByteTokenizer()
    assert _read(out["text"]) == _expected(tok, TEXTS)
    assert _read(out["title"]) == _expected(tok, [f"t{i}" for i in range(len(TEXTS))])
    ds = IndexedDataset(out["text"])
    assert ds.dtype == np.uint16 and ds.document_indices.tolist() == list(range(len(TEXTS) + 1))
    assert tok.decode(ds[1]) == TEXTS[1]


def test_cli_with_hf_tokenizer_and_progress_bar(jsonl, tmp_path):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    hf = Tokenizer(models.BPE(unk_token="<unk>"))
    hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    hf.decoder = decoders.ByteLevel()
    hf.train_from_iterator(TEXTS * 3, trainers.BpeTrainer(
        vocab_size=400, special_tokens=["<unk>", "<|endoftext|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False))
    path = str(tmp_path / "tokenizer.json")
    hf.save(path)
    proc = subprocess.run([sys.executable, "-m", "moejax.data.preprocess", "--input", jsonl,
                           "--json-keys", "text", "--tokenizer", f"hf:{path}", "--output-prefix",
                           str(tmp_path / "hf"), "--append-eod", "--workers", "2"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "tokenize docs.jsonl" in proc.stderr and "100%" in proc.stderr   # the tqdm bar
    tok = HFTokenizer(path)
    assert tok.eod == hf.token_to_id("<|endoftext|>")
    got = _read(str(tmp_path / "hf_text_document"))
    assert got == _expected(tok, TEXTS)
    assert got[0][:-1] == hf.encode(TEXTS[0]).ids and hf.decode(got[0][:-1]) == TEXTS[0]


def test_sentencepiece_llama2_style(jsonl, tmp_path):
    import sentencepiece as spm
    model = tmp_path / "sp"
    spm.SentencePieceTrainer.train(sentence_iterator=iter(TEXTS * 5), model_prefix=str(model),
                                   vocab_size=400, model_type="bpe", byte_fallback=True,
                                   bos_id=1, eos_id=2, unk_id=0, pad_id=-1, minloglevel=2)
    spec = f"sentencepiece:{model}.model"
    out = preprocess(jsonl, str(tmp_path / "sp"), ["text"], spec, append_eod=True, progress=False)
    tok = build_tokenizer(spec)
    assert isinstance(tok, SentencePieceTokenizer)
    got = _read(out["text"])
    sp = spm.SentencePieceProcessor(model_file=f"{model}.model")
    assert got[0] == [sp.bos_id()] + sp.encode(TEXTS[0]) + [sp.eos_id()]
    assert got == _expected(tok, TEXTS)
    assert sp.decode(got[1][1:-1]) == TEXTS[1]


def test_tiktoken_shipped_encoding(jsonl, tmp_path):
    out = preprocess(jsonl, str(tmp_path / "tk"), ["text"], "tiktoken:moejax_bpe_8k",
                     append_eod=True, progress=False)
    tok = TiktokenTokenizer("moejax_bpe_8k")
    assert tok.vocab_size == 8193 and tok.eod == 8192
    got = _read(out["text"])
    assert got == _expected(tok, TEXTS)
    for ids, text in zip(got, TEXTS):   # every text yields a document (eod at least)
        assert tok.decode(ids[:-1]) == text
    # a real BPE: English prose of the kind it was trained on compresses ~4x over bytes
    import pydoc_data.topics as topics
    prose = topics.topics["if"] + topics.topics["for"]
    assert len(tok.encode(prose)) < 0.35 * len(prose.encode())


def test_megatron_core_reads_preprocessed_files(jsonl, tmp_path, run_peer):
    out = preprocess(jsonl, str(tmp_path / "m"), ["text"], "tiktoken:moejax_bpe_8k",
                     append_eod=True, workers=2, progress=False)["text"]
    script = ("import json,sys\nfrom megatron.core.datasets.indexed_dataset import IndexedDataset\n"
              "ds=IndexedDataset(sys.argv[1])\n"
              "print(json.dumps({'dtype': str(ds.index.dtype.__name__), 'docs': ds.document_indices.tolist(),"
              " 'seqs': [ds[i].tolist() for i in range(len(ds))]}))\n")
    ref = json.loads(run_peer(script, out).strip().splitlines()[-1])
    ours = IndexedDataset(out)
    assert ref["dtype"] == "uint16" == ours.dtype.name
    assert ref["docs"] == ours.document_indices.tolist()
    assert ref["seqs"] == _read(out)


def test_bad_input_errors(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "ok"}\n{"text": broken\n')
    with pytest.raises(ValueError, match=r"bad.jsonl line 2: not valid JSON"):
        preprocess(str(bad), str(tmp_path / "x"), progress=False)
    bad.write_text('{"body": "no text key"}\n')
    with pytest.raises(ValueError, match=r"line 1: no key 'text' \(--json-keys\); keys present: \['body'\]"):
        preprocess(str(bad), str(tmp_path / "x"), progress=False)
    with pytest.raises(ValueError, match="type 'gpt9' unknown"):
        build_tokenizer("gpt9:foo")
    with pytest.raises(ValueError, match="does not exist"):
        build_tokenizer("hf:/nonexistent/tokenizer.json")
    with pytest.raises(ValueError, match="neither a file nor one of the encodings shipped"):
        build_tokenizer("tiktoken:cl100k_base")
    proc = subprocess.run([sys.executable, "-m", "moejax.data.preprocess", "--input",
                           str(tmp_path / "missing.jsonl"), "--output-prefix", str(tmp_path / "y")],
                          capture_output=True, text=True)
    assert proc.returncode == 2 and "missing.jsonl does not exist" in proc.stderr


@pytest.mark.parametrize("value", ["null", "5", '["a"]'])
def test_a_value_that_is_not_text_is_refused(tmp_path, value):
    """str() tokenized a null as the text "None" and a number as its digits, silently."""
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "ok"}\n{"text": %s}\n' % value)
    with pytest.raises(ValueError, match=rf"bad.jsonl line 2: key 'text' holds {re.escape(value)}, not text"):
        preprocess(str(bad), str(tmp_path / "x"), progress=False)


@pytest.mark.parametrize("flag", ["--workers", "--chunk-size"])
def test_counts_must_be_positive(tmp_path, capsys, flag):
    with pytest.raises(SystemExit) as e:
        main(["--input", str(tmp_path / "a.jsonl"), "--output-prefix", str(tmp_path / "y"), flag, "0"])
    assert e.value.code == 2 and f"argument {flag}: '0' is not a positive int" in capsys.readouterr().err


def test_a_failed_run_leaves_the_earlier_dataset_whole(jsonl, tmp_path):
    """A corpus that breaks off at a bad line, written to the prefix of an earlier dataset: the
    earlier .bin/.idx pair stays as it was (the .bin was overwritten halfway beside the old .idx)
    and nothing else is left behind."""
    prefix = preprocess(jsonl, str(tmp_path / "o"), progress=False)["text"]
    before = {ext: open(prefix + ext, "rb").read() for ext in (".bin", ".idx")}
    bad = tmp_path / "bad.jsonl"
    bad.write_text("".join(json.dumps({"text": f"another corpus {i} " * 9}) + "\n" for i in range(40)) + "oops\n")
    with pytest.raises(ValueError, match="bad.jsonl line 41: not valid JSON"):
        preprocess(str(bad), str(tmp_path / "o"), progress=False)
    assert {ext: open(prefix + ext, "rb").read() for ext in (".bin", ".idx")} == before
    assert sorted(os.listdir(tmp_path)) == ["bad.jsonl", "o_text_document.bin", "o_text_document.idx"]
