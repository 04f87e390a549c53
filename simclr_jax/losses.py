"""Losses: NT-Xent (official SimCLR conventions), cross-entropy, distillation, L2.

All maths runs in float32 whatever the input dtype: the official code is float32 throughout and
the logits, the self-similarity mask and the softmax are the numerically delicate parts
(google-research/simclr).

NT-Xent follows `objective.py` (`add_contrastive_loss`, identical in TF1/TF2) exactly:

* rows are L2-normalised as `x / sqrt(max(sum x^2, 1e-12))` (`tf.math.l2_normalize`);
* across replicas both views are gathered in replica-major order, and local row `i` on replica
  `r` has its positive at global column `i + r * B`;
* self-similarities in the `aa`/`bb` blocks are pushed out of the softmax with `LARGE_NUM = 1e9`;
* the cross-entropy runs over the `2N` columns `[ab | aa]` (resp. `[ba | bb]`), and the loss is
  `mean(loss_a) + mean(loss_b)`, NOT divided by 2.

Only the local rows are compared against the gathered columns, so a device holds `B x N` logits,
never `N x N`.
"""

from typing import Any

import jax
import jax.numpy as jnp

# Official LARGE_NUM (`objective.py`). Logits are float32 here, where 1e9 is exact enough: any
# logit minus 1e9 rounds to -1e9 and exp() of it underflows to exactly 0, with no inf or NaN (it
# would also be finite in bfloat16, whose range matches float32; float16 would overflow).
LARGE_NUM = 1e9

# Official `tf.math.l2_normalize` epsilon: bounds the norm of an all-zero row away from 0.
_L2_NORM_EPSILON = 1e-12

# Official `metrics.py`: entropy is -sum p * log(p + 1e-8).
_ENTROPY_EPSILON = 1e-8


def l2_normalize(x: jax.Array, axis: int = -1) -> jax.Array:
  """`x / sqrt(max(sum x^2, 1e-12))` in float32, as `tf.math.l2_normalize`."""
  x = x.astype(jnp.float32)
  squared_norm = jnp.sum(jnp.square(x), axis=axis, keepdims=True)
  return x * jax.lax.rsqrt(jnp.maximum(squared_norm, _L2_NORM_EPSILON))


def _gather_columns(h: jax.Array, axis_name: str | None) -> tuple[jax.Array, jax.Array]:
  """All replicas' rows `[N, dim]` (replica-major) and this replica's row offset `r * B`.

  `all_gather`'s transpose is a reduce-scatter, so gradients w.r.t. the gathered columns flow back
  to the replica that produced them, like the official scatter + all-reduce SUM (`objective.py`).
  """
  if axis_name is None:
    return h, jnp.zeros((), jnp.int32)
  gathered = jax.lax.all_gather(h, axis_name, tiled=True)
  return gathered, jax.lax.axis_index(axis_name) * h.shape[0]


def _mean_over_replicas(x: jax.Array, axis_name: str | None) -> jax.Array:
  return x if axis_name is None else jax.lax.pmean(x, axis_name)


def _cross_entropy_rows(logits: jax.Array, labels: jax.Array) -> jax.Array:
  """Per-row `-log softmax(logits)[label]` for integer labels, float32."""
  log_probs = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
  return -jnp.take_along_axis(log_probs, labels[:, None].astype(jnp.int32), axis=-1)[:, 0]


