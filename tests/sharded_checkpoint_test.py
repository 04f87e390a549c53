"""Checkpoints restore across state layouts (replicated <-> sharded) and device counts."""

import jax
import numpy as np
import pytest

from simclr_jax import checkpoints, sharding, train
from simclr_jax.models import load

from train_test import IMAGE_SIZE, _tiny_config


def _state(devices, shard_state):
  config = _tiny_config('lars')
  mesh = sharding.make_mesh(devices)
  model = load.build(config, num_classes=10)
  tx, _, _ = train.build_optimizer(
    config, load.abstract_variables(model, IMAGE_SIZE)['params'], num_train_examples=1000)
  return train.init_state(model, tx, IMAGE_SIZE, config.seed, mesh, shard_state=shard_state)


@pytest.mark.parametrize('saved_sharded, restored_sharded, num_devices', [
  (False, True, 4), (True, False, 8), (True, True, 2),
])
def test_restore_across_layouts_and_device_counts(tmp_path, monkeypatch, saved_sharded,
                                                  restored_sharded, num_devices):
  monkeypatch.setattr(sharding, 'MIN_SHARDED_SIZE', 64)
  saved = _state(jax.devices(), saved_sharded)
  # Distinct values in every leaf, so a mixed-up or misplaced shard cannot pass.
  saved = jax.tree.map(lambda x: x + np.arange(x.size, dtype=x.dtype).reshape(x.shape) % 7, saved)
  manager = checkpoints.make_manager(str(tmp_path), keep=1, asynchronous=False)
  checkpoints.save(manager, 5, saved, {'step': 5})
  manager.wait_until_finished()

  target = _state(jax.devices()[:num_devices], restored_sharded)
  restored, meta = checkpoints.restore_latest(
    checkpoints.make_manager(str(tmp_path), keep=1), checkpoints.abstract_like(target))
  assert meta['step'] == 5
  for got, want, layout in zip(jax.tree.leaves(restored), jax.tree.leaves(saved),
                               jax.tree.leaves(target)):
    assert got.sharding == layout.sharding  # Restored straight into the requested layout.
    np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
  if restored_sharded:
    assert any(not x.sharding.is_fully_replicated for x in jax.tree.leaves(restored.params))
