"""The arguments a Megatron launch script passes to `pretrain_*.py`, read without running it.

Understood: `\\` line continuations, comments, bash arrays `NAME=( ... )` (over several lines,
with `"${NAME[@]}"` appends), string variables `NAME=value`, `${NAME:-default}` / `${NAME-default}`
(default used: the script's own default), `$((...))` integer arithmetic and `${NAME[@]}` expansion.
The launch is the first command line that names a `.py` file (`torchrun ... pretrain_gpt.py ARGS`);
its arguments after the `.py` are returned. Positional parameters ($1, $2...) and variables the script
does not define are left as written (`$DATA_PATH`), so the caller can say so.
"""
from __future__ import annotations

import ast
import operator
import re
import shlex

_VAR = re.compile(r"\$\{(\w+)(\[@\])?(?::?-([^}]*))?\}|\$(\w+)")
_ARITH = re.compile(r"\$\(\((.*?)\)\)")
_OPS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.FloorDiv: operator.floordiv,
        ast.Div: operator.floordiv}


def _logical_lines(text: str) -> list[str]:
  return text.replace("\\\n", " ").splitlines()


def _arith(expr: str) -> str:
  def ev(node):
    if isinstance(node, ast.Constant) and isinstance(node.value, int):
      return node.value
    if isinstance(node, ast.BinOp) and type(node.op) in _OPS:
      return _OPS[type(node.op)](ev(node.left), ev(node.right))
    raise ValueError(expr)
  try:
    return str(ev(ast.parse(expr.strip(), mode="eval").body))
  except (ValueError, SyntaxError):
    return f"$(({expr}))"


class _Env:
  def __init__(self):
    self.strings: dict[str, str] = {}
    self.arrays: dict[str, list[str]] = {}

  def expand_text(self, text: str) -> str:
    """Variables and arithmetic inside one word or string (arrays join with spaces)."""
    def sub(m):
      name = m.group(1) or m.group(4)
      if name in self.arrays:
        return " ".join(self.arrays[name])
      if name in self.strings:
        return self.strings[name]
      if m.group(3) is not None:
        return self.expand_text(m.group(3).strip('"\''))
      return m.group(0)
    text = _VAR.sub(sub, text)
    return _ARITH.sub(lambda m: _arith(m.group(1)), text)

  def words(self, text: str) -> list[str]:
    """Shell words of `text` with `${A[@]}` spread into its elements."""
    out = []
    for word in shlex.split(text, comments=True):
      m = re.fullmatch(r"\$\{(\w+)\[@\]\}", word)
      if m and m.group(1) in self.arrays:
        out.extend(self.arrays[m.group(1)])
      else:
        out.append(self.expand_text(word))
    return out


def script_arguments(text: str) -> list[str]:
  """The launch's arguments (module docstring); ValueError when no line runs a `.py` file."""
  env = _Env()
  lines = _logical_lines(text)
  i = 0
  while i < len(lines):
    line = lines[i].strip()
    m = re.match(r"^(?:export\s+)?(\w+)=\((.*)$", line)
    if m:  # an array, possibly over several lines
      body = [_strip_comment(m.group(2)).rstrip()]
      while not body[-1].endswith(")") and i + 1 < len(lines):
        i += 1
        body.append(_strip_comment(lines[i]).rstrip())
      env.arrays[m.group(1)] = env.words("\n".join(body)[:-1])
    elif (m := re.match(r"^(?:export\s+)?(\w+)=(.*)$", line)):
      value = shlex.split(m.group(2), comments=True)
      env.strings[m.group(1)] = env.expand_text(value[0]) if value else ""
    elif re.search(r"\.py\b", _strip_comment(line)):
      words = env.words(line)
      for k, w in enumerate(words):
        if w.endswith(".py"):
          return words[k + 1:]
    i += 1
  raise ValueError("no line of the script runs a .py file (e.g. torchrun ... pretrain_gpt.py ARGS)")


def _strip_comment(line: str) -> str:
  """The line without a trailing `# comment` (a # inside quotes or ${...} stays)."""
  out, quote, depth = [], None, 0
  for k, ch in enumerate(line):
    if quote:
      quote = None if ch == quote else quote
    elif ch in "\"'":
      quote = ch
    elif ch == "{":
      depth += 1
    elif ch == "}":
      depth -= 1
    elif ch == "#" and depth == 0 and (k == 0 or line[k - 1].isspace()):
      break
    out.append(ch)
  return "".join(out)
