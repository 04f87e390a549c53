"""Orbax checkpoints of a stage: the train state plus a JSON record of the run.

Layout: `<workdir>/checkpoints/<step>/{state,meta}`. Orbax writes each step into a temporary
folder and renames it when complete, so an interrupted save is never restored.
"""

import json
import os
from typing import Any

import jax
import numpy as np
import ml_collections
import orbax.checkpoint as ocp
from absl import logging

CHECKPOINT_SUBDIR = 'checkpoints'


def checkpoint_dir(workdir: str) -> str:
  return os.path.join(os.path.abspath(workdir), CHECKPOINT_SUBDIR)


def make_manager(workdir: str, *, keep: int, asynchronous: bool = True) -> ocp.CheckpointManager:
  """The loop decides when to save (every K steps and at the end); the manager keeps `keep`."""
  options = ocp.CheckpointManagerOptions(
    max_to_keep=keep,
    enable_async_checkpointing=asynchronous,
    create=True,
  )
  return ocp.CheckpointManager(
    checkpoint_dir(workdir), options=options, item_names=('state', 'meta')
  )


def save(
  manager: ocp.CheckpointManager,
  step: int,
  state: Any,
  meta: dict[str, Any],
) -> bool:
  """Saves `state` at `step` (asynchronously; `manager.wait_until_finished()` to block)."""
  return manager.save(
    step,
    args=ocp.args.Composite(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)),
    force=True,
  )


def restore_latest(manager: ocp.CheckpointManager, abstract_state: Any) -> tuple[Any, dict] | None:
  """Restores the newest checkpoint into the shapes/shardings of `abstract_state`.

  Returns (state, meta) or None when the directory holds no checkpoint.
  """
  step = manager.latest_step()
  if step is None:
    return None
  restored = manager.restore(
    step,
    args=ocp.args.Composite(
      state=ocp.args.StandardRestore(abstract_state), meta=ocp.args.JsonRestore()
    ),
  )
  logging.info('Restored checkpoint of step %d from %s', step, manager.directory)
  return restored['state'], restored['meta']


def abstract_like(tree: Any) -> Any:
  """ShapeDtypeStructs (with shardings) of a pytree of arrays, for restoring into."""
  return jax.tree.map(
    lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=getattr(x, 'sharding', None)), tree
  )


def run_meta(config: ml_collections.ConfigDict, step: int, **extra: Any) -> dict[str, Any]:
  """The JSON record saved beside each checkpoint: step, config and anything else."""
  return {'step': int(step), 'config': json.loads(config.to_json_best_effort()), **extra}


def _read_only_manager(workdir: str) -> ocp.CheckpointManager:
  # Not `read_only=True`: orbax then warns on every open; this manager never saves anyway.
  options = ocp.CheckpointManagerOptions(create=False)
  return ocp.CheckpointManager(
    checkpoint_dir(workdir), options=options, item_names=('state', 'meta')
  )


def restore_variables(workdir: str) -> tuple[Any, Any, dict[str, Any]]:
  """(params, batch_stats, meta) of the newest checkpoint in `workdir`, as host NumPy arrays.

  This is how a stage initialises from another stage's (or an imported) checkpoint: only the
  model variables are read, never the optimizer state.
  """
  directory = checkpoint_dir(workdir)
  if not os.path.isdir(directory):
    raise FileNotFoundError(
      f'{directory} does not exist; run the stage that writes it first or point init_from at a '
      'stage workdir holding checkpoints/'
    )
  manager = _read_only_manager(workdir)
  step = manager.latest_step()
  if step is None:
    raise FileNotFoundError(f'{directory} holds no finished checkpoint; rerun the stage that writes it')
  # Restore as host NumPy arrays, whatever topology saved them (an imported or pod checkpoint).
  tree = ocp.PyTreeCheckpointer().metadata(os.path.join(directory, str(step), 'state')).item_metadata
  tree = getattr(tree, 'tree', tree)
  restore_args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), tree)
  restored = manager.restore(
    step,
    args=ocp.args.Composite(
      state=ocp.args.PyTreeRestore(restore_args=restore_args), meta=ocp.args.JsonRestore()
    ),
  )
  state = restored['state']
  logging.info('Read params and batch_stats of step %d from %s', step, directory)
  meta = dict(restored['meta'] or {})
  meta.setdefault('step', step)
  return state['params'], state.get('batch_stats', {}), meta


def save_variables(
  workdir: str, params: Any, batch_stats: Any, meta: dict[str, Any], step: int = 0
) -> str:
  """Writes a checkpoint holding only model variables (e.g. an imported model); returns its path.

  `restore_variables` and every stage's init read it exactly like a checkpoint of ours.
  """
  manager = make_manager(workdir, keep=1, asynchronous=False)
  state = {'step': np.asarray(step, np.int32), 'params': params, 'batch_stats': batch_stats}
  save(manager, step, state, meta)
  manager.wait_until_finished()
  manager.close()
  return os.path.join(checkpoint_dir(workdir), str(step))


def merge_restored(
  fresh: Any, restored: Any, *, prefixes: tuple[str, ...], source: str, what: str = 'params'
) -> Any:
  """`fresh` with every leaf under `prefixes` replaced by the restored one.

  Raises ValueError listing every missing, unexpected or mis-shaped variable under `prefixes`,
  so restoring into a different architecture never silently keeps a fresh initialisation.
  """
  from flax import traverse_util  # Local: keeps this module light for CLI imports.

  fresh_flat = traverse_util.flatten_dict(fresh, sep='/')
  restored_flat = traverse_util.flatten_dict(restored or {}, sep='/')

  def wanted(key: str) -> bool:
    return key.split('/')[0] in prefixes

  problems = []
  for key in sorted(k for k in fresh_flat if wanted(k)):
    if key not in restored_flat:
      problems.append(f'{key} missing')
    elif tuple(restored_flat[key].shape) != tuple(fresh_flat[key].shape):
      problems.append(
        f'{key} shape {tuple(restored_flat[key].shape)} != expected {tuple(fresh_flat[key].shape)}'
      )
  problems += [f'{k} unexpected' for k in sorted(restored_flat) if wanted(k) and k not in fresh_flat]
  if problems:
    shown = '; '.join(problems[:20]) + (f'; ... ({len(problems)} in all)' if len(problems) > 20 else '')
    raise ValueError(
      f'{what} of {source} do not fit the configured model ({len(problems)} mismatches: {shown}); '
      'make the config (model.depth, width_multiplier, sk_ratio, num_proj_layers, ...) match the '
      'checkpoint'
    )
  merged = {
    k: (np.asarray(restored_flat[k]).astype(v.dtype) if wanted(k) else v)
    for k, v in fresh_flat.items()
  }
  return traverse_util.unflatten_dict(merged, sep='/')
