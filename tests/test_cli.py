"""What a newcomer meets on the way, each a one-line message naming the fix, never a traceback."""
import os
import subprocess
import sys

import pytest


def _train(repo, tmp_path, *args, workdir=None):
  env = {**os.environ, "JAX_NUM_CPU_DEVICES": "1"}
  cmd = [sys.executable, "train.py", "--workdir", str(workdir or tmp_path / "w"), *args]
  return subprocess.run(cmd, cwd=repo, env=env, capture_output=True, text=True, timeout=300)


def _one_line_error(out, needle):
  assert out.returncode != 0
  lines = [ln for ln in out.stderr.strip().splitlines() if ln.strip()]
  assert "Traceback" not in out.stderr, out.stderr[-2000:]
  assert len(lines) == 1 and needle in lines[0], out.stderr[-2000:]


def test_no_python_312_is_one_line(tmp_path, repo_root):
  shims = tmp_path / "bin"
  shims.mkdir()
  for name in ("python3.12", "python3"):  # a pyenv shim with no version selected, and an old python
    (shims / name).write_text("#!/bin/sh\necho 'pyenv: python3.12: command not found' >&2\nexit 127\n")
    (shims / name).chmod(0o755)
  env = {"PATH": str(shims), "HOME": str(tmp_path), "PYENV_ROOT": str(tmp_path / "pyenv")}
  out = subprocess.run(["/bin/bash", str(repo_root / "scripts/find-python")], env=env, capture_output=True,
                       text=True, timeout=60)
  assert out.returncode == 1 and out.stdout == ""
  assert out.stderr.count("\n") == 1 and "install Python 3.12" in out.stderr


@pytest.mark.parametrize("args,needle", [
    (["--config", "configs/nope.py"], "--config configs/nope.py: no such file"),
    (["--config", "NOGET"], "defines no get_config(): add one"),
    (["--config", "configs/tiny_moe.py", "--config.checkpoint.save_interval=0"],
     "invalid config: checkpoint.save_interval=0 must be a positive integer"),
    (["--config", "configs/tiny_moe.py", "--config.optim.lr=-0.1"], "invalid config: optim.lr=-0.1 must be > 0"),
    (["--config", "configs/tiny_moe.py", "parallel.ep=4"],
     "train.py takes no positional arguments (got 'parallel.ep=4'): a setting is a flag, e.g. --config.parallel.ep=4"),
])
def test_bad_recipe_or_setting(repo_root, tmp_path, args, needle):
  if "NOGET" in args:
    (tmp_path / "noget.py").write_text("from moejax.config import base_config\nCONFIG = base_config()\n")
    args = ["--config", str(tmp_path / "noget.py")]
  _one_line_error(_train(repo_root, tmp_path, *args), needle)


def test_workdir_not_writable(repo_root, tmp_path):
  (tmp_path / "file").write_text("")
  out = _train(repo_root, tmp_path, "--config", "configs/tiny_moe.py", workdir=tmp_path / "file" / "run")
  _one_line_error(out, f"--workdir {tmp_path / 'file' / 'run'} is not writable (")


def test_load_params_of_a_converted_checkpoint_brings_its_config(tmp_path, repo_root):
  """Without --config, `--config.checkpoint.load_params=DIR` uses DIR's moejax_config.json
  (configs/converted.py); weights from elsewhere need --config, in one line."""
  sys.path.insert(0, str(repo_root))
  from train import config_from_checkpoint
  (tmp_path / "conv").mkdir()
  (tmp_path / "conv" / "moejax_config.json").write_text("{}")
  argv = [f"--config.checkpoint.load_params={tmp_path / 'conv'}", "--workdir=w"]
  assert config_from_checkpoint(argv) == [f"--config={repo_root / 'configs/converted.py'}:{tmp_path / 'conv'}", *argv]
  assert config_from_checkpoint(["--config", "x.py", *argv]) == ["--config", "x.py", *argv]
  out = _train(repo_root, tmp_path, f"--config.checkpoint.load_params={tmp_path}")
  _one_line_error(out, "has no moejax_config.json (not written by `python -m moejax.convert`): pass --config RECIPE")
