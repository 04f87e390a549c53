"""The one training loop: state, jitted data-parallel step, evaluation, checkpoints, metrics.

    config -> validate -> mesh -> data -> init / restore -> [step, log, save]* -> eval -> results

The step and its state (`step.py`) are donated each call; the state is replicated, or with
`train.shard_state` its parameters and optimizer state are split over the devices.

Every stage (pretrain, finetune, distill, supervised) runs through `train_and_evaluate`; a stage
differs only in its data, its loss (`stages.py`), which parameters train, and what it restores.
"""

import dataclasses
import json
import time
from typing import Any, Callable

import flax
import jax
import ml_collections
import numpy as np
import optax
from absl import logging
from clu import parameter_overview

from simclr_jax import (checkpoints, evaluation, fs, optim, perf, profiling, progress, sharding,
                        stages, validation)
from simclr_jax import workdir as workdir_lib
from simclr_jax.data import input as data_input
from simclr_jax.data import views
from simclr_jax.models import load
# The step and its state live in step.py; these names stay importable from train.
from simclr_jax.step import (  # noqa: F401 - re-exported
  TrainState, abstract_state, init_state, make_train_step, state_shardings, teacher_shardings)

METRICS_FILE = workdir_lib.METRICS_FILE
RESULTS_FILE = workdir_lib.RESULTS_FILE


def build_optimizer(
  config: ml_collections.ConfigDict, params: Any, num_train_examples: int, trainable: Any = None
):
  """The optax transformation, its LR schedule and the number of steps (official
  `lars_optimizer.py`, `WarmUpAndCosineDecay`)."""
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
    trainable=trainable,
  )
  if config.train.skip_nonfinite_updates:
    # Official code has no such guard; optax.apply_if_finite drops NaN/Inf updates (and stops
    # after 10 in a row) instead of corrupting the parameters.
    tx = optax.apply_if_finite(tx, max_consecutive_errors=10)
  return tx, schedule, total_steps


@dataclasses.dataclass(frozen=True)
class StageParts:
  """What a stage compiles: its model, which parameters train, its loss (no data, no values)."""

  model: Any
  trainable: Any  # Bool pytree like the params.
  loss_fn: stages.LossFn


def build_stage_parts(
  config: ml_collections.ConfigDict, stage: stages.Stage, num_classes: int, teacher_model=None
) -> StageParts:
  """The model, trainable mask and loss of `stage` (`config` is the stage's derived config)."""
  model = load.build(config, num_classes, supervised_head_stop_gradient=stage.probe_head,
                     frozen_bn=stage.linear_eval(config))
  trainable = stage.trainable_mask(
    load.abstract_variables(model, config.data.image_size)['params'], config)
  return StageParts(model, trainable, stage.loss(model, config, trainable, teacher_model))


def without_label_uses(
  config: ml_collections.ConfigDict, stage: stages.Stage
) -> ml_collections.ConfigDict:
  """The config of a stage whose training images have no labels: no probe, kNN or eval."""
  if not stage.unlabelled_ok:
    raise validation.ConfigError(
      f'{stage.name} needs labels, but the training images of data.dataset='
      f'{config.data.dataset!r} have none (a flat folder); use root/<split>/<class>/ folders or '
      'only the stages that need no labels')
  logging.warning('%s: the training images have no labels, so the linear probe, kNN monitor and '
                  'evaluation are off (they need labels).', stage.name)
  config = ml_collections.ConfigDict(config.to_dict())
  config.train.linear_eval_while_pretraining = False
  config.train.eval_at_end = False
  config.train.eval_every_steps = 0
  config.knn.enabled = False
  config.knn.every_steps = 0
  config.lock()
  return config


@dataclasses.dataclass(frozen=True)
class Init:
  """What a stage starts from: restored variables (else a fresh init), the frozen teacher."""

  variables: dict[str, Any] | None = None  # {'params', 'batch_stats'}: host arrays.
  teacher: Any = None  # load.Loaded of the teacher's stage workdir.
  source: str = ''  # Where they came from, for results.json.


