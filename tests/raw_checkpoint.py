"""The newest checkpoint of a stage workdir (local or gs://) as NumPy, whatever saved it."""

import jax
import numpy as np
import orbax.checkpoint as ocp

from simclr_jax import checkpoints, fs


def raw_state(stage_dir) -> tuple[int, dict]:
  """(step, the whole saved state: params, BN statistics, optimizer state) of the newest step."""
  stage_dir = str(stage_dir)
  step = checkpoints._read_only_manager(stage_dir).latest_step()
  path = fs.join(checkpoints.checkpoint_dir(stage_dir), str(step), 'state')
  tree = ocp.PyTreeCheckpointer().metadata(path).item_metadata
  tree = getattr(tree, 'tree', tree)
  as_numpy = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), tree)
  return step, ocp.PyTreeCheckpointer().restore(path, restore_args=as_numpy)
