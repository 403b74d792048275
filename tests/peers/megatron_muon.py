"""Run inside the megatron-core peer venv: megatron-core's TensorParallelMuon (over NVIDIA's
emerging_optimizers) on given weights and gradients. Usage: python megatron_muon.py IN.npz OUT.npz
(called by tests/train/test_muon.py). IN holds `config` (JSON: lr, weight_decay and the Muon keyword
arguments) and, per weight NAME (Megatron's [out, in] layout), `NAME` and its gradients `NAME/grads`
[steps, out, in], with `qkv` the one taken for linear_qkv (split by `qkv_split_shapes` when split_qkv);
OUT holds each weight after every step, `NAME` [steps, out, in].

emerging_optimizers 0.3.0 (the one on PyPI) renamed two arguments megatron-core 0.16.1 passes
(`use_nesterov` → `nesterov`, newton_schulz_tp's `mode` → `tp_mode`) and needs Python 3.12's
typing.override and triton at import; the adapters below do no math. Megatron's Muon never calls the
triton kernels (no use_syrk).
"""
import functools
import json
import sys
import types
import typing

import numpy as np
import torch
import typing_extensions

typing.override = typing_extensions.override
_kernels = types.ModuleType("emerging_optimizers.triton_kernels")
_kernels.HAS_TRITON_340 = False
sys.modules["emerging_optimizers.triton_kernels"] = _kernels

from emerging_optimizers.orthogonalized_optimizers import OrthogonalizedOptimizer  # noqa: E402
from emerging_optimizers.orthogonalized_optimizers import muon_utils  # noqa: E402
from megatron.core.optimizer import muon  # noqa: E402

_init = OrthogonalizedOptimizer.__init__


@functools.wraps(_init)
def _renamed_init(self, *args, use_nesterov=False, **kwargs):
  _init(self, *args, nesterov=use_nesterov, **kwargs)


OrthogonalizedOptimizer.__init__ = _renamed_init
muon.newton_schulz_tp = lambda x, steps, coefficient_type, tp_group, partition_dim=None, mode="duplicated": (
    muon_utils.newton_schulz_tp(x, steps, coefficient_type, tp_group, partition_dim, tp_mode=mode))


def run(data):
  cfg = json.loads(str(data["config"]))
  names = [k for k in data.files if k != "config" and "/" not in k]
  params = {n: torch.nn.Parameter(torch.tensor(data[n])) for n in names}
  if "qkv" in params:
    params["qkv"].is_qkv = True
  opt = muon.TensorParallelMuon(list(params.values()), is_qkv_fn=lambda p: getattr(p, "is_qkv", False), **cfg)
  steps = data[f"{names[0]}/grads"].shape[0]
  out = {n: [] for n in names}
  for s in range(steps):
    for n, p in params.items():
      p.grad = torch.tensor(data[f"{n}/grads"][s])
    opt.step()
    for n, p in params.items():
      out[n].append(p.detach().numpy().copy())
  return {n: np.stack(v) for n, v in out.items()}


if __name__ == "__main__":
  np.savez(sys.argv[2], **run(np.load(sys.argv[1])))
