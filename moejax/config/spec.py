"""How the config schema is declared and read: frozen spec dataclasses whose fields are config keys.

Each `Spec` subclass names the config section it reads (`class RouterSpec(Spec, section="moe")`);
its fields are keys of that section with their defaults and types, choices written as `Literal`.
A field whose type is another spec nests it (`ModelSpec.moe: MoESpec`). `base_config()` assembles
the ml_collections schema from every spec and `SpecCls.from_config(cfg)` builds one, so a key is
declared once, as a field, and read where it is used.
"""
from __future__ import annotations

import dataclasses
import difflib
import functools
import types
import typing
from typing import Any, ClassVar

import ml_collections

SECTIONS = ("model", "moe", "parallel", "data", "optim", "train", "checkpoint", "logging")
_REGISTRY: list[type[Spec]] = []


class ConfigError(ValueError):
  """One or more config problems; each line names the key and the fix."""

  def __init__(self, problems: list[str]):
    self.problems = list(problems)
    if len(self.problems) == 1:
      super().__init__(f"invalid config: {self.problems[0]}")
    else:
      super().__init__("invalid config:\n  - " + "\n  - ".join(self.problems))


class RunError(RuntimeError):
  """A run that cannot start or go on (workdir in use, damaged or incompatible checkpoints,
  non-finite steps); the message is one line naming the cause and the way out."""


class Spec:
  """Base of the frozen spec dataclasses; subclasses say which config section they read."""
  section: ClassVar[str]

  def __init_subclass__(cls, section: str | None = None, **kwargs):
    super().__init_subclass__(**kwargs)
    if section is not None:
      if section not in SECTIONS:
        raise TypeError(f"{cls.__name__}: unknown config section {section!r}, not one of {SECTIONS}")
      cls.section = section
      _REGISTRY.append(cls)

  def __post_init__(self):
    bad = self.problems()
    if bad:
      raise ConfigError(bad)

  def problems(self) -> list[str]:
    """This spec's impossible values, one line each naming the key and the fix: choices here;
    subclasses add their own checks."""
    return [f"{self.section}.{name}={getattr(self, name)!r} is not one of {opts}"
            for name, opts in _choices(type(self)).items() if getattr(self, name) not in opts]

  @classmethod
  def from_config(cls, cfg) -> Spec:
    """The spec (and its nested specs) with the values of `cfg`; lists become tuples."""
    kwargs = {}
    for f in dataclasses.fields(cls):
      nested = _nested_spec(cls, f.name)
      kwargs[f.name] = nested.from_config(cfg) if nested else _frozen(cfg[cls.section][f.name])
    return cls(**kwargs)

  def replace(self, **changes) -> Spec:
    """A copy with fields changed, looked up in this spec first, then in its nested specs
    (`spec.replace(router_topk=4)` reaches `spec.moe.router`)."""
    own = {f.name for f in dataclasses.fields(self)}
    direct = {k: v for k, v in changes.items() if k in own}
    nested = {}
    for key, value in changes.items():
      if key in own:
        continue
      owners = [f.name for f in dataclasses.fields(self)
                if _nested_spec(type(self), f.name) and key in _all_keys(_nested_spec(type(self), f.name))]
      if len(owners) != 1:
        why = "no" if not owners else f"several ({', '.join(owners)})"
        raise TypeError(f"{type(self).__name__}.replace: {why} field named {key!r}; replace the nested spec itself")
      nested.setdefault(owners[0], {})[key] = value
    for name, sub in nested.items():
      direct[name] = getattr(self, name).replace(**sub)
    return dataclasses.replace(self, **direct)


def _all_keys(cls) -> set[str]:
  keys = set()
  for f in dataclasses.fields(cls):
    nested = _nested_spec(cls, f.name)
    keys |= _all_keys(nested) if nested else {f.name}
  return keys


@functools.cache
def _hints(cls) -> dict[str, Any]:
  return typing.get_type_hints(cls)


def _nested_spec(cls, name: str):
  hint = _hints(cls)[name]
  return hint if isinstance(hint, type) and issubclass(hint, Spec) else None


def _leaf_fields(cls):
  return [f for f in dataclasses.fields(cls) if not _nested_spec(cls, f.name)]


def _choices(cls) -> dict[str, tuple]:
  """{field: allowed values} for fields typed `Literal[...]` (or `Literal[...] | None`)."""
  out = {}
  for f in _leaf_fields(cls):
    hint = _hints(cls)[f.name]
    args = typing.get_args(hint) if _is_union(hint) else (hint,)
    lits = [a for a in args if typing.get_origin(a) is typing.Literal]
    if lits and all(a in lits or a is type(None) for a in args):
      out[f.name] = tuple(v for lit in lits for v in typing.get_args(lit)) + ((None,) if type(None) in args else ())
  return out


def _is_union(hint) -> bool:
  return typing.get_origin(hint) in (typing.Union, types.UnionType)


def choices(cls, name: str) -> tuple:
  """The allowed values of a `Literal` field, e.g. `choices(DispatchSpec, "token_dispatcher_type")`."""
  return _choices(cls)[name]


def _frozen(v):
  if isinstance(v, (list, tuple)):
    return tuple(_frozen(x) for x in v)
  return v


