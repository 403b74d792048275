"""When a run stops before train.train_iters, with every process after the same step: on SIGTERM or
SIGINT (to any process), after train.exit_duration_in_mins (process 0's clock) or at a multiple of
train.exit_interval (Megatron's --exit-signal-handler, --exit-duration-in-mins, --exit-interval).
The loop reads and saves the agreed step, then returns.

Processes must stop after the same step: one that stopped alone left the others waiting in the next
step's collectives and its own save uncommitted, a hang until the job was killed with the steps
since the last save lost. Process 0 decides. A request (its own signal or clock, or another
process's signal posted in jax.distributed's key-value store) becomes a stop after `dispatched + 2`
steps, posted before process 0 dispatches another. Every step ends in a global reduction of its
metrics and a process reads step k's metrics before it dispatches step k + 2, so no process is more
than two steps ahead of process 0's dispatches, and each reads the posted stop before its next
dispatch. Written here because JAX has no cross-process stop; the store is the one
`jax.distributed` starts (Orbax's multi-process saves use it too).
"""
from __future__ import annotations

import itertools
import signal
import time

import jax

_RUNS = itertools.count()  # each train() in a process gets its own keys; every process counts alike


class StopAgreement:
  """`allows(k)` before dispatching step k (0-based): False once the run is to stop, and from then on
  `stop_after` is the step count to stop at and `reason` says why."""

  def __init__(self, exit_duration_in_mins: float | None = None, exit_interval: int | None = None):
    self._signalled = False
    for sig in (signal.SIGTERM, signal.SIGINT):
      signal.signal(sig, self._handle)
    self._deadline = None if exit_duration_in_mins is None else time.monotonic() + 60 * exit_duration_in_mins
    self._minutes, self._interval = exit_duration_in_mins, exit_interval
    self._first: int | None = None  # the first step this run dispatches (a resume's, for exit_interval)
    self.stop_after: int | None = None
    self.reason = ""
    self._posted = False
    self._process = jax.process_index()
    self._prefix = f"moejax/stop/{next(_RUNS)}/"
    self._client = _client() if jax.process_count() > 1 else None

  def _handle(self, signum, frame):
    self._signalled = True

  def allows(self, k: int) -> bool:
    self._first = k if self._first is None else self._first
    if self.stop_after is None:
      self._agree(k)
    return self.stop_after is None or k < self.stop_after

  def _local_reason(self, signal_to: str = "") -> str:
    if self._signalled:
      return f"on signal{signal_to}"
    if self._deadline is not None and time.monotonic() >= self._deadline:
      return f"after train.exit_duration_in_mins={self._minutes:g}"
    return ""

  def _agree(self, k: int) -> None:
    if self._interval and k > self._first and k % self._interval == 0:  # the same on every process
      self.stop_after, self.reason = k, f"at train.exit_interval={self._interval}"
      return
    if self._client is None:
      reason = self._local_reason()
      if reason:  # after at least one step of this run, as Megatron checks after each step
        self.stop_after, self.reason = max(k, self._first + 1), reason
      return
    if self._process == 0:
      reason = self._local_reason(" to process 0")
      if not reason:  # another process's signal
        requests = self._client.key_value_dir_get(self._prefix + "request/")
        reason = f"on signal to process {requests[0][0].rsplit('/', 1)[-1]}" if requests else ""
      if reason:
        self.stop_after, self.reason = k + 2, reason
        self._client.key_value_set(self._prefix + "at", f"{k + 2} {reason}")
      return
    if self._signalled and not self._posted:
      self._client.key_value_set(self._prefix + f"request/{self._process}", str(k))
      self._posted = True
    try:
      posted = self._client.key_value_try_get(self._prefix + "at")
    except Exception:  # noqa: BLE001  not posted yet (NOT_FOUND)
      return
    at, reason = posted.split(" ", 1)
    self.stop_after, self.reason = int(at), reason


def _client():
  from jax._src import distributed  # the coordination service's client; no public API for its store
  return distributed.global_state.client
