"""The one training loop: state, jitted data-parallel step, evaluation, checkpoints, metrics.

    config -> validate -> mesh -> data -> init or restore -> [step, log, save]* -> eval -> results

The step is `jax.jit(jax.shard_map(step_fn))` over a 1-D `data` mesh: inside, each device sees
its slice of the global batch, BatchNorm reduces its statistics over the axis (global BN), the
NT-Xent loss all-gathers the projections, and the loss is the global-batch mean, so gradients
come out already averaged over devices. The state is replicated and donated.
"""

import json
import os
import time
from typing import Any

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from absl import logging
from clu import metric_writers, parameter_overview, periodic_actions
from jax.sharding import PartitionSpec as P

from simclr_jax import checkpoints, optim, sharding, stages, validation
from simclr_jax.data import input as data_input
from simclr_jax.models import simclr as simclr_model


@flax.struct.dataclass
class TrainState:
  step: jax.Array  # int32 scalar: number of optimizer updates done.
  params: Any
  batch_stats: Any
  opt_state: Any


def build_model(config: ml_collections.ConfigDict, num_classes: int, **overrides: Any):
  model_config = config.model
  cifar_stem = model_config.cifar_stem
  if cifar_stem is None:
    cifar_stem = config.data.image_size <= 32  # Official: CIFAR stem iff image_size <= 32.
  kwargs = dict(
    depth=model_config.depth,
    width_multiplier=model_config.width_multiplier,
    sk_ratio=model_config.sk_ratio,
    cifar_stem=cifar_stem,
    blocks_per_stage=model_config.blocks_per_stage,
    num_proj_layers=model_config.num_proj_layers,
    proj_out_dim=model_config.proj_out_dim,
    num_classes=num_classes,
    ft_proj_selector=model_config.ft_proj_selector,
    supervised_head_stop_gradient=True,
    dtype=jnp.dtype(model_config.compute_dtype),
    bn_axis_name=sharding.DATA_AXIS if model_config.global_bn else None,
    bn_momentum=model_config.bn_momentum,
    remat=model_config.remat,
  )
  kwargs.update(overrides)
  return simclr_model.SimCLRModel(**kwargs)


def build_optimizer(config: ml_collections.ConfigDict, params: Any, num_train_examples: int):
  """The optax transformation and its LR schedule, per REFERENCE §2."""
  train_config, optim_config = config.train, config.optim
  peak_lr = optim.scale_learning_rate(
    optim_config.learning_rate, train_config.global_batch_size, optim_config.learning_rate_scaling
  )
  total_steps, warmup_steps = optim.total_and_warmup_steps(
    num_train_examples,
    train_config.global_batch_size,
    train_config.train_epochs,
    optim_config.warmup_epochs,
    train_config.train_steps,
  )
  schedule = optim.warmup_cosine_schedule(peak_lr, warmup_steps, total_steps)
  tx = optim.create_optimizer(
    optim_config.optimizer,
    learning_rate=schedule,
    weight_decay=optim_config.weight_decay,
    momentum=optim_config.momentum,
    trust_coefficient=optim_config.trust_coefficient,
    params=params,
  )
  return tx, schedule, total_steps


def init_state(model, tx, image_size: int, seed: int, mesh) -> TrainState:
  """Initialises the variables replicated on the mesh (one compile, no host copy)."""

  def init(rng):
    images = jnp.zeros((2, image_size, image_size, 3), jnp.float32)
    variables = model.init(rng, images, train=False)
    params = variables['params']
    return TrainState(
      step=jnp.zeros((), jnp.int32),
      params=params,
      batch_stats=variables.get('batch_stats', {}),
      opt_state=tx.init(params),
    )

  rng = jax.random.fold_in(jax.random.key(seed), 0)  # purpose 0: parameter init
  return jax.jit(init, out_shardings=sharding.replicated(mesh))(rng)