def _schema_value(hint, default):
  """The ConfigDict entry of one field: a typed FieldReference where the default alone would not
  let ml_collections parse an override (None, or a value that may also be a list)."""
  if not _is_union(hint):
    return default
  args = [a for a in typing.get_args(hint) if a is not type(None)]
  if len(args) == 1:
    (a,) = args
    ftype = str if typing.get_origin(a) is typing.Literal else typing.get_origin(a) or a  # tuple[int, ...]: tuple
    return ml_collections.FieldReference(default, field_type=ftype)
  return ml_collections.FieldReference(default, field_type=object)


def base_config() -> ml_collections.ConfigDict:
  """All keys with their defaults, from every registered spec. Recipes change values, never add keys."""
  c = ml_collections.ConfigDict()
  for section in SECTIONS:
    entries = {}
    for cls in _REGISTRY:
      if cls.section != section:
        continue
      for f in _leaf_fields(cls):
        if f.name in entries:
          raise TypeError(f"config key {section}.{f.name} is declared twice ({cls.__name__})")
        entries[f.name] = _schema_value(_hints(cls)[f.name], f.default)
    c[section] = entries
  return c


def config_problems(cfg) -> list[str]:
  """Unknown keys (with a "did you mean"), else every spec's value problems, each once."""
  problems = unknown_keys(cfg)
  if problems:
    return problems
  for cls in _REGISTRY:
    problems += [p for p in _unchecked(cls, cfg).problems() if p not in problems]
  return problems


def _unchecked(cls, cfg):
  """The spec of `cfg` built without running any spec's checks (to collect them all)."""
  obj = object.__new__(cls)
  for f in dataclasses.fields(cls):
    nested = _nested_spec(cls, f.name)
    object.__setattr__(obj, f.name, _unchecked(nested, cfg) if nested else _frozen(cfg[cls.section][f.name]))
  return obj


def unknown_keys(cfg) -> list[str]:
  """Keys the schema lacks (with a "did you mean"), and values where a section belongs."""
  return _unknown_keys(cfg, base_config())


def _unknown_keys(cfg, ref, prefix="") -> list[str]:
  problems = []
  for k in cfg.keys():
    if k not in ref:
      near = difflib.get_close_matches(k, list(ref.keys()), n=1)
      hint = f" (did you mean {prefix}{near[0]}?)" if near else ""
      problems.append(f"unknown key {prefix}{k}{hint}: remove it or use a key from moejax.config.base_config()")
    elif isinstance(ref[k], ml_collections.ConfigDict):
      if not isinstance(cfg[k], ml_collections.ConfigDict):
        problems.append(f"{prefix}{k} must be a section, got {cfg[k]!r}")
      else:
        problems += _unknown_keys(cfg[k], ref[k], f"{prefix}{k}.")
  return problems


def _resolve(cfg: ml_collections.ConfigDict, dotted: str):
  """(parent section, leaf name) of a dotted key, or ConfigError naming the unknown part."""
  node, parts = cfg, dotted.split(".")
  for i, part in enumerate(parts):
    if not isinstance(node, ml_collections.ConfigDict) or part not in node:
      known = list(node.keys()) if isinstance(node, ml_collections.ConfigDict) else []
      near = difflib.get_close_matches(part, known, n=1)
      hint = f" (did you mean {'.'.join(parts[:i] + near)}?)" if near else ""
      raise ConfigError([f"unknown key {'.'.join(parts[:i + 1])}{hint}"])
    if i < len(parts) - 1:
      node = node[part]
  return node, parts[-1]


def apply_overrides(cfg: ml_collections.ConfigDict, overrides: dict[str, Any]) -> None:
  """Sets dotted keys (`{"moe.num_experts": 8}`), with a clear error on unknown ones."""
  for dotted, value in overrides.items():
    node, leaf = _resolve(cfg, dotted)
    node[leaf] = value


def split_none_overrides(argv: list[str]) -> tuple[list[str], list[str]]:
  """(argv without its `--config.a.b=None` flags, their dotted keys). ml_collections parses no None
  into a typed field, so train.py sets these once the recipe is loaded (`apply_overrides`); a key
  whose schema type has no None is refused in one line."""
  nullable = {f"{cls.section}.{f.name}": type(None) in typing.get_args(_hints(cls)[f.name])
              for cls in _REGISTRY for f in _leaf_fields(cls)}
  rest, keys = [], []
  for arg in argv:
    key, _, value = arg.partition("=")
    if not (key.startswith("--config.") and value in ("None", "none")):
      keys = [k for k in keys if f"--config.{k}" != key]  # a later value wins over an earlier None
      rest.append(arg)
      continue
    key = key[len("--config."):]
    if not nullable.get(key, True):  # unknown keys: check_override_keys names them
      node, leaf = _resolve(base_config(), key)
      raise ConfigError([f"{key} cannot be None: give a value (its default is {node[leaf]!r})"])
    keys.append(key)
  return rest, keys


def check_override_keys(argv: list[str]) -> None:
  """Rejects `--config.a.b=v` flags whose key the schema lacks, before flag parsing."""
  ref = base_config()
  for arg in argv:
    if arg.startswith("--config."):
      _resolve(ref, arg[len("--config."):].split("=", 1)[0])
