"""Runs the configured stages in order: pretrain -> finetune -> distill (+ supervised baseline).

Each stage lives in `workdir/<stage>/`, is resumable (rerun the command), and is skipped when
its results.json and final checkpoint exist. A stage reads the previous stage's orbax
checkpoint by path: finetune from `finetune.init_from` (default workdir/pretrain), distill's
teacher from `distill.teacher_workdir` (default workdir/finetune).
"""

import json
import os
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
from absl import logging
from etils import epath

from simclr_jax import checkpoints, train, validation
from simclr_jax import workdir as workdir_lib
from simclr_jax.data import input as data_input


def stage_config(config: ml_collections.ConfigDict, stage: str) -> ml_collections.ConfigDict:
  """The config one stage trains with: its optimiser/schedule section replaces `optim`/`train`."""
  derived = ml_collections.ConfigDict(config.to_dict())
  if stage == 'pretrain':
    return derived
  section = {'finetune': config.finetune, 'supervised': config.supervised,
             'distill': config.distill}[stage]
  derived.optim.update(section.optim.to_dict())
  derived.train.update(section.train.to_dict())
  if stage in ('finetune', 'supervised'):
    derived.model.ft_proj_selector = config.finetune.ft_proj_selector
    derived.model.global_bn = config.finetune.global_bn
  if stage == 'distill':
    derived.model.ft_proj_selector = config.finetune.ft_proj_selector
    for field, value in config.distill.student.items():
      if value is not None:
        derived.model[field] = value
  derived.lock()
  return derived


def stage_workdir(workdir: str, stage: str) -> str:
  return os.path.join(workdir, stage)


def _read_results(directory: str) -> dict[str, Any] | None:
  path = epath.Path(directory) / train.RESULTS_FILE
  return json.loads(path.read_text()) if path.exists() else None


def _is_complete(directory: str) -> bool:
  results = _read_results(directory)
  if results is None:
    return False
  steps = results.get('steps')
  manager = checkpoints.make_manager(directory, keep=1)
  return manager.latest_step() == steps


def _restore_for(config: ml_collections.ConfigDict, stage: str, workdir: str) -> dict[str, Any]:
  """Which variables a stage starts from (a fresh init where the dict is empty)."""
  if stage == 'finetune':
    source = config.finetune.init_from or stage_workdir(workdir, 'pretrain')
    return _init_from(config, stage, source, prefixes=('encoder', 'projection_head'))
  if stage == 'distill':
    teacher_dir = config.distill.teacher_workdir or stage_workdir(workdir, 'finetune')
    params, batch_stats, meta = checkpoints.restore_variables(teacher_dir)
    teacher_config = ml_collections.ConfigDict(meta['config'])
    num_classes = params['head_supervised']['linear_layer']['dense']['kernel'].shape[-1]
    teacher_model = train.build_model(
      teacher_config, num_classes, supervised_head_stop_gradient=True)
    restore = {'teacher_model': teacher_model, 'source': teacher_dir,
               'teacher_variables': {'params': params, 'batch_stats': batch_stats}}
    student_source = config.distill.student_init_from
    if student_source == 'pretrain':  # This run's own pretraining stage.
      student_source = stage_workdir(workdir, 'pretrain')
    if student_source:
      restore.update(_init_from(config, stage, student_source,
                                prefixes=('encoder', 'projection_head')))
      restore['source'] = f'teacher {teacher_dir}, student {student_source}'
    return restore
  return {}


def _init_from(config, stage: str, source: str, prefixes: tuple[str, ...]) -> dict[str, Any]:
  """Restored encoder/head variables merged into a fresh init of the stage's model."""
  params, batch_stats, _ = checkpoints.restore_variables(source)
  derived = stage_config(config, stage)
  if derived.data.device_resident:
    from simclr_jax.data import resident

    data = derived.data
    num_classes = len(resident.load_split(
      data.dataset, data.train_split, data.folder, data.tfds_data_dir).class_names)
  else:
    num_classes = data_input.load_source(derived, derived.data.train_split).num_classes
  model = train.build_model(derived, num_classes)
  fresh = jax.jit(lambda: model.init(
    jax.random.fold_in(jax.random.key(derived.seed), 0),
    jnp.zeros((2, derived.data.image_size, derived.data.image_size, 3)), train=False))()
  merged_params = checkpoints.merge_restored(fresh['params'], params, prefixes=prefixes,
                                             source=source)
  merged_stats = checkpoints.merge_restored(fresh.get('batch_stats', {}), batch_stats,
                                            prefixes=prefixes, source=source, what='batch_stats')
  if stage == 'finetune' and config.finetune.zero_init_logits_layer:
    # Official: zero the classifier after restoring (zero_init_logits_layer).
    merged_params['head_supervised'] = jax.tree.map(jnp.zeros_like, merged_params['head_supervised'])
  return {'variables': {'params': merged_params, 'batch_stats': merged_stats}, 'source': source}


def run_stages(config: ml_collections.ConfigDict, workdir: str) -> dict[str, dict[str, Any]]:
  """Runs every stage of `config.stages`; returns {stage: results}."""
  # Every stage's settings are checked before the first one starts: a typo in the distillation
  # section must not surface after days of pretraining.
  stages = validation.stage_list(config)
  validation.check_labels(config)
  for stage in stages:
    validation.validate_config(stage_config(config, stage), jax.device_count(), jax.process_count())
  all_results = {}
  for stage in stages:
    directory = stage_workdir(workdir, stage)
    if _is_complete(directory):
      workdir_lib.check_same_run(stage_config(config, stage), directory, finished=True,
                                 stage=stage)
      logging.info('%s: complete in %s; skipping (delete it to rerun).', stage, directory)
      all_results[stage] = _read_results(directory)
      continue
    derived = stage_config(config, stage)
    all_results[stage] = train.train_and_evaluate(
      derived, directory, stage=stage, restore=_restore_for(config, stage, workdir))
  if config.train.plots_at_end and len(stages) > 1 and jax.process_index() == 0:
    try:
      from simclr_jax import visualize

      visualize.render_run_plots(config, workdir, which=('stages',))
    except Exception as error:  # noqa: BLE001 - a plot must never fail a finished run.
      logging.warning('Stage plot skipped: %s: %s', type(error).__name__, error)
  return all_results


def results_table(all_results: dict[str, dict[str, Any]]) -> str:
  """A short plain-text table: one row per stage."""
  header = f'{"stage":<11} {"top-1":>7} {"top-5":>7} {"kNN":>7} {"steps":>7} {"labels":>7} {"time":>8}'
  rows = [header, '-' * len(header)]
  for stage, results in all_results.items():
    def pct(key):
      return f'{100 * results[key]:6.1f}%' if key in results else '      -'
    labels = results.get('num_labelled_examples', '-')
    rows.append(
      f'{stage:<11} {pct("eval_top1")} {pct("eval_top5")} {pct("knn_top1")} '
      f'{results.get("steps", 0):>7} {labels!s:>7} {results.get("wall_time_s", 0):>7.0f}s'
    )
  if 'pretrain' in all_results:
    rows.append('pretrain top-1/5: the linear probe trained on stop-gradient features (all labels).')
  return '\n'.join(rows)
