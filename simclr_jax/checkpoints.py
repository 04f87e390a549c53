"""Orbax checkpoints of a stage: the train state plus a JSON record of the run.

Layout: `<workdir>/checkpoints/<step>/{state,meta}`. Orbax writes each step into a temporary
folder and renames it when complete, so an interrupted save is never restored. The record holds
a checksum of every array (a wrapping uint32 sum of its bits: independent of layout and device
count), so a step damaged later on disk, even without a change of size, is caught at restore:
the restore then says which step and why in one line, moves it to
`<workdir>/damaged_checkpoints/` (kept as evidence, never deleted) and falls back to the newest
intact step.
"""

import json
import time
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
from absl import logging
from flax import traverse_util
from jax.experimental import multihost_utils

from simclr_jax import fs

CHECKPOINT_SUBDIR = 'checkpoints'


def checkpoint_dir(workdir: str) -> str:
  return fs.join(fs.absolute(workdir), CHECKPOINT_SUBDIR)


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


DAMAGED_SUBDIR = 'damaged_checkpoints'


@jax.jit
def _bit_sums(tree: Any) -> Any:
  def one(x):
    x = jnp.asarray(x)
    if x.dtype == jnp.bool_:
      return jnp.sum(x, dtype=jnp.uint32)
    if x.dtype.itemsize == 4:
      bits = jax.lax.bitcast_convert_type(x, jnp.uint32)
    elif x.dtype.itemsize == 2:
      bits = jax.lax.bitcast_convert_type(x, jnp.uint16).astype(jnp.uint32)
    elif x.dtype.itemsize == 1:
      bits = jax.lax.bitcast_convert_type(x, jnp.uint8).astype(jnp.uint32)
    else:  # 8-byte values: both halves.
      bits = jax.lax.bitcast_convert_type(x, jnp.uint32)
    return jnp.sum(bits, dtype=jnp.uint32)  # Wraps: the same for any summation order.

  return jax.tree.map(one, tree)


def checksums(tree: Any) -> dict[str, int]:
  """{'/'-joined path: uint32 sum of the bits} of every array: one compiled reduction."""
  sums = jax.device_get(_bit_sums(tree))
  flat = jax.tree_util.tree_flatten_with_path(sums)[0]
  return {jax.tree_util.keystr(path): int(value) for path, value in flat}


def save(
  manager: ocp.CheckpointManager,
  step: int,
  state: Any,
  meta: dict[str, Any],
) -> bool:
  """Saves `state` at `step` (asynchronously; `manager.wait_until_finished()` to block)."""
  meta = {**meta, 'checksums': checksums(state)}
  return manager.save(
    step,
    args=ocp.args.Composite(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)),
    force=True,
  )


class DamagedCheckpoint(Exception):
  """A checkpoint step that cannot be read back as it was written."""


def _restore_step(manager: ocp.CheckpointManager, step: int, abstract_state: Any):
  try:
    restored = manager.restore(
      step,
      args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract_state), meta=ocp.args.JsonRestore()
      ),
    )
  except Exception as error:  # noqa: BLE001 - orbax/tensorstore raise many kinds.
    first_line = (str(error).strip().splitlines() or [''])[0][:200]
    raise DamagedCheckpoint(f'{type(error).__name__}: {first_line}') from error
  meta = restored['meta'] or {}
  expected = meta.get('checksums')
  if expected is not None:  # Older checkpoints have none.
    actual = checksums(restored['state'])
    wrong = sorted(k for k in expected if actual.get(k) != expected[k])
    if wrong:
      raise DamagedCheckpoint(f'checksum mismatch in {len(wrong)} arrays (first: {wrong[0]})')
  return restored['state'], meta


def _set_aside(manager: ocp.CheckpointManager, step: int) -> str:
  """Moves a damaged step out of the manager's sight, next to the checkpoints; never deletes."""
  source = fs.join(str(manager.directory), str(step))
  target_dir = fs.join(fs.parent(str(manager.directory)), DAMAGED_SUBDIR)
  target = fs.join(target_dir, f'{step}-{int(time.time())}')
  if jax.process_index() == 0:
    fs.makedirs(target_dir)
    fs.rename(source, target)
  if jax.process_count() > 1:  # Every host sees the step gone before looking again.
    multihost_utils.sync_global_devices(f'damaged checkpoint {step} set aside')
  manager.reload()
  return target


def restore_latest(manager: ocp.CheckpointManager, abstract_state: Any) -> tuple[Any, dict] | None:
  """Restores the newest intact checkpoint into the shapes/shardings of `abstract_state`.

  A step that orbax cannot read or whose checksums differ is reported in one line, moved to
  `damaged_checkpoints/` and the next older step is tried. Returns (state, meta), or None when
  the directory holds no (intact) checkpoint.
  """
  for step in sorted(manager.all_steps(), reverse=True):
    try:
      state, meta = _restore_step(manager, step, abstract_state)
    except DamagedCheckpoint as damage:
      kept = _set_aside(manager, step)
      logging.warning('Checkpoint of step %d in %s is damaged (%s); moved to %s; trying the '
                      'previous one.', step, manager.directory, damage, kept)
      continue
    logging.info('Restored checkpoint of step %d from %s', step, manager.directory)
    return state, meta
  return None


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
  if not fs.isdir(directory):
    names = fs.scan(workdir)[0] if fs.isdir(workdir) else []
    stage_dirs = sorted(fs.join(workdir, name) for name in names
                        if fs.isdir(checkpoint_dir(fs.join(workdir, name))))
    if stage_dirs:  # A run workdir was given where a stage workdir is needed.
      raise FileNotFoundError(
        f'{workdir} is a run workdir, not a stage workdir; pass one of its stages: '
        f'{", ".join(stage_dirs)}')
    raise FileNotFoundError(
      f'{directory} does not exist; run the stage that writes it first, or pass a stage '
      'workdir (one holding checkpoints/)'
    )
  manager = _read_only_manager(workdir)
  step = manager.latest_step()
  if step is None:
    raise FileNotFoundError(
      f'{directory} holds no finished checkpoint; rerun the stage that writes it')
  # Restore as host NumPy arrays, whatever topology saved them (an imported or pod checkpoint).
  state_dir = fs.join(directory, str(step), 'state')
  tree = ocp.PyTreeCheckpointer().metadata(state_dir).item_metadata
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
  return fs.join(checkpoint_dir(workdir), str(step))


def merge_restored(
  fresh: Any, restored: Any, *, prefixes: tuple[str, ...], source: str, what: str = 'params'
) -> Any:
  """`fresh` with every leaf under `prefixes` replaced by the restored one.

  Raises ValueError listing every missing, unexpected or mis-shaped variable under `prefixes`,
  so restoring into a different architecture never silently keeps a fresh initialisation.
  """
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
  problems += [f'{k} unexpected' for k in sorted(restored_flat)
               if wanted(k) and k not in fresh_flat]
  if problems:
    more = f'; ... ({len(problems)} in all)' if len(problems) > 20 else ''
    shown = '; '.join(problems[:20]) + more
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
