"""A damaged newest checkpoint: detected at restore, reported in one line, set aside (never
deleted), and the newest intact step restored instead."""

import os

import jax
import numpy as np
import pytest

from simclr_jax import checkpoints


def _state(value):
  rng = np.random.default_rng(value)
  return {'step': np.int32(value),
          'params': {'kernel': rng.normal(size=(64, 256)).astype(np.float32),
                     'bias': np.full((256,), value, np.float32)}}


def _save_three(directory):
  manager = checkpoints.make_manager(directory, keep=3, asynchronous=False)
  for step in (1, 2, 3):
    checkpoints.save(manager, step, _state(step), {'step': step})
  manager.wait_until_finished()
  return os.path.join(checkpoints.checkpoint_dir(directory), '3')


def _largest_file(root):
  walk = os.walk(os.path.join(root, 'state'))
  files = [os.path.join(d, f) for d, _, names in walk for f in names]
  return max(files, key=os.path.getsize)


def _truncate(step_dir):
  path = _largest_file(step_dir)
  with open(path, 'r+b') as f:
    f.truncate(os.path.getsize(path) // 2)


def _empty_metadata(step_dir):
  path = os.path.join(step_dir, 'state', '_METADATA')
  assert os.path.exists(path)
  open(path, 'w').close()


def _flip_bytes(step_dir):
  """Same size, different bytes: only a checksum can tell."""
  path = _largest_file(step_dir)
  size = os.path.getsize(path)
  with open(path, 'r+b') as f:
    f.seek(size // 2)
    chunk = bytearray(f.read(16))
    f.seek(size // 2)
    f.write(bytes(b ^ 0x5A for b in chunk))
  assert os.path.getsize(path) == size


@pytest.mark.parametrize('damage, why', [
  (_truncate, 'OUT_OF_RANGE'), (_empty_metadata, 'JSONDecodeError'),
  (_flip_bytes, "checksum mismatch in 1 arrays (first: ['params']['kernel'])"),
])
def test_damaged_newest_step_falls_back_to_the_previous_one(tmp_path, damage, why, caplog):
  directory = str(tmp_path)
  damage(_save_three(directory))
  manager = checkpoints.make_manager(directory, keep=3)
  abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(np.shape(x), np.asarray(x).dtype),
                          _state(0))
  state, meta = checkpoints.restore_latest(manager, abstract)
  assert meta['step'] == 2 and int(state['step']) == 2
  np.testing.assert_array_equal(state['params']['kernel'], _state(2)['params']['kernel'])
  warnings = [r.getMessage() for r in caplog.records if 'damaged' in r.getMessage()]
  assert len(warnings) == 1 and 'step 3' in warnings[0] and '\n' not in warnings[0]
  assert why in warnings[0]
  kept = os.listdir(os.path.join(directory, checkpoints.DAMAGED_SUBDIR))
  assert len(kept) == 1 and kept[0].startswith('3-')  # The evidence, moved aside.
  assert manager.latest_step() == 2


def test_intact_checkpoints_pass_their_checksums(tmp_path):
  directory = str(tmp_path)
  _save_three(directory)
  abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(np.shape(x), np.asarray(x).dtype),
                          _state(0))
  state, meta = checkpoints.restore_latest(checkpoints.make_manager(directory, keep=3), abstract)
  assert meta['step'] == 3 and len(meta['checksums']) == 3
  assert not os.path.exists(os.path.join(directory, checkpoints.DAMAGED_SUBDIR))


def test_a_run_workdir_where_a_stage_workdir_is_needed_names_the_stages(tmp_path):
  _save_three(str(tmp_path / 'pretrain'))
  with pytest.raises(FileNotFoundError) as error:
    checkpoints.restore_variables(str(tmp_path))
  message = str(error.value)
  assert 'is a run workdir, not a stage workdir' in message and 'init_from' not in message
  assert str(tmp_path / 'pretrain') in message
