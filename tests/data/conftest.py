"""Shared helpers for the data tests: fixture location and the megatron-core peer venv."""

import json
import os
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
FIXTURES = Path(__file__).resolve().parent / "fixtures"  # written by megatron-core: fixtures/make_megatron_indexed.py
PEER_PY = REPO / ".peer-venv" / "bin" / "python"


@pytest.fixture(scope="session")
def megatron_fixtures():
    """(prefix, expected-json) for each fixture written by megatron-core itself."""
    out = []
    for name in ("sample_int32", "sample_uint16"):
        with open(FIXTURES / f"{name}.json") as f:
            out.append((str(FIXTURES / name), json.load(f)))
    return out


@pytest.fixture
def run_peer():
    """Runs a Python snippet in the megatron-core peer venv; skips (naming the script) if absent."""
    if not PEER_PY.exists():
        pytest.skip("peer venv missing: build it with `bash .ci/peer_venv.sh` (torch + megatron-core)")
    return _run_peer


def _run_peer(script: str, *args: str, timeout: int = 600) -> str:
    env = dict(os.environ, PYTHONPATH="")
    proc = subprocess.run([str(PEER_PY), "-c", script, *args], capture_output=True, text=True,
                          timeout=timeout, env=env)
    if proc.returncode != 0:
        raise AssertionError(f"peer script failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}")
    return proc.stdout


def _make_indexed(prefix: str, doc_lengths, dtype="int32", start: int = 0, eod: int | None = None):
    """Write a dataset whose token ids are consecutive integers from ``start`` (every token is
    unique, so positions can be traced through the pipeline); one sequence per document, the
    last token of each document replaced by ``eod`` when given."""
    import numpy as np

    from moejax.data.indexed import IndexedDatasetBuilder

    b = IndexedDatasetBuilder(prefix + ".bin", dtype=np.dtype(dtype))
    nxt = start
    for n in doc_lengths:
        toks = np.arange(nxt, nxt + n)
        nxt += n
        if eod is not None and n:
            toks[-1] = eod
        b.add_item(toks)
        b.end_document()
    b.finalize(prefix + ".idx")
    return prefix


def _megatron_dump(tmp_path, run_peer, spec: dict):
    """Megatron-core's datasets for ``spec`` (see megatron_peer_gpt.py), as a dict of arrays."""
    import numpy as np

    spec_path, out = tmp_path / "spec.json", tmp_path / "megatron.npz"
    spec_path.write_text(json.dumps(spec))
    run_peer(open(Path(__file__).with_name("megatron_peer_gpt.py")).read(), str(spec_path), str(out))
    with np.load(out) as z:
        return dict(z)


@pytest.fixture
def make_indexed():
    return _make_indexed


@pytest.fixture
def megatron_dump(tmp_path, run_peer):
    return lambda spec: _megatron_dump(tmp_path, run_peer, spec)
