"""README's code that a reader copies runs as written."""
import re


def test_use_the_modules_block_runs(repo_root):
  text = (repo_root / "README.md").read_text()
  section = text.split("## Use the modules in your own code", 1)[1]
  code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
  scope = {}
  exec(compile(code, "README.md", "exec"), scope)
  assert scope["y"].shape == scope["x"].shape and scope["stats"].aux_loss.shape == ()
