"""argparse types shared by moejax's command lines: a bad value is argparse's one-line usage error
naming the flag, not a traceback (or a silent 0) further in."""
from __future__ import annotations

import argparse


def positive(kind):
  """The type `kind(text)` > 0 (`kind` int or float)."""
  def parse(text: str):
    try:
      value = kind(text)
    except ValueError:
      value = None
    if value is None or not value > 0:
      raise argparse.ArgumentTypeError(f"{text!r} is not a positive {kind.__name__}")
    return value
  return parse
