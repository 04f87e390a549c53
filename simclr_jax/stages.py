"""What makes a stage a stage: the registry of stages, their losses, and which parameters train.

`REGISTRY` holds one `Stage` per stage (pretrain, finetune, distill, supervised): a declarative
object naming its config overrides, data, loss, trainable parameters, what it initialises from
and what it reports. Every stage runs through the same loop in `train.py`, which asks the stage
instead of comparing names; adding a stage means adding an entry here (and a config section).

A loss function has the signature

    loss_fn(params, batch_stats, batch, teacher) -> (loss, (new_batch_stats, metrics))

and runs inside `jax.shard_map` over the `data` mesh axis: `batch` is this device's slice,
returned loss and metrics are global-batch means (pmean over the axis). `teacher` holds the
frozen teacher's variables when distilling, else None.

Which parameters train is a boolean pytree (`trainable_mask`); frozen ones enter the loss
through `stop_gradient`, so their gradients are zero and no backward pass runs through them.
"""

import dataclasses
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from simclr_jax import fs, losses
from simclr_jax.sharding import DATA_AXIS

LossFn = Callable[[Any, Any, dict[str, jax.Array], Any], tuple[jax.Array, tuple[Any, dict]]]


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
  """NT-Xent on the two views, plus the linear probe on stop-gradient features (official TF2
  `model.py`: the supervised head on stop_gradient(hiddens))."""

  def loss_fn(params, batch_stats, batch, teacher=None):
    del teacher
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
    loss = loss + _weight_decay_term(params, weight_decay, optimizer)
    metrics['total_loss'] = loss
    return loss, (_finish_batch_stats(updates, global_bn), metrics)

  return loss_fn


def trainable_mask(
  params: Any, *, everything: bool = False, fine_tune_after_block: int = -1,
  ft_proj_selector: int = 0, num_proj_layers: int = 0,
) -> Any:
  """Bool pytree: which parameters a stage trains (official `fine_tune_after_block`, §6).

  `everything` (pretraining) trains every parameter. Otherwise: the encoder groups after
  `fine_tune_after_block` (-1 = all, 0 = stem, 1..4 = block groups; 4 = linear eval, only the
  classifier), the projection-head layers below `ft_proj_selector` (TF2 keeps them trainable;
  frozen too when the encoder is, i.e. at 4), and the classifier. Head layers above the selector
  are unused outside pretraining and stay frozen (otherwise weight decay alone would move them).
  """
  selector = ft_proj_selector % (num_proj_layers + 1)
  after = fine_tune_after_block

  def block_of(names: list[str]) -> int:
    if 'stem' in names:
      return 0
    for name in names:
      if name.startswith('stage') and name[5:].isdigit():
        return int(name[5:])
    return 0

  def trains(path, leaf) -> bool:
    del leaf
    names = _path_names(path)
    if everything or names[0] == 'head_supervised':
      return True
    if names[0] == 'encoder':
      return block_of(names) > after
    if names[0] == 'projection_head':
      layer = int(next(n for n in names if n.startswith('nl_'))[3:])
      return layer < selector and after < 4
    return True

  return jax.tree_util.tree_map_with_path(trains, params)


def _freeze(params: Any, mask: Any) -> Any:
  return jax.tree.map(lambda p, m: p if m else jax.lax.stop_gradient(p), params, mask)


def _weight_decay_term(params, weight_decay: float, optimizer: str) -> jax.Array:
  if weight_decay <= 0:
    return jnp.zeros((), jnp.float32)
  return weight_decay * losses.l2_loss(l2_regularised_params(params, optimizer))


def _finish_batch_stats(updates: dict, global_bn: bool) -> Any:
  if global_bn:
    return updates['batch_stats']
  # Per-device statistics; the moving averages are averaged like MirroredStrategy does.
  return jax.lax.pmean(updates['batch_stats'], DATA_AXIS)


def finetune_loss_fn(
  model: nn.Module, *, mask: Any, weight_decay: float, optimizer: str, global_bn: bool
) -> LossFn:
  """Cross-entropy of the classifier on labelled crop+flip views (finetune, supervised)."""

  def loss_fn(params, batch_stats, batch, teacher=None):
    del teacher
    params = _freeze(params, mask)
    out, updates = model.apply(
      {'params': params, 'batch_stats': batch_stats}, batch['image'], train=True,
      mutable=['batch_stats'],
    )
    metrics = _probe_metrics(out['logits_sup'], batch['label'])
    metrics = {'supervised_loss': metrics['probe_loss'],
               'train_accuracy': metrics['probe_accuracy']}
    loss = metrics['supervised_loss'] + _weight_decay_term(params, weight_decay, optimizer)
    metrics['total_loss'] = loss
    return loss, (_finish_batch_stats(updates, global_bn), metrics)

  return loss_fn