def make_train_step(loss_fn: stages.LossFn, tx, schedule, mesh):
  """jit(shard_map(step)): one optimizer update on a global batch; state donated."""

  def step_fn(state: TrainState, batch):
    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
    (_, (batch_stats, metrics)), grads = grad_fn(state.params, state.batch_stats, batch)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    metrics = dict(metrics)
    metrics['learning_rate'] = schedule(state.step)
    metrics['grad_norm'] = optax.tree.norm(grads)
    metrics['weight_norm'] = optax.tree.norm(params)
    new_state = TrainState(state.step + 1, params, batch_stats, opt_state)
    return new_state, metrics

  sharded = jax.shard_map(
    step_fn, mesh=mesh, in_specs=(P(), P(sharding.DATA_AXIS)), out_specs=(P(), P())
  )
  return jax.jit(sharded, donate_argnums=0)


def make_eval_step(model, mesh):
  evaluate = stages.eval_fn(model)
  sharded = jax.shard_map(
    evaluate, mesh=mesh, in_specs=(P(), P(), P(sharding.DATA_AXIS)), out_specs=P()
  )
  return jax.jit(sharded)


def evaluate(eval_step, state: TrainState, eval_data: data_input.EvalData, mesh) -> dict:
  """Top-1/top-5 over the whole eval split (padded batches are masked out)."""
  totals = {'top1': 0.0, 'top5': 0.0, 'count': 0.0}
  for host_batch in eval_data.batches():
    sums = eval_step(state.params, state.batch_stats, sharding.global_batch_from_host(mesh, host_batch))
    for key, value in jax.device_get(sums).items():
      totals[key] += float(value)
  count = max(totals['count'], 1.0)
  return {
    'top1': totals['top1'] / count,
    'top5': totals['top5'] / count,
    'num_examples': int(totals['count']),
  }


def _mean_metrics(history: list[dict]) -> dict[str, float]:
  history = jax.device_get(history)
  return {k: float(np.mean([m[k] for m in history])) for k in history[0]}


