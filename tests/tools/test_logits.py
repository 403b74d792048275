"""The logits tool's one-line errors (its output is checked against HF in tests/convert)."""
import pytest

from moejax.tools.logits import main


@pytest.mark.parametrize("args,message", [
    (["--tokens", "1,x"], "--tokens '1,x' must be comma-separated integers"),
    (["--tokens", ","], "--tokens is empty"),
    (["--tokens", "1,2"], "has no moejax_config.json: pass --config RECIPE"),
    (["--tokens", "1,2", "--config", "configs/tiny_moe.py"], "no params/ checkpoint there"),
    (["--tokens", "1,2", "--config", "configs/nope.py"], "--config configs/nope.py: no such file"),
])
def test_bad_input_is_one_line(tmp_path, monkeypatch, repo_root, args, message):
  monkeypatch.chdir(repo_root)
  with pytest.raises(SystemExit) as e:
    main(["--params", str(tmp_path), "--out", str(tmp_path / "l.npy"), *args])
  assert message in str(e.value) and "\n" not in str(e.value)
