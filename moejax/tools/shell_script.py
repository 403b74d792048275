"""The arguments a Megatron launch script passes to `pretrain_*.py`, read without running it.

Written by hand: no maintained Python library evaluates a bash script without running it (bashlex
only parses, and is GPL). Understood: `\\` line continuations, comments, quoted strings over several
lines, `;` between commands, bash arrays `NAME=( ... )` (over several lines, with `"${NAME[@]}"`
appends) and `NAME+=( ... )`, string variables `NAME=value` (also after export/local/declare),
`${NAME:-default}` / `${NAME-default}` (default used: the script's own default), `$((...))` integer
arithmetic, `${NAME[@]}` expansion, here-documents (`sbatch <<EOF ... EOF`: their lines are read as
script lines), and `if`/`elif`/`else`/`fi` on `[ ]`, `[[ ]]` or `test` conditions (string and
integer comparisons, -z, -n, !, && and ||; a variable the script does not define is empty there).
A condition it cannot evaluate (a file test, a command's status) takes its branch, and says so in
`Launch.assumptions`. Loops, `case` and functions are not understood: their lines are read once, in order.

The launch is the first command that names a `.py` file (`torchrun ... pretrain_gpt.py ARGS`), also
inside a string run by `bash -c "$CMD"` or `eval`; its arguments after the `.py` are returned. Positional
parameters ($1, $2...) and variables the script does not define are left as written (`$DATA_PATH`),
so the caller can say so.
"""
from __future__ import annotations

import ast
import fnmatch
import operator
import re
import shlex
from typing import Iterator, NamedTuple

_VAR = re.compile(r"\$\{(\w+)(\[@\])?(?::?-([^}]*))?\}|\$(\w+)")
_ARITH = re.compile(r"\$\(\((.*?)\)\)")
_OPS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.FloorDiv: operator.floordiv,
        ast.Div: operator.floordiv}
_ASSIGN = re.compile(r"^(?:(?:export|local|readonly|declare(?:\s+-\w+)*)\s+)?(\w+)(\+?)=(.*)$", re.S)
_HEREDOC = re.compile(r"<<-?\s*(['\"]?)([A-Za-z_]\w*)\1")  # a word: `$((1<<20))` is no here-document
_JOINS = ((("||", "-o"), any), (("&&", "-a"), all))
_INT_TESTS = {"-eq": operator.eq, "-ne": operator.ne, "-lt": operator.lt, "-le": operator.le,
              "-gt": operator.gt, "-ge": operator.ge}


class Launch(NamedTuple):
  arguments: list[str]    # the launch's arguments, after its .py file
  assumptions: list[tuple[str, str]]  # (command, what the reader assumed): conditions it could not evaluate


class _Unknown(Exception):
  """A condition this reader cannot evaluate."""


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


def _scan(text: str) -> tuple[str, str | None, list[int]]:
  """(`text` without its `# comments`, the quote still open at its end or None, the places in it of each
  `;` outside quotes, where a command ends (`;;` is none)). A # inside quotes or ${...}, or not at a
  word's start, stays; a backslash escapes the next character outside single quotes."""
  out, quote, depth, k, cuts = [], None, 0, 0, []
  while k < len(text):
    ch = text[k]
    if ch == "\\" and quote != "'" and k + 1 < len(text):
      out += text[k:k + 2]
      k += 2
      continue
    if quote:
      quote = None if ch == quote else quote
    elif ch in "\"'":
      quote = ch
    elif ch == "{":
      depth += 1
    elif ch == "}":
      depth -= 1
    elif ch == "#" and depth <= 0 and (k == 0 or text[k - 1].isspace()):
      while k < len(text) and text[k] != "\n":
        k += 1
      continue
    elif ch == ";" and ";" not in (text[k + 1:k + 2], text[k - 1:k]):
      cuts.append(len(out))
    out.append(ch)
    k += 1
  return "".join(out), quote, cuts