class _Prepared:
  """A stage ready to train: its data, parts (model, trainable mask, loss), initial variables and
  teacher, and its config adjusted to the data."""

  def __init__(self, config: ml_collections.ConfigDict, stage: stages.Stage, init: Init, mesh):
    self.stage = stage
    self.data = data_input.make_train_data(config, stage, mesh)
    num_classes = self.data.num_classes
    if num_classes == 0:  # Unlabeled images (a flat folder).
      config = without_label_uses(config, stage)
      num_classes = 1  # A head that never trains: checkpoints keep one layout.
    self.config = config
    teacher_model = init.teacher.model if init.teacher else None
    parts = build_stage_parts(config, stage, num_classes, teacher_model)
    self.model, self.trainable, self.loss_fn = parts.model, parts.trainable, parts.loss_fn
    self.init_variables = init.variables  # Host arrays or None (fresh init).
    self.teacher_variables = init.teacher.variables if init.teacher else None


def train_and_evaluate(
  config: ml_collections.ConfigDict, workdir: str, stage: str = 'pretrain', init: Init = Init(),
  on_done: Callable[[ml_collections.ConfigDict, str, dict], None] | None = None,
  plan_row: dict[str, Any] | None = None,
) -> dict[str, Any]:
  """Runs (or resumes) one stage in `workdir`; returns the results written to results.json.

  `config` is the stage's derived config (`stages.Stage.derive`); `init` what it starts from.
  `on_done(config, workdir, variables)` runs at the end with the final variables on the host
  (`run.py` draws the plots there: this layer never imports the plotting one). `plan_row`, the
  stage's row of a plan.json made for this config and slice, is compared with the measured step
  time once after warm-up.
  """
  start_time = time.time()
  validation.validate_config(config, num_devices=jax.device_count(),
                             num_processes=jax.process_count())
  mesh = sharding.make_mesh()
  workdir_lib.check_writable(workdir)
  workdir_lib.check_same_run(config, workdir, stage=stage)
  prepared = _Prepared(config, stages.get(stage), init, mesh)
  requested_config, config = config, prepared.config  # The run is recorded as requested.
  if prepared.stage.knn and config.knn.enabled:
    bank_size = min(prepared.data.num_examples, config.knn.max_train_examples)
    if config.knn.k > bank_size:
      raise validation.ConfigError(
        f'knn.k={config.knn.k} is larger than the {bank_size} train examples of the memory bank; '
        f'use knn.k <= {bank_size}')
  eval_data = data_input.make_eval_data(config)
  abstract_params = load.abstract_variables(prepared.model, config.data.image_size)['params']
  tx, schedule, total_steps = build_optimizer(
    config, abstract_params, prepared.data.num_examples, prepared.trainable
  )
  shard_state = config.train.shard_state
  state = init_state(prepared.model, tx, config.data.image_size, config.seed, mesh,
                     prepared.init_variables, shard_state=shard_state)
  teacher = prepared.teacher_variables
  if teacher is not None:  # The frozen teacher: laid out like the parameters.
    teacher = jax.device_put(teacher, teacher_shardings(teacher, mesh, shard_state))

  manager = checkpoints.make_manager(workdir, keep=config.train.keep_checkpoints)
  restored = checkpoints.restore_latest(manager, checkpoints.abstract_like(state))
  earlier_segments_s = 0.0  # Wall time of the runs before this resume.
  if restored is not None:
    state, meta = restored
    earlier_segments_s = float(meta.get('elapsed_s', 0.0))
    logging.info('%s: resuming from step %d (saved at step %s).', stage, int(state.step),
                 meta.get('step'))
  start_step = int(jax.device_get(state.step))

  writer = progress.create_writer(workdir, just_logging=jax.process_index() > 0,
                                  final_step=total_steps)
  if start_step == 0:
    _write_parameter_table(state.params, workdir)
    writer.write_hparams(_flat_hparams(config))
  steps_per_epoch = prepared.data.num_examples / config.train.global_batch_size
  logging.info(
    '%s: %d steps (%.1f epochs of %d examples, global batch %d) on %d devices from step %d; '
    '%d parameters in %d tensors (%s).', stage, total_steps, total_steps / steps_per_epoch,
    prepared.data.num_examples, config.train.global_batch_size, jax.device_count(), start_step,
    sum(int(np.prod(x.shape)) for x in jax.tree.leaves(state.params)),
    len(jax.tree.leaves(state.params)), fs.join(workdir, 'parameters.txt'))

  workdir_lib.write_config(requested_config, workdir)  # Only now: every input was found.
  train_step = make_train_step(
    prepared.loss_fn, tx, schedule, mesh, prepared.trainable, prepared.data.prepare,
    state_sharding=jax.tree.map(lambda x: x.sharding, state) if shard_state else None)
  eval_step = evaluation.make_eval_step(prepared.model, mesh, views.make_eval_view(config))
  knn = _KnnMonitor(config, prepared.model, mesh) if prepared.stage.knn else None
  report_progress = progress.create_progress(total_steps, writer)
  global_batch = config.train.global_batch_size
  teacher_model = init.teacher.model if init.teacher else None
  meter = perf.StepMeter(stage, global_batch, prepared.stage.num_views, perf.step_flops(
    prepared.model, config.data.image_size, global_batch * prepared.stage.num_views,
    teacher_model))
  verdicts = perf.Verdicts(stage, plan_row)
  profiler = profiling.Profiler(workdir, config.train.profile_steps, start_step + 1,
                                all_hosts=config.train.profile_all_hosts)

  def log(step: int, metrics: dict[str, float]) -> None:
    writer.write_scalars(step, metrics)
    workdir_lib.append_metrics(workdir, {'step': step, **metrics})

  history: list[dict] = []
  last_logged = start_step
  batches = prepared.data.batches(start_step=start_step) if start_step < total_steps else iter(())
  watcher = workdir_lib.PreemptionWatcher()
  try:
    for step in range(start_step + 1, total_steps + 1):
      profiler.before(step)
      with jax.profiler.StepTraceAnnotation('train', step_num=step):
        with meter.input(step):
          batch = sharding.global_batch_from_host(mesh, next(batches))
        state, metrics = train_step(state, batch, teacher, prepared.data.resident)
      meter.dispatched(step, metrics)
      profiler.after(step, metrics)
      history.append(metrics)
      report_progress(step)
      if progress.itstime(step, config.train.log_every_steps, total_steps):
        summary = _mean_metrics(history)
        _check_finite(summary, last_logged + 1, step)
        figures = meter.window(step)
        log(step, {**summary, **figures, 'epoch': step / steps_per_epoch})
        verdicts(last_logged + 1, step, figures)
        history, last_logged = [], step
      if progress.itstime(step, config.train.eval_every_steps, total_steps, last=False):
        accuracy = evaluation.classification_accuracy(
          eval_step, state.params, state.batch_stats, eval_data, mesh)
        log(step, {'eval_top1': accuracy['top1'], 'eval_top5': accuracy['top5']})
      if knn and progress.itstime(step, config.knn.every_steps, total_steps, last=False):
        log(step, {'knn_top1': knn(state)})
      preempted = watcher.should_stop(step)
      if preempted or progress.itstime(step, config.train.checkpoint_every_steps, total_steps):
        if history:  # Never save past a NaN that the next log would only report later.
          _check_finite(_mean_metrics(history), last_logged + 1, step)
        elapsed = earlier_segments_s + time.time() - start_time
        checkpoints.save(manager, step, state,
                         checkpoints.run_meta(config, step, stage=stage, elapsed_s=elapsed))
        workdir_lib.flush_metrics(workdir)  # gs://: the lines up to a checkpoint outlive a kill.
      if preempted:
        manager.wait_until_finished()
        logging.warning('%s: stopped at step %d on request; checkpoint saved in %s.', stage,
                        step, workdir)
        raise workdir_lib.Preempted(f'{stage} stopped at step {step}; rerun to resume')
  finally:
    profiler.stop()
    meter.close()
    watcher.close()
    manager.wait_until_finished()  # A save in flight when an error stops the loop completes.
    try:
      workdir_lib.merge_metrics(workdir)  # gs://: this segment's lines into metrics.jsonl.
    except Exception as error:  # noqa: BLE001 - never hide what stopped the loop.
      logging.warning('%s: metrics not merged (%s); they stay in %s.', stage, error,
                      workdir_lib.METRICS_PARTS)

  results: dict[str, Any] = {'stage': stage, 'steps': total_steps,
                             'epochs': total_steps / steps_per_epoch}
  results['num_train_examples'] = prepared.data.num_examples
  results['num_skipped_images'] = len(prepared.data.skipped_paths)
  if prepared.data.skipped_paths:
    logging.warning('%s: %d unreadable images were skipped (listed in results.json).', stage,
                    len(prepared.data.skipped_paths))
  results['skipped_images'] = list(prepared.data.skipped_paths[:100])
  if prepared.stage.examples == 'labelled':
    results['num_labelled_examples'] = prepared.data.num_examples
  if config.train.eval_at_end:
    accuracy = evaluation.classification_accuracy(
      eval_step, state.params, state.batch_stats, eval_data, mesh)
    results.update({f'eval_{k}': v for k, v in accuracy.items()})
    final = {'eval_top1': accuracy['top1'], 'eval_top5': accuracy['top5']}
    if knn and config.knn.enabled:
      final['knn_top1'] = results['knn_top1'] = knn(state)
    log(total_steps, final)
    workdir_lib.merge_metrics(workdir)
  results.update(meter.summary())  # This segment's throughput, input wait, MFU, memory.
  results['wall_time_s'] = earlier_segments_s + time.time() - start_time  # All segments.
  results['resumed_from_step'] = start_step
  results['restored_from'] = init.source
  results['config'] = json.loads(config.to_json_best_effort())
  writer.flush()
  if jax.process_index() == 0:
    fs.write_text(fs.join(workdir, RESULTS_FILE), json.dumps(results, indent=2))
  if on_done is not None:
    on_done(config, workdir, sharding.to_host(
      {'params': state.params, 'batch_stats': state.batch_stats}, mesh))
  logging.info('%s: done; results in %s.', stage, fs.join(workdir, RESULTS_FILE))
  return results


