"""Orbax checkpoints of a stage: the train state plus a JSON record of the run.

Layout: `<workdir>/checkpoints/<step>/{state,meta}`. Orbax writes each step into a temporary
folder and renames it when complete, so an interrupted save is never restored.
"""

import json
import os
from typing import Any

import jax
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