def _commands(text: str) -> Iterator[str]:
  """The script's commands in order: continuations joined, quotes and arrays completed over lines,
  here-document bodies read as script lines."""
  lines = text.replace("\\\n", " ").splitlines()
  i = 0
  while i < len(lines):
    code, quote, cuts = _scan(lines[i])
    array = re.match(r"^\s*(?:export\s+)?\w+\+?=\(", code)
    while (quote or (array and not code.rstrip().endswith(")"))) and i + 1 < len(lines):
      i += 1
      code, quote, cuts = _scan(code + "\n" + lines[i])
    i += 1
    heredoc = _HEREDOC.search(code) if not quote else None
    if heredoc:
      body = []
      while i < len(lines) and lines[i].strip() != heredoc.group(2):
        body.append(lines[i])
        i += 1
      i += 1
      code, cuts = code[:heredoc.start()], [c for c in cuts if c < heredoc.start()]
      yield from _split(code, cuts)
      yield from _commands("\n".join(body))
      continue
    yield from _split(code, [] if array else cuts)


def _split(code: str, cuts: list[int]) -> Iterator[str]:
  """The commands of `code`, cut at `cuts`."""
  ends = cuts + [len(code)]
  yield from (c for c in (code[a:b].strip() for a, b in zip([0] + [c + 1 for c in cuts], ends)) if c)


