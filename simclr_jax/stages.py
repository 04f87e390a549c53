"""What makes a stage a stage: its loss, and which regularisers apply to which parameters.

Every stage runs through the same loop in `train.py`; it differs only in the loss function built
here. A loss function has the signature

    loss_fn(params, batch_stats, batch) -> (loss, (new_batch_stats, metrics))

and runs inside `jax.shard_map` over the `data` mesh axis: `batch` is this device's slice,
returned loss and metrics are global-batch means (pmean over the axis).
"""

from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from simclr_jax import losses
from simclr_jax.sharding import DATA_AXIS

LossFn = Callable[[Any, Any, dict[str, jax.Array]], tuple[jax.Array, tuple[Any, dict]]]


def _path_names(path: tuple) -> list[str]:
  return [str(getattr(k, 'key', getattr(k, 'name', k))) for k in path]


def is_batch_norm_param(path: tuple) -> bool:
  """BatchNorm scale/bias, recognised by the module name (`bn...`/`BatchNorm...`)."""
  return any(n.startswith('bn') or 'BatchNorm' in n or n.endswith('_bn') for n in _path_names(path))


def l2_regularised_params(params: Any, optimizer: str) -> Any:
  """The parameters whose weight decay enters the loss as wd * sum ||w||^2 / 2.

  Official (`model.py`): with LARS, decay is inside the optimizer except for the supervised head,
  whose kernel gets it through the loss; with momentum/Adam-style optimizers the loss carries it
  for every variable that is not a BatchNorm one (biases and heads included). AdamW decays
  decoupled inside the optimizer, so nothing enters the loss.
  """

  def keep(path, leaf):
    names = _path_names(path)
    if optimizer == 'lars':
      return 'head_supervised' in names and names[-1] == 'kernel'
    if optimizer == 'momentum':
      return not is_batch_norm_param(path)
    return False

  mask = jax.tree_util.tree_map_with_path(keep, params)
  return jax.tree.map(lambda m, p: p if m else jnp.zeros((), p.dtype), mask, params)


def _probe_metrics(logits: jax.Array, labels: jax.Array) -> dict[str, jax.Array]:
  """Cross-entropy and top-1 of the probe over rows with a label (>= 0), global means."""
  valid = (labels >= 0).astype(jnp.float32)
  probe_loss = losses.softmax_cross_entropy(logits, jnp.maximum(labels, 0), mask=valid)
  correct = (jnp.argmax(logits, -1) == labels).astype(jnp.float32) * valid
  count = jax.lax.psum(jnp.sum(valid), DATA_AXIS)
  accuracy = jax.lax.psum(jnp.sum(correct), DATA_AXIS) / jnp.maximum(count, 1.0)
  return {'probe_loss': jax.lax.pmean(probe_loss, DATA_AXIS), 'probe_accuracy': accuracy}


def pretrain_loss_fn(
  model: nn.Module,
  *,
  temperature: float,
  weight_decay: float,
  optimizer: str,
  linear_probe: bool,
  global_bn: bool,
) -> LossFn:
  """NT-Xent on the two views, plus the linear probe on stop-gradient features (REFERENCE §4)."""

  def loss_fn(params, batch_stats, batch):
    views = jnp.concatenate([batch['view_a'], batch['view_b']])  # [2B, H, W, 3]
    out, updates = model.apply(
      {'params': params, 'batch_stats': batch_stats}, views, train=True, mutable=['batch_stats']
    )
    z_a, z_b = jnp.split(out['projection'], 2)  # [B, proj_out_dim] each
    contrastive, metrics = losses.nt_xent_with_metrics(z_a, z_b, temperature, axis_name=DATA_AXIS)
    loss = contrastive
    metrics = {'contrastive_loss': contrastive, **metrics}
    if linear_probe:
      labels = jnp.concatenate([batch['label'], batch['label']])  # both views, official [l; l]
      probe = _probe_metrics(out['logits_sup'], labels)
      loss = loss + probe['probe_loss']
      metrics.update(probe)
    if weight_decay > 0:
      loss = loss + weight_decay * losses.l2_loss(l2_regularised_params(params, optimizer))
    new_batch_stats = updates['batch_stats']
    if not global_bn:
      # Per-device statistics; the moving averages are averaged like MirroredStrategy does.
      new_batch_stats = jax.lax.pmean(new_batch_stats, DATA_AXIS)
    metrics['total_loss'] = loss
    return loss, (new_batch_stats, metrics)

  return loss_fn


def eval_fn(model: nn.Module) -> Callable[[Any, Any, dict[str, jax.Array]], dict[str, jax.Array]]:
  """Correct top-1/top-5 counts of the supervised head on a masked eval batch (global sums)."""

  def evaluate(params, batch_stats, batch):
    out = model.apply({'params': params, 'batch_stats': batch_stats}, batch['image'], train=False)
    logits = out['logits_sup'].astype(jnp.float32)
    mask = batch['mask']
    labels = batch['label']
    top1 = (jnp.argmax(logits, -1) == labels).astype(jnp.float32)
    k = min(5, logits.shape[-1])
    top5 = jnp.any(jax.lax.top_k(logits, k)[1] == labels[:, None], axis=-1).astype(jnp.float32)
    sums = {'top1': jnp.sum(top1 * mask), 'top5': jnp.sum(top5 * mask), 'count': jnp.sum(mask)}
    return jax.lax.psum(sums, DATA_AXIS)

  return evaluate

