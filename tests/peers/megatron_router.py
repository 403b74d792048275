"""Run inside the megatron-core peer venv: Megatron's router functions on given inputs.

Usage: python megatron_router.py IN.npz CASES.json OUT.npz (called by tests/moe/test_megatron_parity.py).
Each case is {"kind": ..., "id": ..., options}; its arrays are IN["<id>/<name>"]; outputs go
to OUT["<id>/<name>"]. Kinds: topk, aux_scores, switch_loss, z_loss, sinkhorn, drop, bias,
router (the whole TopKRouter.routing with losses, counts and the gradient of
sum(probs * w) + attached losses with respect to the logits).
One process, one CPU, a gloo world of size 1 (the router's process groups are stand-ins of size 1).
"""
import json
import sys

import numpy as np
import torch

from megatron.core.transformer.moe import moe_utils
from megatron.core.transformer.moe.moe_utils import MoEAuxLossAutoScaler

torch.cuda.current_device = lambda: torch.device("cpu")  # Megatron puts router buffers on the GPU


class _Group:  # a process group of one rank
  def size(self):
    return 1

  def rank(self):
    return 0


class _PG:
  tp = cp = tp_cp = tp_dp_cp = ep = _Group()


def t(a):
  return torch.from_numpy(np.asarray(a))


def run_router(arr, c):
  from megatron.core.transformer.moe.router import TopKRouter
  from megatron.core.transformer.transformer_config import TransformerConfig
  E, K = c["num_experts"], c["topk"]
  cfg = TransformerConfig(
      num_layers=1, hidden_size=E, num_attention_heads=1, num_moe_experts=E, moe_router_topk=K,
      moe_router_load_balancing_type=c["lb_type"], moe_aux_loss_coeff=c["aux_coeff"],
      moe_z_loss_coeff=c["z_coeff"], moe_router_score_function=c["score_function"],
      moe_router_pre_softmax=c["pre_softmax"], moe_router_num_groups=c["num_groups"],
      moe_router_group_topk=c["group_topk"], moe_router_topk_scaling_factor=c["scaling_factor"],
      moe_router_enable_expert_bias=c["expert_bias"], moe_expert_capacity_factor=c["capacity_factor"],
      moe_token_drop_policy=c["drop_policy"], moe_pad_expert_input_to_capacity=c["pad_to_capacity"],
      moe_router_dtype="fp32", add_bias_linear=False, params_dtype=torch.float32)
  router = TopKRouter(cfg, pg_collection=_PG())
  router.set_layer_number(1)
  router.train()
  if c["expert_bias"]:
    router.expert_bias.copy_(t(arr["expert_bias"]))
  MoEAuxLossAutoScaler.set_loss_scale(torch.tensor(1.0))
  out = {}
  for m in range(c["num_micro"]):  # micro-batches of one step (global aux loss running average)
    moe_utils.get_moe_layer_wise_logging_tracker().clear()  # only this micro-batch's names
    B, S = c["batch"], c["seq"]
    logits_BSE = t(arr[f"logits{m}"]).clone()
    logits = logits_BSE.transpose(0, 1).contiguous().requires_grad_(True)  # Megatron is [S, B, E]
    pad = None
    if f"padding{m}" in arr:
      pad = t(arr[f"padding{m}"]).transpose(0, 1).contiguous()
    probs, routing_map = router.routing(logits, padding_mask=pad)
    w = t(arr[f"w{m}"]).transpose(0, 1).reshape(S * B, E)
    (probs * w).sum().backward()
    to_bs = lambda x: x.detach().reshape(S, B, E).transpose(0, 1).reshape(B * S, E).numpy()
    out[f"probs{m}"], out[f"map{m}"] = to_bs(probs), to_bs(routing_map)
    out[f"grad{m}"] = logits.grad.transpose(0, 1).reshape(B * S, E).numpy()
    tracker = moe_utils.get_moe_layer_wise_logging_tracker()
    for name, v in tracker.items():
      out[f"log_{name}{m}"] = v["values"][0].clone().numpy()
  if c["expert_bias"]:
    out["local_tokens_per_expert"] = router.local_tokens_per_expert.numpy()
  return out


def run(arr, c):
  k = c["kind"]
  if k == "topk":
    probs, rmap = moe_utils.topk_routing_with_score_function(
        t(arr["logits"]), c["topk"], use_pre_softmax=c["pre_softmax"], num_groups=c["num_groups"],
        group_topk=c["group_topk"], scaling_factor=c["scaling_factor"], score_function=c["score_function"],
        expert_bias=t(arr["expert_bias"]) if "expert_bias" in arr else None)
    return {"probs": probs.numpy(), "map": rmap.numpy()}
  if k == "aux_scores":
    rmap, scores = moe_utils.compute_routing_scores_for_aux_loss(
        t(arr["logits"]), c["topk"], c["score_function"],
        padding_mask=t(arr["padding"]) if "padding" in arr else None)
    return {"map": rmap.bool().numpy(), "scores": scores.numpy()}
  if k == "switch_loss":  # Megatron's function multiplies probs by the mask: True = keep
    loss = moe_utils.switch_load_balancing_loss_func(
        t(arr["probs"]), t(arr["tokens_per_expert"]), c["total"], c["topk"], c["num_experts"],
        c["coeff"], padding_mask=~t(arr["padding"]) if "padding" in arr else None)
    return {"loss": loss.numpy()}
  if k == "z_loss":
    loss = moe_utils.z_loss_func(t(arr["logits"]), c["coeff"],
                                 padding_mask=t(arr["padding"]) if "padding" in arr else None)
    return {"loss": loss.numpy()}
  if k == "sinkhorn":
    return {"out": moe_utils.sinkhorn(t(arr["cost"]), tol=c["tol"]).numpy()}
  if k == "drop":
    probs, rmap = moe_utils.apply_router_token_dropping(
        t(arr["probs"]), t(arr["map"]), c["topk"], c["capacity_factor"], c["drop_policy"],
        c["pad_to_capacity"])
    return {"probs": probs.numpy(), "map": rmap.numpy()}
  if k == "bias":  # world size 1: the all-reduce over TPxCPxDP (the world group) is the identity
    moe_utils.parallel_state.get_tensor_and_data_parallel_group = lambda with_context_parallel=False: None
    new = moe_utils.get_updated_expert_bias(t(arr["tokens"]).clone(), t(arr["bias"]), c["rate"])
    return {"bias": new.numpy()}
  if k == "router":
    return run_router(arr, c)
  raise ValueError(f"unknown case kind {k!r}")


def main():
  # Megatron's collectives pass their group through only once torch.distributed is up.
  torch.distributed.init_process_group("gloo", init_method=f"file://{sys.argv[3]}.pg", rank=0, world_size=1)
  data = np.load(sys.argv[1])
  cases = json.load(open(sys.argv[2]))
  out = {}
  for c in cases:
    prefix = f"{c['id']}/"
    arr = {name[len(prefix):]: data[name] for name in data.files if name.startswith(prefix)}
    for name, v in run(arr, c).items():
      out[prefix + name] = np.asarray(v)
  np.savez(sys.argv[3], **out)


if __name__ == "__main__":
  main()