def distill_loss_fn(
  student: nn.Module, teacher: nn.Module, *, mask: Any, temperature: float, label_weight: float,
  weight_decay: float, optimizer: str, global_bn: bool,
) -> LossFn:
  """-sum softmax(teacher / tau) log_softmax(student / tau), plus alpha x labelled CE.

  The teacher runs frozen in inference mode; its variables arrive as the loss's `teacher`
  argument, so they are an input of the compiled step rather than constants baked into it.
  """

  def loss_fn(params, batch_stats, batch, teacher_variables):
    teacher_out = teacher.apply(teacher_variables, batch['image'], train=False)
    teacher_logits = jax.lax.stop_gradient(teacher_out['logits_sup'])
    params = _freeze(params, mask)
    out, updates = student.apply(
      {'params': params, 'batch_stats': batch_stats}, batch['image'], train=True,
      mutable=['batch_stats'],
    )
    distill = jax.lax.pmean(
      losses.distillation_loss(out['logits_sup'], teacher_logits, temperature), DATA_AXIS
    )
    agreement = jax.lax.pmean(
      jnp.mean(jnp.argmax(out['logits_sup'], -1) == jnp.argmax(teacher_logits, -1)), DATA_AXIS
    )
    metrics = {'distill_loss': distill, 'teacher_agreement': agreement}
    loss = distill
    if label_weight > 0:
      labelled = _probe_metrics(out['logits_sup'], batch['label'])
      loss = loss + label_weight * labelled['probe_loss']
      metrics['labelled_loss'] = labelled['probe_loss']
    loss = loss + _weight_decay_term(params, weight_decay, optimizer)
    metrics['total_loss'] = loss
    return loss, (_finish_batch_stats(updates, global_bn), metrics)

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


# ----------------------------------------------------------------------------- the registry


@dataclasses.dataclass(frozen=True)
class Restore:
  """Another stage's workdir that a stage reads variables from, named by a config field.

  The field's value: '' -> this run's `default` stage (None: nothing, a fresh init); the name of
  a stage -> this run's stage of that name; anything else -> the path of a stage workdir.
  """

  field: str  # Dotted config path, e.g. 'finetune.init_from'.
  default: str | None = None

  def value(self, config: ml_collections.ConfigDict) -> str:
    return str(lookup(config, self.field) or '')

  def run_stage(self, config: ml_collections.ConfigDict) -> str | None:
    """The stage of this run it reads, or None (a path, or nothing)."""
    value = self.value(config)
    return value if value in REGISTRY else (self.default if not value else None)

  def source(self, config: ml_collections.ConfigDict, workdir: str) -> str:
    """The stage workdir to read ('' = none)."""
    stage = self.run_stage(config)
    return fs.join(workdir, stage) if stage else self.value(config)


