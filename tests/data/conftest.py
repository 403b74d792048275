"""Shared helpers for the data tests: fixture location and the megatron-core peer venv."""

import json
import os
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
FIXTURES = REPO.parent / "shared" / "fixtures" / "megatron_indexed"
PEER_PY = REPO / ".peer-venv" / "bin" / "python"


@pytest.fixture(scope="session")
def megatron_fixtures():
    """(prefix, expected-json) for each fixture written by megatron-core itself."""
    if not FIXTURES.is_dir():
        pytest.fail(f"shared fixtures missing at {FIXTURES}: the repo must be cloned with shared/ beside it")
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
