"""Multi-process launch: `jax.distributed` from explicit values or the SLURM environment.

One process per host drives all its devices (one per GPU also works: JAX_LOCAL_DEVICE_IDS).
Each process then reads only the rows of the global batch its devices hold
(moejax.data.loader `process_rows`), and Orbax writes checkpoints cooperatively.
"""
from __future__ import annotations

import os

import jax


def distributed_args(coordinator_address: str = "", num_processes: int = 0, process_id: int = -1
                     ) -> dict | None:
  """The `jax.distributed.initialize` arguments of this launch, or None for a single process.

  Explicit values (train.py flags, else the environment JAX_COORDINATOR_ADDRESS,
  JAX_NUM_PROCESSES, JAX_PROCESS_ID) win; otherwise a SLURM job step of several tasks (`srun`)
  is detected by JAX itself (coordinator on the first node, ids from SLURM_PROCID).
  """
  env = os.environ
  address = coordinator_address or env.get("JAX_COORDINATOR_ADDRESS", "")
  count = num_processes or int(env.get("JAX_NUM_PROCESSES", "0"))
  pid = process_id if process_id >= 0 else int(env.get("JAX_PROCESS_ID", "-1"))
  if address or count or pid >= 0:
    missing = [name for name, v in (("coordinator address", address), ("process count", count),
                                    ("process id", pid >= 0)) if not v]
    if missing:
      raise ValueError(f"multi-process launch: the {', '.join(missing)} is missing; give all three "
                       "(--coordinator_address, --num_processes, --process_id or JAX_COORDINATOR_ADDRESS, "
                       "JAX_NUM_PROCESSES, JAX_PROCESS_ID)")
    if count == 1:
      return None
    return dict(coordinator_address=address, num_processes=count, process_id=pid)
  if int(env.get("SLURM_NTASKS", "1")) > 1 and "SLURM_STEP_ID" in env:
    return {}  # JAX's SLURM cluster detection fills in every value
  return None


def initialize(coordinator_address: str = "", num_processes: int = 0, process_id: int = -1) -> bool:
  """Starts `jax.distributed` when the launch has several processes (before JAX touches a device);
  returns whether it did. On CPU the processes exchange over gloo."""
  args = distributed_args(coordinator_address, num_processes, process_id)
  if args is None:
    return False
  jax.config.update("jax_cpu_collectives_implementation", "gloo")  # CPU backend only; the default since JAX 0.12
  jax.distributed.initialize(**args)
  return True
