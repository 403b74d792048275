"""The training objective's token weighting (moejax/train/loss.py): Megatron's per-token loss
(train.calculate_per_token_loss) against its definition written out here, the LM, MTP, aux and z
losses of a step with eod-masked tokens, value and gradients."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import linen as nn

from moejax.parallel.sharding import batch_sharding
from moejax.train.loop import evaluate, make_eval_step
from moejax.train.schedule import compute_params, gradient_accumulation

EOD = 3


def _per_token_objective(model, params, tokens_NBS1):
  """Megatron's per-token objective of a step: every LM and MTP cross-entropy of an unmasked token summed
  over the step and divided by the step's unmasked tokens N; each micro-batch's aux and z losses scaled
  by its tokens over N (Megatron's MoEAuxLossAutoScaler with calculate_per_token_loss). Also the LM loss."""
  keep_N = tokens_NBS1[:, :, :-1] != EOD
  n_loss = jnp.sum(keep_N)
  total = lm_sum = 0.0
  for tokens, keep in zip(tokens_NBS1, keep_N):
    inputs, labels = tokens[:, :-1], tokens[:, 1:]
    logits, stats, mtp_logits = model.apply({"params": params}, inputs, mtp=True)
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
    lm = jnp.sum(jnp.where(keep, ce, 0.0))
    mtp = 0.0
    for k, depth_logits in enumerate(mtp_logits):  # depth k predicts k + 2 ahead: labels and mask k + 1 left
      lab, kp = (jnp.pad(x[:, k + 1:], ((0, 0), (0, k + 1))) for x in (labels, keep))
      mtp += jnp.sum(jnp.where(kp, optax.softmax_cross_entropy_with_integer_labels(depth_logits, lab), 0.0))
    moe = jnp.sum(stats.aux_loss) + jnp.sum(stats.z_loss)
    total += (lm + model.spec.mtp_loss_scaling_factor * mtp / len(mtp_logits)) / n_loss + moe * inputs.size / n_loss
    lm_sum += lm
  return total, lm_sum / n_loss


def _per_token_config(small_moe_config):
  cfg = small_moe_config(router_load_balancing_type="aux_loss", aux_loss_coeff=1e-2, z_loss_coeff=1e-3)
  cfg.model.mtp_num_layers = 1
  cfg.data.update(eod=EOD, eod_mask_loss=True)
  cfg.train.calculate_per_token_loss = True
  return cfg


def _tokens(seed, masked):
  """Two micro-batches, the first with a share `masked` of its tokens eod, the second one eod column."""
  tokens = np.array(jax.random.randint(jax.random.key(seed), (2, 4, 33), 4, 257))
  tokens[0][np.random.default_rng(seed).random(tokens[0].shape) < masked] = EOD
  tokens[1, :, 5] = EOD
  return tokens


def test_per_token_loss_sums_the_step_over_its_loss_tokens(small_moe_config, single_device_setup):
  cfg = _per_token_config(small_moe_config)
  tokens = _tokens(7, 0.5)
  layout, rules, model, _, _, state, _, _ = single_device_setup(cfg)
  with jax.set_mesh(layout.mesh), nn.logical_axis_rules(rules):
    out = jax.jit(lambda p, m, t: gradient_accumulation(model, p, m, t))(state.params, state.moe_state, tokens)
    params = compute_params(state.params, model.spec.dtype)
    (want, want_lm), grads = jax.value_and_grad(_per_token_objective, argnums=1, has_aux=True)(
        model, params, jnp.asarray(tokens))
  np.testing.assert_allclose(out.loss, want, rtol=1e-5)
  np.testing.assert_allclose(out.metrics["lm_loss"], want_lm, rtol=1e-5)
  for g, r in zip(jax.tree.leaves(out.grads), jax.tree.leaves(grads)):
    np.testing.assert_allclose(g, r, rtol=1e-4, atol=1e-7)
  # Megatron's default (the mean of each micro-batch's mean) weighs the two micro-batches equally instead
  cfg.train.calculate_per_token_loss = False
  layout, rules, model, _, _, _, _, _ = single_device_setup(cfg)
  with jax.set_mesh(layout.mesh), nn.logical_axis_rules(rules):
    default = jax.jit(lambda p, m, t: gradient_accumulation(model, p, m, t))(state.params, state.moe_state, tokens)
  assert abs(float(default.metrics["lm_loss"]) - float(want_lm)) > 1e-3


def test_per_token_evaluation_weighs_each_batch_by_its_loss_tokens(small_moe_config, single_device_setup):
  """Evaluation over two batches with different numbers of masked tokens: the summed LM loss of both over
  their loss tokens."""
  cfg = _per_token_config(small_moe_config)
  batches = [_tokens(1, 0.7), _tokens(2, 0.1)]
  layout, rules, model, _, _, state, _, _ = single_device_setup(cfg)
  with jax.set_mesh(layout.mesh), nn.logical_axis_rules(rules):
    eval_jit = jax.jit(make_eval_step(model))
    got = evaluate(lambda p, b: eval_jit(p, b, state.moe_state), state.params, batches, 1, 2,
                   batch_sharding(layout.mesh, rules, 3))["eval_loss"]
    ce_sum = n_loss = 0.0
    for tokens in np.concatenate(batches):
      logits, _ = model.apply({"params": compute_params(state.params, model.spec.dtype)}, tokens[:, :-1])
      keep = tokens[:, :-1] != EOD
      ce_sum += float(jnp.sum(jnp.where(keep, optax.softmax_cross_entropy_with_integer_labels(logits, tokens[:, 1:]),
                                        0.0)))
      n_loss += keep.sum()
  np.testing.assert_allclose(got, ce_sum / n_loss, rtol=1e-5)
