"""Non-trainable MoE state (Megatron's router buffers) and the variable collections that hold it.

Each router keeps its state as one variable of the `moe_state` collection, a small pytree that
knows its own end-of-step update:
- `ExpertBias`: the aux-loss-free expert bias (DeepSeek-V3) and this step's token counts;
  after the optimizer step the bias moves by `rate·sign(mean(c) - c)` and the counts reset.
- `GlobalAuxCounts`: token counts and micro-batch count of `global_aux_loss`, reset each step.
- `MaxAttentionLogits` (moejax/layers/qk_clip.py): an attention layer's largest logit per head this
  step, for QK-clip; reset each step.
`finish_step` finds them by type, whatever the module path. Router replay reads expert ids from
`routing_replay` and records them into `routing_record` (moejax/train/replay.py).
"""
from __future__ import annotations

import flax.struct
import jax
import jax.numpy as jnp

from moejax.layers.qk_clip import COLLECTION as MOE_STATE
from moejax.layers.qk_clip import MaxAttentionLogits
ROUTING_REPLAY = "routing_replay"
ROUTING_RECORD = "routing_record"
COLLECTIONS = (MOE_STATE, ROUTING_REPLAY, ROUTING_RECORD)  # scanned with the layers (decoder.py)


def updated_expert_bias(tokens_per_expert, expert_bias, rate):
  """Megatron's `get_updated_expert_bias`: b + rate·sign(mean(c) - c), over the last axis.

  Counts must already be summed over the step (all replicas and micro-batches).
  """
  c = tokens_per_expert.astype(jnp.float32)
  avg = c.sum(-1, keepdims=True) / c.shape[-1]
  return expert_bias + jnp.sign(avg - c) * rate


@flax.struct.dataclass
class ExpertBias:
  expert_bias: jax.Array               # [E] fp32, added to the scores for selection only
  local_tokens_per_expert: jax.Array   # [E] routed pairs this step (forward values: recompute counts once)

  @classmethod
  def zeros(cls, num_experts: int) -> ExpertBias:
    return cls(jnp.zeros((num_experts,), jnp.float32), jnp.zeros((num_experts,), jnp.float32))

  def count(self, tokens_per_expert_E) -> ExpertBias:
    return self.replace(local_tokens_per_expert=self.local_tokens_per_expert + tokens_per_expert_E)

  def finish_step(self, rate: float) -> ExpertBias:
    bias = updated_expert_bias(self.local_tokens_per_expert, self.expert_bias, rate)
    return ExpertBias(bias, jnp.zeros_like(self.local_tokens_per_expert))


@flax.struct.dataclass
class GlobalAuxCounts:
  global_tokens_per_expert: jax.Array  # [E] summed over the step's micro-batches so far
  ga_steps: jax.Array                  # [] micro-batches so far

  @classmethod
  def zeros(cls, num_experts: int) -> GlobalAuxCounts:
    return cls(jnp.zeros((num_experts,), jnp.float32), jnp.zeros((), jnp.float32))

  def finish_step(self, rate: float) -> GlobalAuxCounts:
    return jax.tree.map(jnp.zeros_like, self)


_STATES = (ExpertBias, GlobalAuxCounts, MaxAttentionLogits)


def finish_step(moe_state, bias_update_rate: float):
  """After the optimizer step: update every expert bias from its step counts, zero the counters and
  the attention logits' maxima."""
  if not moe_state:
    return moe_state
  return jax.tree.map(lambda s: s.finish_step(bias_update_rate) if isinstance(s, _STATES) else s, moe_state,
                      is_leaf=lambda x: isinstance(x, _STATES))