def nt_xent_with_metrics(
  z_a: jax.Array,
  z_b: jax.Array,
  temperature: float,
  axis_name: str | None = None,
) -> tuple[jax.Array, dict[str, jax.Array]]:
  """NT-Xent loss and the official contrastive metrics.

  Args:
    z_a: `[B, dim]` projection outputs of view 1 for the local batch, not normalised.
    z_b: `[B, dim]` projection outputs of view 2, same images in the same order.
    temperature: the softmax temperature `tau` (official 0.1 ImageNet, 0.5 CIFAR).
    axis_name: mesh axis to gather negatives over; set it when called inside `jax.shard_map`
      over that axis. None = single device (the local batch is the global batch).

  Returns:
    `(loss, metrics)`. `loss = mean(loss_a) + mean(loss_b)`; with `axis_name` it is the mean over
    the global batch (pmean of the local means; all replicas hold the same `B`). `metrics` holds
    `contrast_acc` (argmax over the `ab` block only == positive, `metrics.py`) and
    `contrast_entropy` (of `softmax(ab)`), also global means with `axis_name`.
  """
  if z_a.ndim != 2 or z_a.shape != z_b.shape:
    raise ValueError(f'nt_xent expects two [batch, dim] arrays of equal shape, got '
                     f'{z_a.shape} and {z_b.shape}')
  h1 = l2_normalize(z_a)  # [B, dim]
  h2 = l2_normalize(z_b)  # [B, dim]
  local_batch = h1.shape[0]
  h1_all, offset = _gather_columns(h1, axis_name)  # [N, dim]
  h2_all, _ = _gather_columns(h2, axis_name)  # [N, dim]
  global_batch = h1_all.shape[0]

  positives = jnp.arange(local_batch, dtype=jnp.int32) + offset  # [B]
  self_mask = jax.nn.one_hot(positives, global_batch, dtype=jnp.float32)  # [B, N]
  # Official order: divide by tau first, then subtract LARGE_NUM on the self-similarity.
  logits_aa = h1 @ h1_all.T / temperature - LARGE_NUM * self_mask  # [B, N]
  logits_bb = h2 @ h2_all.T / temperature - LARGE_NUM * self_mask  # [B, N]
  logits_ab = h1 @ h2_all.T / temperature  # [B, N]
  logits_ba = h2 @ h1_all.T / temperature  # [B, N]

  # Softmax over 2N columns; the positive sits in the ab (resp. ba) block at column `positives`.
  loss_a = _cross_entropy_rows(jnp.concatenate([logits_ab, logits_aa], axis=1), positives)
  loss_b = _cross_entropy_rows(jnp.concatenate([logits_ba, logits_bb], axis=1), positives)
  loss = _mean_over_replicas(jnp.mean(loss_a) + jnp.mean(loss_b), axis_name)

  # Official metrics.py: accuracy and entropy look at the ab block alone (N columns).
  logits_ab = jax.lax.stop_gradient(logits_ab)
  accuracy = jnp.mean((jnp.argmax(logits_ab, axis=1) == positives).astype(jnp.float32))
  probs = jax.nn.softmax(logits_ab, axis=1)
  entropy = -jnp.mean(jnp.sum(probs * jnp.log(probs + _ENTROPY_EPSILON), axis=1))
  metrics = {
    'contrast_acc': _mean_over_replicas(accuracy, axis_name),
    'contrast_entropy': _mean_over_replicas(entropy, axis_name),
  }
  return loss, metrics


def nt_xent(
  z_a: jax.Array,
  z_b: jax.Array,
  temperature: float,
  axis_name: str | None = None,
) -> jax.Array:
  """NT-Xent loss only; see `nt_xent_with_metrics`."""
  return nt_xent_with_metrics(z_a, z_b, temperature, axis_name)[0]


def softmax_cross_entropy(
  logits: jax.Array,
  labels: jax.Array,
  mask: jax.Array | None = None,
) -> jax.Array:
  """Mean cross-entropy over the rows with `mask > 0` (all rows without a mask).

  Args:
    logits: `[batch, classes]`, any float dtype (computed in float32).
    labels: `[batch]` integer class ids.
    mask: optional `[batch]` 0/1 weights, e.g. the padding mask of an eval batch. The mean is over
      the weighted rows, like `tf.losses.softmax_cross_entropy(weights=mask)` (TF1 `model.py`).
  """
  per_row = _cross_entropy_rows(logits, labels)
  if mask is None:
    return jnp.mean(per_row)
  mask = mask.astype(jnp.float32)
  # max(count, 1): an all-padding batch gives 0, not NaN.
  return jnp.sum(per_row * mask) / jnp.maximum(jnp.sum(mask), 1.0)


def distillation_loss(
  student_logits: jax.Array,
  teacher_logits: jax.Array,
  temperature: float,
) -> jax.Array:
  """`mean_batch(-sum softmax(teacher / tau) * log_softmax(student / tau))`.

  The teacher is a fixed target (stop-gradient), as in the official distillation colab
  (`colabs/distillation_self_training.ipynb`, which uses tau = 1 and so no tau^2 factor matters).
  """
  teacher_probs = jax.nn.softmax(
    jax.lax.stop_gradient(teacher_logits.astype(jnp.float32)) / temperature, axis=-1
  )
  student_log_probs = jax.nn.log_softmax(student_logits.astype(jnp.float32) / temperature, axis=-1)
  return jnp.mean(-jnp.sum(teacher_probs * student_log_probs, axis=-1))


def l2_loss(tree: Any) -> jax.Array:
  """`sum ||w||^2 / 2` over all leaves (`tf.nn.l2_loss` summed), float32."""
  total = jnp.zeros((), jnp.float32)
  for w in jax.tree.leaves(tree):
    total = total + jnp.sum(jnp.square(w.astype(jnp.float32)))
  return 0.5 * total
