"""One run per workdir: WORKDIR/run.lock holds the host and pid of the trainer using it.

A second trainer on the same workdir stops at once naming the first; a lock left by a trainer
that died (its pid is gone from this host, or is now another process) is taken over with a
message. Written by hand: file locks (fcntl) are not reliable on the network file systems runs
often use, and they cannot say who holds them.
"""
from __future__ import annotations

import json
import os
import socket
import sys
import time

from moejax.config import RunError

LOCK_FILE = "run.lock"


def _start_time(pid: int) -> str | None:
  """The kernel's start time of `pid` (tells a reused pid from the original), None off Linux."""
  try:
    with open(f"/proc/{pid}/stat") as f:
      return f.read().rsplit(")", 1)[1].split()[19]
  except (OSError, IndexError):
    return None


def _alive(pid: int, started: str | None) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:
    pass  # exists, owned by someone else
  return started is None or _start_time(pid) in (None, started)


class WorkdirLock:
  """Context manager holding WORKDIR/run.lock for the duration of a run."""

  def __init__(self, workdir: str):
    self.path = os.path.join(os.path.abspath(workdir), LOCK_FILE)
    self.me = {"host": socket.gethostname(), "pid": os.getpid(), "started": _start_time(os.getpid()),
               "since": time.strftime("%Y-%m-%d %H:%M:%S")}

  def __enter__(self) -> WorkdirLock:
    os.makedirs(os.path.dirname(self.path), exist_ok=True)
    while not self._create():
      other = self._read()
      if other is None and not self._unreadable_for(5.0):
        time.sleep(0.1)  # removed or half-written just now: look again
        continue
      other = other or {"pid": -1, "host": self.me["host"], "started": None}  # empty for 5 s: left by a crash
      who = f"pid {other.get('pid')} on {other.get('host')} (since {other.get('since')})"
      if other.get("host") != self.me["host"]:
        raise RunError(f"workdir {os.path.dirname(self.path)} is in use by the trainer with {who}: use another "
                       f"--workdir, or delete {self.path} if no trainer runs there")
      if other["pid"] > 0 and _alive(int(other["pid"]), other.get("started")):
        raise RunError(f"workdir {os.path.dirname(self.path)} is in use by the trainer with {who}: wait for it "
                       "to finish, stop it, or use another --workdir")
      stale = f"{self.path}.stale-{os.getpid()}"
      try:
        os.rename(self.path, stale)  # atomic: of two trainers taking over, one wins the rename
      except FileNotFoundError:
        continue
      os.remove(stale)
      print(f"took over {self.path}: its trainer ({who}) is no longer running", file=sys.stderr)
    return self

  def _create(self) -> bool:
    try:
      fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
      return False
    with os.fdopen(fd, "w") as f:
      json.dump(self.me, f)
    return True

  def _unreadable_for(self, seconds: float) -> bool:
    try:
      return time.time() - os.path.getmtime(self.path) > seconds
    except OSError:
      return False

  def _read(self) -> dict | None:
    try:
      with open(self.path) as f:
        return json.load(f)
    except (OSError, ValueError):
      return None

  def __exit__(self, *exc) -> None:
    if self._read() == self.me:
      os.remove(self.path)