class _Reader:
  def __init__(self):
    self.strings: dict[str, str] = {}
    self.arrays: dict[str, list[str]] = {}
    self.assumptions: list[tuple[str, str]] = []

  def expand_text(self, text: str, blank_undefined: bool = False) -> str:
    """Variables and arithmetic inside one word or string (arrays join with spaces)."""
    def sub(m):
      name = m.group(1) or m.group(4)
      if name in self.arrays:
        return " ".join(self.arrays[name])
      if name in self.strings:
        return self.strings[name]
      if m.group(3) is not None:
        return self.expand_text(m.group(3).strip('"\''), blank_undefined)
      return "" if blank_undefined else m.group(0)
    text = _VAR.sub(sub, text)
    return _ARITH.sub(lambda m: _arith(m.group(1)), text)

  def words(self, text: str, blank_undefined: bool = False) -> list[str]:
    """Shell words of `text` with `${A[@]}` spread into its elements."""
    out = []
    for word in shlex.split(text):
      m = re.fullmatch(r"\$\{(\w+)\[@\]\}", word)
      if m and m.group(1) in self.arrays:
        out.extend(self.arrays[m.group(1)])
      else:
        out.append(self.expand_text(word, blank_undefined))
    return out

  def run(self, text: str) -> list[str] | None:
    """Reads `text`'s commands in order; the launch's arguments once a command names a .py file."""
    branches: list[list[bool]] = []  # per open `if`: [this branch runs, a branch was taken, the `if` itself runs]
    for cmd in _commands(text):
      head, _, rest = cmd.partition(" ")
      if head in ("then", "do") and rest.strip():  # `then CMD` on one line
        cmd = rest.strip()
        head, _, rest = cmd.partition(" ")
      running = all(b[0] for b in branches)
      if head == "if":
        taken = running and self.condition(rest, cmd)
        branches.append([taken, taken, running])
      elif head == "elif" and branches:
        b = branches[-1]
        b[0] = b[2] and not b[1] and self.condition(rest, cmd)
        b[1] = b[1] or b[0]
      elif head == "else" and branches:
        b = branches[-1]
        b[0], b[1] = b[2] and not b[1], True
        found = self.command(rest.strip()) if rest.strip() and b[0] else None
        if found is not None:
          return found
      elif head == "fi" and branches:
        branches.pop()
      elif running and head not in ("then", "do", "done", "{", "}"):
        found = self.command(cmd)
        if found is not None:
          return found
    return None

  def condition(self, text: str, cmd: str) -> bool:
    try:
      tokens = self.words(text, blank_undefined=True)
      value, k = self._or(tokens, 0)
      if k != len(tokens):
        raise _Unknown
      return value
    except (_Unknown, ValueError, IndexError):
      self.assumptions.append((cmd, "condition not evaluated: its branch taken"))
      return True

  def _or(self, t, k, level=0):
    """Tests joined by `||`/`-o` (level 0) of tests joined by `&&`/`-a` (level 1) of single tests."""
    ops, combine = _JOINS[level]
    operand = (lambda k: self._or(t, k, level + 1)) if level + 1 < len(_JOINS) else (lambda k: self._unary(t, k))
    value, k = operand(k)
    values = [value]
    while k < len(t) and t[k] in ops:
      value, k = operand(k + 1)
      values.append(value)
    return combine(values), k

  def _unary(self, t, k):
    if t[k] == "!":
      value, k = self._unary(t, k + 1)
      return not value, k
    if t[k] in ("[", "[[", "("):
      close = {"[": "]", "[[": "]]", "(": ")"}[t[k]]
      value, k = self._or(t, k + 1)
      if t[k] != close:
        raise _Unknown
      return value, k + 1
    if t[k] == "test":
      return self._or(t, k + 1)
    if t[k] in ("true", "false"):
      return t[k] == "true", k + 1
    if t[k] in ("-z", "-n") and k + 1 < len(t) and t[k + 1] not in ("]", "]]"):
      return (t[k + 1] == "") == (t[k] == "-z"), k + 2
    if k + 2 < len(t) and t[k + 1] in ("=", "==", "!="):
      equal = fnmatch.fnmatchcase(t[k], t[k + 2]) if t[k + 1] == "==" else t[k] == t[k + 2]
      return equal == (t[k + 1] != "!="), k + 3
    if k + 2 < len(t) and t[k + 1] in _INT_TESTS:
      return _INT_TESTS[t[k + 1]](int(t[k]), int(t[k + 2])), k + 3
    if t[k].startswith("-") and len(t[k]) == 2:  # a file test (-f, -d, ...)
      raise _Unknown
    if k + 1 < len(t) and t[k + 1] not in ("]", "]]", ")", "&&", "||", "-a", "-o"):
      raise _Unknown  # a command, whose status is not known here
    return t[k] != "", k + 1

  def command(self, cmd: str) -> list[str] | None:
    try:
      return self._command(cmd)
    except ValueError as e:  # shlex: a quote this reader could not pair
      self.assumptions.append((cmd[:80], f"not read ({e})"))
      return None

  def _command(self, cmd: str) -> list[str] | None:
    m = _ASSIGN.match(cmd)
    if m:
      name, append, value = m.groups()
      if value.startswith("("):  # an array
        items = self.words(value.rstrip()[1:-1])
        self.arrays[name] = (self.arrays.get(name, []) if append else []) + items
      else:
        words = shlex.split(value)
        text = self.expand_text(words[0]) if words else ""
        self.strings[name] = (self.strings.get(name, "") if append else "") + text
      return None
    words = self.words(cmd)
    if not words or words[0] in ("echo", "printf"):
      return None
    for k, w in enumerate(words):
      if w.endswith(".py"):
        return words[k + 1:]
    for k, w in enumerate(words):  # a command inside a string: bash -c "$CMD", eval $CMD
      if (w == "eval" or (k and words[k - 1] == "-c")) and ".py" in " ".join(words[k:]):
        inner = " ".join(words[k + 1:]) if w == "eval" else w
        found = self.run(inner)
        if found is not None:
          return found
    return None


def read_launch(text: str, variables: dict[str, str] | None = None) -> Launch:
  """The launch's arguments (module docstring), with `variables` set as if exported before the script runs
  (they win over its `${NAME:-default}`); ValueError when no command runs a `.py` file."""
  reader = _Reader()
  reader.strings.update(variables or {})
  arguments = reader.run(text)
  if arguments is None:
    held = [f"${{{n}[@]}}" for n, v in reader.arrays.items() if any(w.startswith("--") for w in v)]
    held += [f"${n}" for n, v in reader.strings.items() if re.search(r"(^|\s)--[a-z]", v)]
    hint = (f"; it holds arguments in {', '.join(held)}: pass them after -- "
            f"(-- $(source SCRIPT; echo {held[0]}))" if held else "")
    raise ValueError(f"no command of the script runs a .py file (e.g. torchrun ... pretrain_gpt.py ARGS){hint}")
  return Launch(arguments, reader.assumptions)