class _KnnMonitor:
  """kNN top-1 of encoder features: (capped) train split as memory bank, eval split as queries."""

  def __init__(self, config: ml_collections.ConfigDict, model, mesh):
    self.config, self.mesh = config, mesh
    self.feature_step = evaluation.make_feature_step(model, mesh, views.make_eval_view(config))
    self.bank = data_input.make_eval_data(
      config, config.data.train_split, max_examples=config.knn.max_train_examples)
    self.queries = data_input.make_eval_data(config)

  def __call__(self, state: TrainState) -> float:
    return evaluation.knn_accuracy(
      self.feature_step, state.params, state.batch_stats, self.bank, self.queries, self.mesh,
      num_classes=self.queries.num_classes, k=self.config.knn.k,
      temperature=self.config.knn.temperature,
    )


def _mean_metrics(history: list[dict]) -> dict[str, float]:
  history = jax.device_get(history)
  return {k: float(np.mean([m[k] for m in history])) for k in history[0]}


def _check_finite(metrics: dict[str, float], first_step: int, last_step: int) -> None:
  bad = sorted(k for k, v in metrics.items() if not np.isfinite(v))
  if bad:
    raise FloatingPointError(
      f'Non-finite {", ".join(bad)} between steps {first_step} and {last_step}; '
      'lower optim.learning_rate or check the data (the last finite checkpoint is kept).'
    )


def _write_parameter_table(params: Any, workdir: str) -> None:
  """The per-tensor table to workdir/parameters.txt (its totals are in the stage's first line)."""
  if jax.process_index() == 0:
    table = parameter_overview.get_parameter_overview(params, include_stats=False)
    fs.write_text(fs.join(workdir, 'parameters.txt'), table + '\n')


def _flat_hparams(config: ml_collections.ConfigDict) -> dict[str, Any]:
  """Config as flat scalars (`model.depth`: 50) for TensorBoard's hparams view."""
  flat = flax.traverse_util.flatten_dict(json.loads(config.to_json_best_effort()), sep='.')
  return {k: v if isinstance(v, (int, float, str, bool)) else str(v) for k, v in flat.items()}
