"""Optimisers and learning-rate schedules with the official SimCLR conventions (google-research/
simclr: `lars_optimizer.py`, TF2 `model.py` `WarmUpAndCosineDecay`).

* `lars`: the official `lars_optimizer.py` update (classic momentum, no Nesterov, eeta 1e-3),
  written out as one optax transformation so that every convention is visible in one place.
* `sgd_momentum`, `adamw`: thin optax wrappers.
* `scale_learning_rate`, `total_and_warmup_steps`, `warmup_cosine_schedule`: `WarmUpAndCosineDecay`
  (TF2 `model.py`) / `learning_rate_schedule` (TF1 `model_util.py`), which agree.
"""

import math
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

# A float or an optax schedule `step -> lr`.
LearningRate = float | optax.Schedule
# A pytree of bools shaped like the params, or a callable `params -> that pytree` (as optax masks).
Mask = Any | Callable[[Any], Any]

OPTIMIZERS = ('lars', 'momentum', 'adamw')


class LarsState(NamedTuple):
  count: jax.Array  # int32 scalar: updates done so far, the 0-based step fed to the schedule.
  momentum: Any  # Pytree like params: the official `<var>/Momentum` slot.


def default_mask(params: Any) -> Any:
  """True for tensors with ndim > 1: kernels, not biases or BatchNorm scale/bias."""
  return jax.tree.map(lambda p: jnp.ndim(p) > 1, params)


def _path_string(path: tuple) -> str:
  return '/'.join(str(getattr(k, 'key', getattr(k, 'name', k))) for k in path)


def weight_decay_mask_for(params: Any, exclude: Sequence[str] = ('head_supervised',)) -> Any:
  """True for params with ndim > 1 whose path contains none of `exclude`.

  Official (`model.py`): `exclude_from_weight_decay = ['batch_normalization', 'bias',
  'head_supervised']`, and layer adaptation defaults to the same list; names are matched with
  `re.search` on the variable name, so here a substring of the '/'-joined flax path excludes.
  BatchNorm scale/bias and biases are recognised by ndim <= 1, which holds for every one of them.
  """

  def keep(path, param):
    name = _path_string(path)
    return jnp.ndim(param) > 1 and not any(pattern in name for pattern in exclude)

  return jax.tree_util.tree_map_with_path(keep, params)


def _resolve_mask(mask: Mask | None, params: Any) -> Any:
  if mask is None:
    return default_mask(params)
  return mask(params) if callable(mask) else mask


def lars(
  learning_rate: LearningRate,
  weight_decay: float,
  momentum: float = 0.9,
  trust_coefficient: float = 1e-3,
  weight_decay_mask: Mask | None = None,
  trust_ratio_mask: Mask | None = None,
) -> optax.GradientTransformation:
  """The official LARS (`lars_optimizer.py`, `use_nesterov=False`, `classic_momentum=True`).

  Per parameter `w` with gradient `g` (norms are Frobenius norms over the whole tensor):

      if decay(w):  g = g + weight_decay * w
      tr = trust_coefficient * ||w|| / ||g||  if adapt(w) and ||w|| > 0 and ||g|| > 0  else 1
      v = momentum * v + (lr * tr) * g
      w = w - v

  Args:
    learning_rate: a float, or a schedule evaluated at the 0-based update count (the first update
      uses `schedule(0)`, which is 0 under warm-up, as official).
    weight_decay: decay added to the gradient before the trust ratio.
    momentum: classic momentum coefficient.
    trust_coefficient: LARS `eeta`.
    weight_decay_mask: which params get decay (pytree of bools or `params -> pytree`); None =
      ndim > 1. Use `weight_decay_mask_for` for the official exclusions (adds `head_supervised`).
    trust_ratio_mask: which params get the trust ratio; None = ndim > 1 (official default: the same
      list as weight decay).
  """

  def init_fn(params):
    return LarsState(count=jnp.zeros((), jnp.int32), momentum=jax.tree.map(jnp.zeros_like, params))

  def update_fn(updates, state, params=None):
    if params is None:
      raise ValueError('lars needs params: call update(grads, state, params)')
    decay_mask = _resolve_mask(weight_decay_mask, params)
    adapt_mask = _resolve_mask(trust_ratio_mask, params)
    lr = learning_rate(state.count) if callable(learning_rate) else learning_rate

    def update_one(grad, param, trace, decay, adapt):
      # Masks may hold Python or array bools, hence jnp.where rather than `if`.
      # Official: weight decay is added BEFORE the trust ratio (lars_optimizer.py).
      grad = jnp.where(decay, grad + weight_decay * param, grad)
      param_norm = jnp.linalg.norm(param)
      grad_norm = jnp.linalg.norm(grad)
      # Official: no epsilon; a ratio of 1 where either norm is 0 (e.g. zero-initialised).
      use_ratio = jnp.logical_and(adapt, (param_norm > 0) & (grad_norm > 0))
      trust_ratio = jnp.where(use_ratio, trust_coefficient * param_norm / grad_norm, 1.0)
      # Classic momentum: the lr sits INSIDE the buffer, so a changing schedule only affects new
      # gradients, not the accumulated velocity (lars_optimizer.py, classic_momentum=True).
      new_trace = momentum * trace + ((lr * trust_ratio) * grad).astype(trace.dtype)
      return -new_trace, new_trace

    treedef = jax.tree.structure(updates)
    trees = (updates, params, state.momentum, decay_mask, adapt_mask)
    results = [update_one(*leaves) for leaves in zip(*(treedef.flatten_up_to(t) for t in trees))]
    new_updates = treedef.unflatten([update for update, _ in results])
    new_trace = treedef.unflatten([trace for _, trace in results])
    count = optax.safe_int32_increment(state.count)
    return new_updates, LarsState(count=count, momentum=new_trace)

  return optax.GradientTransformation(init_fn, update_fn)