def _check_finite(metrics: dict[str, float], first_step: int, last_step: int) -> None:
  if not all(np.isfinite(v) for v in metrics.values()):
    bad = sorted(k for k, v in metrics.items() if not np.isfinite(v))
    raise FloatingPointError(
      f'Non-finite {", ".join(bad)} between steps {first_step} and {last_step}; '
      'lower optim.learning_rate or check the data (the last finite checkpoint is kept).'
    )


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """Runs (or resumes) pretraining in `workdir`; returns the results written to results.json."""
  start_time = time.time()
  validation.validate_config(config, num_devices=jax.device_count())
  os.makedirs(workdir, exist_ok=True)
  mesh = sharding.make_mesh()
  train_data = data_input.make_pretrain_data(config)
  eval_data = data_input.make_eval_data(config)
  num_classes = train_data.num_classes

  model = build_model(config, num_classes)
  abstract_params = jax.eval_shape(
    lambda: model.init(
      jax.random.key(0),
      jnp.zeros((2, config.data.image_size, config.data.image_size, 3)),
      train=False,
    )['params']
  )
  tx, schedule, total_steps = build_optimizer(config, abstract_params, train_data.num_examples)
  state = init_state(model, tx, config.data.image_size, config.seed, mesh)

  manager = checkpoints.make_manager(workdir, keep=config.train.keep_checkpoints)
  restored = checkpoints.restore_latest(manager, checkpoints.abstract_like(state))
  if restored is not None:
    state, meta = restored
    logging.info('Resuming from step %d (saved at step %s).', int(state.step), meta.get('step'))
  start_step = int(jax.device_get(state.step))

  writer = metric_writers.create_default_writer(workdir, just_logging=jax.process_index() > 0)
  if start_step == 0:
    parameter_overview.log_parameter_overview(state.params)
    writer.write_hparams(_flat_hparams(config))
  steps_per_epoch = train_data.num_examples / config.train.global_batch_size
  logging.info(
    'Training %d steps (%.1f epochs of %d examples, global batch %d) on %d devices from step %d.',
    total_steps, total_steps / steps_per_epoch, train_data.num_examples,
    config.train.global_batch_size, jax.device_count(), start_step,
  )

  loss_fn = stages.pretrain_loss_fn(
    model,
    temperature=config.train.temperature,
    weight_decay=config.optim.weight_decay,
    optimizer=config.optim.optimizer,
    linear_probe=config.train.linear_eval_while_pretraining,
    global_bn=config.model.global_bn,
  )
  train_step = make_train_step(loss_fn, tx, schedule, mesh)
  eval_step = make_eval_step(model, mesh)
  report_progress = periodic_actions.ReportProgress(num_train_steps=total_steps, writer=writer)

  history: list[dict] = []
  last_logged = start_step
  batches = train_data.batches(start_step=start_step)
  step = start_step
  for step in range(start_step + 1, total_steps + 1):
    with jax.profiler.StepTraceAnnotation('train', step_num=step):
      state, metrics = train_step(state, sharding.global_batch_from_host(mesh, next(batches)))
    history.append(metrics)
    report_progress(step)
    if step % config.train.log_every_steps == 0 or step == total_steps:
      summary = _mean_metrics(history)
      _check_finite(summary, last_logged + 1, step)
      summary['epoch'] = step / steps_per_epoch
      writer.write_scalars(step, summary)
      _append_jsonl(workdir, {'step': step, **summary})
      history, last_logged = [], step
    if config.train.eval_every_steps and step % config.train.eval_every_steps == 0:
      eval_metrics = _prefixed('eval', evaluate(eval_step, state, eval_data, mesh))
      writer.write_scalars(step, eval_metrics)
      _append_jsonl(workdir, {'step': step, **eval_metrics})
    if step % config.train.checkpoint_every_steps == 0 or step == total_steps:
      checkpoints.save(manager, step, state, checkpoints.run_meta(config, step))
  manager.wait_until_finished()

  results: dict[str, Any] = {'stage': 'pretrain', 'steps': total_steps}
  results['epochs'] = total_steps / steps_per_epoch
  if config.train.eval_at_end and eval_data is not None:
    eval_results = evaluate(eval_step, state, eval_data, mesh)
    writer.write_scalars(total_steps, _prefixed('eval', eval_results))
    _append_jsonl(workdir, {'step': total_steps, **_prefixed('eval', eval_results)})
    results.update({f'eval_{k}': v for k, v in eval_results.items()})
  results['wall_time_s'] = time.time() - start_time
  results['resumed_from_step'] = start_step
  results['config'] = json.loads(config.to_json_best_effort())
  writer.flush()
  if jax.process_index() == 0:
    with open(os.path.join(workdir, 'results.json'), 'w') as f:
      json.dump(results, f, indent=2)
  logging.info('Results: %s', {k: v for k, v in results.items() if k != 'config'})
  return results


def _prefixed(prefix: str, metrics: dict) -> dict:
  return {f'{prefix}_{k}': v for k, v in metrics.items()}


def _flat_hparams(config: ml_collections.ConfigDict) -> dict[str, Any]:
  """Config as flat scalars (`model.depth`: 50) for TensorBoard's hparams view."""
  flat = flax.traverse_util.flatten_dict(json.loads(config.to_json_best_effort()), sep='.')
  return {k: v if isinstance(v, (int, float, str, bool)) else str(v) for k, v in flat.items()}


METRICS_FILE = 'metrics.jsonl'


def _append_jsonl(workdir: str, record: dict[str, Any]) -> None:
  """One JSON object per logged step in workdir/metrics.jsonl: easy to read and plot."""
  if jax.process_index() == 0:
    with open(os.path.join(workdir, METRICS_FILE), 'a') as f:
      f.write(json.dumps({k: (float(v) if k != 'step' else int(v)) for k, v in record.items()}) + '\n')
