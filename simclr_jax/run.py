"""Runs the configured stages in order: pretrain -> finetune -> distill (+ supervised baseline).

Each stage lives in `workdir/<stage>/`, is resumable (rerun the command), and is skipped when
its results.json and final checkpoint exist. A stage reads another stage's orbax checkpoint by
path, as its registry entry says (`stages.Restore`): finetune from `finetune.init_from` (default
workdir/pretrain), distill's teacher from `distill.teacher_workdir` (default workdir/finetune).
"""

import json
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
from absl import logging

from simclr_jax import checkpoints, fs, plan_files, stages, train, validation, visualize
from simclr_jax import workdir as workdir_lib
from simclr_jax.data import input as data_input
from simclr_jax.data import resident
from simclr_jax.models import load


def stage_config(config: ml_collections.ConfigDict, stage: str) -> ml_collections.ConfigDict:
  """The config one stage trains with (`stages.Stage.derive`)."""
  return stages.get(stage).derive(config)


def stage_workdir(workdir: str, stage: str) -> str:
  return fs.join(workdir, stage)


def _is_complete(directory: str) -> bool:
  results = workdir_lib.read_results(directory)
  if results is None:
    return False
  steps = results.get('steps')
  manager = checkpoints.make_manager(directory, keep=1)
  return manager.latest_step() == steps


def _init_for(config: ml_collections.ConfigDict, stage: stages.Stage, workdir: str) -> train.Init:
  """What a stage starts from (`stage.init`, `stage.teacher`); a fresh init where nothing."""
  teacher_dir = stage.teacher.source(config, workdir) if stage.teacher else ''
  init_dir = stage.init.source(config, workdir) if stage.init else ''
  teacher = load.load(teacher_dir, supervised_head_stop_gradient=True) if teacher_dir else None
  variables = _init_from(config, stage, init_dir) if init_dir else None
  source = f'teacher {teacher_dir}, student {init_dir}' if teacher_dir and init_dir else ''
  return train.Init(variables, teacher, source or teacher_dir or init_dir)


def _init_from(config, stage: stages.Stage, source: str) -> dict[str, Any]:
  """Encoder + projection head restored from `source`, merged into a fresh init of the stage's
  model (its classifier fresh, or zeroed where `stage.zero_classifier` says so)."""
  params, batch_stats, _ = checkpoints.restore_variables(source)  # Variables only: no model.
  derived = stage.derive(config)
  if derived.data.device_resident:
    data = derived.data
    num_classes = len(resident.load_split(
      data.dataset, data.train_split, data.folder, data.tfds_data_dir).class_names)
  else:
    num_classes = data_input.load_source(derived, derived.data.train_split).num_classes
  model = load.build(derived, num_classes)
  fresh = jax.jit(lambda: model.init(
    jax.random.fold_in(jax.random.key(derived.seed), 0),
    jnp.zeros((2, derived.data.image_size, derived.data.image_size, 3)), train=False))()
  prefixes = ('encoder', 'projection_head')
  merged_params = checkpoints.merge_restored(fresh['params'], params, prefixes=prefixes,
                                             source=source)
  merged_stats = checkpoints.merge_restored(fresh.get('batch_stats', {}), batch_stats,
                                            prefixes=prefixes, source=source, what='batch_stats')
  if stage.zero_classifier and stages.lookup(config, stage.zero_classifier):
    # Official: zero the classifier after restoring (zero_init_logits_layer).
    head = merged_params['head_supervised']
    merged_params['head_supervised'] = jax.tree.map(jnp.zeros_like, head)
  return {'params': merged_params, 'batch_stats': merged_stats}


def _plan(workdir: str) -> dict[str, Any] | None:
  """WORKDIR/plan.json (the pre-flight plan of this run's slice), if there is one."""
  path = fs.join(workdir, plan_files.PLAN_FILE)
  if not fs.exists(path):
    return None
  try:
    return json.loads(fs.read_text(path))
  except (OSError, ValueError) as error:
    logging.warning('%s is not a readable plan (%s); the step time is not compared.', path, error)
    return None


def _plan_row(plan: dict[str, Any] | None, config, stage: str, workdir: str) -> dict | None:
  if plan is None:
    return None
  row, why_not = plan_files.plan_row_for_run(plan, config, stage)
  if row is None:
    logging.info('%s: %s not compared with the step time: %s.', stage,
                 fs.join(workdir, plan_files.PLAN_FILE), why_not)
  return row


def _plot_stage(config: ml_collections.ConfigDict, directory: str, variables: dict) -> None:
  """A finished stage's plots into directory/plots (train.plots_at_end; never fails the stage)."""
  try:
    written = visualize.render_stage_plots(config, directory, variables=variables)
    logging.info('Plots: %s', ', '.join(written))
  except Exception as error:  # noqa: BLE001 - a plot must never lose a finished stage.
    logging.warning('Plots skipped: %s: %s', type(error).__name__, error)


def run_stages(config: ml_collections.ConfigDict, workdir: str) -> dict[str, dict[str, Any]]:
  """Runs every stage of `config.stages`; returns {stage: results}."""
  # Every stage's settings are checked before the first one starts: a typo in the distillation
  # section must not surface after days of pretraining.
  names = validation.stage_list(config)
  validation.check_labels(config)
  for stage in names:
    validation.validate_stage(config, stage, jax.device_count(), jax.process_count())
  all_results = {}
  plan = _plan(workdir)
  for stage in names:
    directory = stage_workdir(workdir, stage)
    if _is_complete(directory):
      workdir_lib.check_same_run(stage_config(config, stage), directory, finished=True,
                                 stage=stage)
      logging.info('%s: complete in %s; skipping (delete it to rerun).', stage, directory)
      all_results[stage] = workdir_lib.read_results(directory)
      continue
    all_results[stage] = train.train_and_evaluate(
      stage_config(config, stage), directory, stage=stage,
      init=_init_for(config, stages.get(stage), workdir),
      on_done=_plot_stage if config.train.plots_at_end else None,
      plan_row=_plan_row(plan, config, stage, workdir))
  if config.train.plots_at_end and len(names) > 1 and jax.process_index() == 0:
    try:
      visualize.render_run_plots(config, workdir, which=('stages',))
    except Exception as error:  # noqa: BLE001 - a plot must never fail a finished run.
      logging.warning('Stage plot skipped: %s: %s', type(error).__name__, error)
  return all_results


def results_table(all_results: dict[str, dict[str, Any]]) -> str:
  """A short plain-text table: one row per stage."""
  header = (f'{"stage":<11} {"top-1":>7} {"top-5":>7} {"kNN":>7} {"steps":>7} {"labels":>7} '
            f'{"time":>8} {"img/s":>7}')
  rows = [header, '-' * len(header)]
  for stage, results in all_results.items():
    def pct(key):
      return f'{100 * results[key]:6.1f}%' if key in results else '      -'
    labels = results.get('num_labelled_examples', '-')
    speed = f'{results["images_per_s"]:7.0f}' if results.get('images_per_s') else '      -'
    rows.append(
      f'{stage:<11} {pct("eval_top1")} {pct("eval_top5")} {pct("knn_top1")} '
      f'{results.get("steps", 0):>7} {labels!s:>7} {results.get("wall_time_s", 0):>7.0f}s '
      f'{speed}'
    )
  for stage in all_results:
    if stage in stages.REGISTRY and stages.get(stage).top1_note:
      rows.append(f'{stage} top-1/5: {stages.get(stage).top1_note}.')
  return '\n'.join(rows)