@dataclasses.dataclass(frozen=True)
class Stage:
  """What makes a stage a stage. `train.py`, `run.py`, the data, validation and the plots ask
  this object; none of them compares stage names."""

  name: str
  # Builds the loss: (model, config, trainable mask, teacher model) -> LossFn.
  loss: Callable[..., LossFn]
  # (target, source) config paths: a source section's fields replace the target section's
  # (None keeps the target's value); a source field replaces the target field.
  overrides: tuple[tuple[str, str], ...] = ()
  # Training data: 'simclr' = two augmented views (crop, flip, colour, blur) per image,
  # 'crop_flip' = one crop + flip view.
  views: str = 'crop_flip'
  examples: str = 'all'  # 'all' train images, or 'labelled': the balanced subset (finetune.*).
  # 'all' labels, or 'labelled': -1 outside the labelled subset, none unless `label_weight` > 0.
  labels: str = 'all'
  label_weight: str = ''  # Config field weighting the labelled loss (labels='labelled').
  unlabelled_ok: bool = False  # Runs on unlabeled images (probe, kNN and eval then off).
  # 'everything'; 'to_classifier': encoder, head layers under the classifier and the classifier;
  # 'after_block': as 'to_classifier' after finetune.fine_tune_after_block (official §6).
  trains: str = 'to_classifier'
  probe_head: bool = False  # The supervised head trains on stop_gradient(features).
  init: Restore | None = None  # Encoder + projection head restored from another stage.
  zero_classifier: str = ''  # Config field: zero the classifier after restoring.
  teacher: Restore | None = None  # The frozen teacher (distillation).
  knn: bool = False  # The kNN monitor runs during and after the stage.
  top1_note: str = ''  # What the stage's eval top-1 measures, when not its own classifier.
  baseline: bool = False  # Drawn grey in the per-stage plot: the no-pretraining reference.

  def derive(self, config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """The config this stage trains with: `overrides` applied, locked."""
    derived = ml_collections.ConfigDict(config.to_dict())
    for target, source in self.overrides:
      value = lookup(config, source)
      if isinstance(value, ml_collections.ConfigDict):
        lookup(derived, target).update({k: v for k, v in value.items() if v is not None})
      else:
        parent, _, field = target.rpartition('.')
        lookup(derived, parent)[field] = value
    derived.lock()
    return derived

  @property
  def num_views(self) -> int:
    return 2 if self.views == 'simclr' else 1

  def sections(self) -> set[str]:
    """The stage sections of the config this stage depends on (its workdir's identity)."""
    used = {source.split('.')[0] for _, source in self.overrides}
    used |= {restore.field.split('.')[0] for restore in (self.init, self.teacher) if restore}
    if 'labelled' in (self.examples, self.labels):
      used.add('finetune')
    return used & set(REGISTRY)

  def uses_labels(self, config: ml_collections.ConfigDict) -> bool:
    """Whether the stage trains on labels (a flat folder of unlabeled images cannot serve it)."""
    if self.examples == 'labelled':
      return True
    return self.labels == 'labelled' and lookup(config, self.label_weight) > 0

  def trainable_mask(self, params: Any, config: ml_collections.ConfigDict) -> Any:
    after = config.finetune.fine_tune_after_block if self.trains == 'after_block' else -1
    return trainable_mask(
      params, everything=self.trains == 'everything', fine_tune_after_block=after,
      ft_proj_selector=config.model.ft_proj_selector, num_proj_layers=config.model.num_proj_layers)

  def linear_eval(self, config: ml_collections.ConfigDict) -> bool:
    """Only the classifier trains, so BatchNorm keeps its statistics (frozen_bn)."""
    return self.trains == 'after_block' and config.finetune.fine_tune_after_block >= 4


def lookup(config: ml_collections.ConfigDict, path: str) -> Any:
  """config['a.b.c'] for a dotted path."""
  node = config
  for name in path.split('.'):
    node = node[name]
  return node


def _common(config: ml_collections.ConfigDict) -> dict[str, Any]:
  return dict(weight_decay=config.optim.weight_decay, optimizer=config.optim.optimizer,
              global_bn=config.model.global_bn)


def _contrastive(model, config, trainable, teacher) -> LossFn:
  del trainable, teacher
  return pretrain_loss_fn(model, temperature=config.train.temperature,
                          linear_probe=config.train.linear_eval_while_pretraining,
                          **_common(config))


def _classifier(model, config, trainable, teacher) -> LossFn:
  del teacher
  return finetune_loss_fn(model, mask=trainable, **_common(config))


def _distillation(model, config, trainable, teacher) -> LossFn:
  return distill_loss_fn(model, teacher, mask=trainable, temperature=config.distill.temperature,
                         label_weight=config.distill.label_weight, **_common(config))


_STAGE_SECTION = lambda name: (('optim', f'{name}.optim'), ('train', f'{name}.train'))
_FINETUNE_HEAD = (('model.ft_proj_selector', 'finetune.ft_proj_selector'),)
_FINETUNE_MODEL = _FINETUNE_HEAD + (('model.global_bn', 'finetune.global_bn'),)

REGISTRY: dict[str, Stage] = {stage.name: stage for stage in (
  Stage('pretrain', _contrastive, views='simclr', trains='everything', unlabelled_ok=True,
        probe_head=True, knn=True,
        top1_note='the linear probe trained on stop-gradient features (all labels)'),
  Stage('finetune', _classifier, _STAGE_SECTION('finetune') + _FINETUNE_MODEL,
        examples='labelled', trains='after_block',
        zero_classifier='finetune.zero_init_logits_layer',
        init=Restore('finetune.init_from', default='pretrain')),
  Stage('distill', _distillation,
        _STAGE_SECTION('distill') + _FINETUNE_HEAD + (('model', 'distill.student'),),
        labels='labelled', label_weight='distill.label_weight',
        init=Restore('distill.student_init_from'),
        teacher=Restore('distill.teacher_workdir', default='finetune')),
  Stage('supervised', _classifier, _STAGE_SECTION('supervised') + _FINETUNE_MODEL,
        examples='labelled', baseline=True),
)}
STAGES = tuple(REGISTRY)  # In pipeline order.


def get(name: str) -> Stage:
  return REGISTRY[name]
