"""Activation memory: which values a layer names, which submodules it recomputes, and the
checkpoint policy of a scanned block (`train.recompute_*`, `train.offload_modules`, FSDP).

Megatron's two mechanisms map onto JAX as follows:
- selective recomputation of a submodule (`recompute_modules`: core_attn, moe_act, layernorm,
  mlp, moe, shared_experts, mla_up_proj) keeps only that submodule's inputs and recomputes its
  internals in the backward pass: a function through `recompute_after_cotangent` (`remat_fn`:
  core_attn, moe_act, mla_up_proj), a Flax module through `nn.remat` (`remat_module`);
- fine-grained offloading (`offload_modules`) names the input of each submodule with
  `checkpoint_name` (`tag`) and runs the scanned block under `block_policy`
  (`save_and_offload_only_these_names`): the named values listed for offloading go to pinned host
  memory, the other named values stay on the device, and what has no name (elementwise
  intermediates, norm statistics, the attention softmax, weights gathered by FSDP and anything
  derived from them) is recomputed. FSDP uses the same policy so that no gathered weight is kept
  for the backward pass.

Names: Megatron's offload modules, each the input of that submodule: attn_norm (block input),
qkv_linear (normed input of the projections), core_attn (q, k, v), attn_proj (attention output),
mlp_norm (residual after attention), expert_fc1 (rows sorted by expert), moe_act (expert fc1
output); and `mlp_act` (a dense or shared-expert MLP's fc1 outputs), kept so that the block
policy never recomputes a matmul of the MLPs.
"""
from __future__ import annotations

import functools

import jax
from flax import linen as nn
from jax.ad_checkpoint import checkpoint_name

from moejax.config import ModelSpec

OFFLOADABLE = ("attn_norm", "qkv_linear", "core_attn", "attn_proj", "mlp_norm", "expert_fc1", "moe_act")
NAMES = OFFLOADABLE + ("mlp_act",)


def keep_all_but_varying_casts(prim, *_, **__) -> bool:
  """Checkpoint policy for a `shard_map` with replicated inputs (the MoE layer's expert weights
  over edp): keeps every value except the casts that mark those inputs as varying
  (`pvary`/`pcast`), so the backward pass reads the weights themselves. Without it, JAX 0.11-0.12
  keeps the cast copy as a residual, and a scan stacks one copy of every layer's weights."""
  return prim.name not in ("pvary", "pcast")


def tag(x, name: str):
  """Names an activation for the block's checkpoint policy (identity otherwise)."""
  return checkpoint_name(x, name)


def recomputes(spec: ModelSpec, module: str) -> bool:
  r = spec.recompute
  return r.recompute_granularity == "selective" and module in r.recompute_modules


def remat_fn(spec: ModelSpec, module: str, fn):
  """`fn` recomputed in the backward pass when `module` is selected for recomputation."""
  return recompute_after_cotangent(fn) if recomputes(spec, module) else fn


def recompute_after_cotangent(fn):
  """`fn` (positional array arguments; None allowed) keeping only its inputs for the backward
  pass, where its values are recomputed once its output's cotangent exists. Every traced value
  `fn` uses must be an argument: a closed-over one raises (it would be a constant of the
  recomputation, out of its trace inside a scan's backward pass).

  Written by hand because `jax.checkpoint` ties the recomputation only to the kept inputs, which
  exist from the forward pass on, so XLA may schedule it early and hold the recomputed values
  as long as the originals: on an H100 `moe_act` recomputed that way held 0.9 GB *more* than
  keeping the activation (benchmarks/RESULTS.md). Here the inputs and the cotangent pass one
  optimization barrier together, so nothing is recomputed before the backward pass needs it."""
  captured = jax.tree.leaves([c.cell_contents for c in fn.__closure__ or ()])
  if any(isinstance(c, jax.core.Tracer) for c in captured):
    raise ValueError(f"recomputed function {getattr(fn, '__qualname__', fn)} closes over a traced value: "
                     "pass every array it uses as an argument")
  return functools.partial(_recomputed, fn)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _recomputed(fn, *args):
  return fn(*args)


def _recomputed_fwd(fn, *args):
  return fn(*args), args


def _recomputed_bwd(fn, args, g):
  args, g = jax.lax.optimization_barrier((args, g))
  return jax.vjp(fn, *args)[1](g)


_recomputed.defvjp(_recomputed_fwd, _recomputed_bwd)


def remat_module(spec: ModelSpec, module: str, cls):
  """The Flax module class `cls`, recomputed when `module` is selected for recomputation."""
  return nn.remat(cls) if recomputes(spec, module) else cls


def block_policy(spec: ModelSpec):
  """Checkpoint policy of one scanned block, or None when the block needs none (no offloading,
  no FSDP: every value is kept): see the module docstring."""
  offload = tuple(m for m in NAMES if m in spec.recompute.offload_modules)
  if not offload and not spec.sharding.fsdp:
    return None
  return jax.checkpoint_policies.save_and_offload_only_these_names(
      names_which_can_be_saved=[n for n in NAMES if n not in offload], names_which_can_be_offloaded=list(offload),
      offload_src="device", offload_dst="pinned_host")