def sgd_momentum(
  learning_rate: LearningRate, momentum: float = 0.9, nesterov: bool = True
) -> optax.GradientTransformation:
  """SGD with (Nesterov) momentum; official `optimizer=momentum` uses Nesterov.

  optax keeps the lr outside the buffer, exactly like TF1 `MomentumOptimizer`; TF2 Keras `SGD`
  puts it inside, which only differs while the lr changes. Weight decay is an L2 loss term here
  (official `model.py`), see `stages.l2_regularised_params`.
  """
  return optax.sgd(learning_rate, momentum=momentum, nesterov=nesterov)


def adamw(
  learning_rate: LearningRate, weight_decay: float, mask: Mask | None = None
) -> optax.GradientTransformation:
  """AdamW with decoupled decay on `mask` (None = ndim > 1). Not an official SimCLR option."""
  mask = default_mask if mask is None else mask
  return optax.adamw(learning_rate, weight_decay=weight_decay, mask=mask)


def scale_learning_rate(base_lr: float, global_batch_size: int, scaling: str) -> float:
  """Official LR scaling: 'linear' = base * batch / 256, 'sqrt' = base * sqrt(batch)."""
  if scaling == 'linear':
    return base_lr * global_batch_size / 256.0
  if scaling == 'sqrt':
    return base_lr * math.sqrt(global_batch_size)
  raise ValueError(f"optim.learning_rate_scaling={scaling!r} is unknown; use 'linear' or 'sqrt'")


def total_and_warmup_steps(
  num_examples: int,
  global_batch_size: int,
  train_epochs: float,
  warmup_epochs: float,
  train_steps: int = 0,
) -> tuple[int, int]:
  """`(total_steps, warmup_steps)` exactly as official (`model.py` / `run.py`).

  total = train_steps or num_examples * train_epochs // batch + 1  (note the +1)
  warmup = int(round(warmup_epochs * num_examples // batch))
  """
  total_steps = int(train_steps or num_examples * train_epochs // global_batch_size + 1)
  warmup_steps = int(round(warmup_epochs * num_examples // global_batch_size))
  return total_steps, warmup_steps


def warmup_cosine_schedule(peak_lr: float, warmup_steps: int, total_steps: int) -> optax.Schedule:
  """Linear warm-up from 0, then cosine decay to 0 at `total_steps` (official, alpha 0).

  lr(step) = step / warmup * peak                                  for step < warmup
           = peak * 0.5 * (1 + cos(pi * min(step - warmup, T - warmup) / (T - warmup)))  else
  With warmup == 0 it is a pure cosine from step 0. `step` is the 0-based update count.
  """
  # Guards only the degenerate T == warmup (the official code would divide by zero).
  decay_steps = max(total_steps - warmup_steps, 1)

  def schedule(step):
    step = jnp.asarray(step, jnp.float32)
    warmup_lr = step / max(warmup_steps, 1) * peak_lr
    progress = jnp.minimum(step - warmup_steps, decay_steps) / decay_steps
    cosine_lr = peak_lr * 0.5 * (1.0 + jnp.cos(jnp.pi * progress))
    return jnp.where(step < warmup_steps, warmup_lr, cosine_lr)

  return schedule


def create_optimizer(
  name: str,
  learning_rate: LearningRate,
  weight_decay: float,
  momentum: float = 0.9,
  trust_coefficient: float = 1e-3,
  params: Any = None,
  exclude: Sequence[str] = ('head_supervised',),
  trainable: Any = None,
) -> optax.GradientTransformation:
  """The optimizer named by `optim.optimizer`: 'lars' | 'momentum' | 'adamw'.

  For LARS the decay/adaptation mask is `weight_decay_mask_for(params, exclude)` (official:
  BatchNorm, biases and the supervised head get neither; the head's kernel is decayed through the
  loss instead). `params` may be None: the mask is then computed from the params at each update.
  For 'momentum' weight decay lives in the loss (official), so `weight_decay` is unused here.
  `trainable` (a bool pytree like params) removes frozen parameters from decay, so that with
  their zero (stop-gradient) gradients their update is exactly zero.
  """

  def and_trainable(mask):
    if trainable is None:
      return mask
    if callable(mask):
      return lambda p: jax.tree.map(lambda a, b: bool(a) and b, mask(p), trainable)
    return jax.tree.map(lambda a, b: bool(a) and b, mask, trainable)

  if name == 'lars':
    if params is None:
      mask = and_trainable(lambda p: weight_decay_mask_for(p, exclude))
    else:
      mask = and_trainable(weight_decay_mask_for(params, exclude))
    return lars(learning_rate, weight_decay, momentum, trust_coefficient, mask, mask)
  if name == 'momentum':
    return sgd_momentum(learning_rate, momentum, nesterov=True)
  if name == 'adamw':
    # Decoupled decay on every kernel, the supervised head included: no L2 term enters the loss.
    return adamw(learning_rate, weight_decay, mask=and_trainable(default_mask))
  raise ValueError(f'optim.optimizer={name!r} is unknown; use one of {OPTIMIZERS}')
