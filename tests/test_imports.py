"""The package keeps its layered import order (import-linter contract in pyproject.toml)."""
import pathlib
import subprocess
import sys

REPO = pathlib.Path(__file__).resolve().parents[1]


def test_import_layers_contract_is_kept():
  lint = pathlib.Path(sys.executable).with_name("lint-imports")
  out = subprocess.run([str(lint), "--no-cache"], cwd=REPO, capture_output=True, text=True, timeout=300)
  assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-2000:]
  assert "1 kept, 0 broken" in out.stdout
