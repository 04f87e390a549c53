"""simclr_jax/fs.py and what rests on it, on an emulated bucket: files and folders, one-line
errors, the atomic create behind the workdir lock, metrics objects, a damaged checkpoint.

In this process (the `emulator` fixture of conftest.py sets the environment); tests/gcs_test.py
runs the commands themselves against the bucket.
"""

import json
import multiprocessing
import os
import socket
import subprocess
import sys

import numpy as np
import pytest

from simclr_jax import checkpoints, fs, workdir

BUCKET = 'bkt'


def test_files_folders_and_errors_on_a_bucket(emulator):
  root = f'gs://{BUCKET}/seam'
  fs.makedirs(fs.join(root, 'photos', 'cat'))
  fs.write_bytes(fs.join(root, 'photos', 'cat', 'a.png'), b'12345')
  fs.write_text(fs.join(root, 'notes.txt'), 'hello')
  assert fs.scan(root) == (['photos'], ['notes.txt'])
  assert fs.scan(fs.join(root, 'photos', 'cat')) == ([], ['a.png'])
  assert fs.isdir(fs.join(root, 'photos')) and fs.isfile(fs.join(root, 'notes.txt'))
  assert fs.read_text(fs.join(root, 'notes.txt')) == 'hello'
  assert fs.size_and_mtime(fs.join(root, 'photos', 'cat', 'a.png'))[0] == 5
  assert [folder for folder, _, _ in fs.walk(root)][0] == root
  with fs.open(fs.join(root, 'notes.txt'), 'rb') as file:
    assert file.read() == b'hello'
  fs.rename(fs.join(root, 'notes.txt'), fs.join(root, 'moved.txt'))
  assert fs.scan(root)[1] == ['moved.txt']
  assert emulator.objects(BUCKET, 'seam/moved.txt') == {'seam/moved.txt': 5}
  fs.rename(fs.join(root, 'photos'), fs.join(root, 'kept'))  # A folder: object by object.
  assert emulator.objects(BUCKET, 'seam/kept/') == {'seam/kept/cat/a.png': 5}
  assert not fs.exists(fs.join(root, 'photos', 'cat', 'a.png'))
  fs.rmtree(fs.join(root, 'kept'))
  assert not emulator.objects(BUCKET, 'seam/kept/')

  # One line each: a missing object, a missing bucket, no permission.
  with pytest.raises(FileNotFoundError, match=r'^gs://bkt/seam/nothing.txt does not exist'):
    fs.read_text(fs.join(root, 'nothing.txt'))
  with pytest.raises(fs.PathError, match=r'bucket gs://nobucket does not exist') as missing:
    fs.check_writable('gs://nobucket/run')
  emulator.proxy.read_only_buckets.add(BUCKET)
  try:
    with pytest.raises(fs.PathError, match='permission denied') as denied:
      fs.check_writable(f'gs://{BUCKET}/read_only_run')
  finally:
    emulator.proxy.read_only_buckets.clear()
  for error in (missing, denied):
    assert '\n' not in str(error.value) and str(error.value).startswith('--workdir=gs://')


def _create(args):
  path, text = args
  return fs.create_new(path, text)[0]


def test_create_new_on_a_bucket_is_atomic(emulator):
  """Of 6 processes creating one object at once exactly one wins (ifGenerationMatch=0)."""
  path = f'gs://{BUCKET}/atomic/.lock'
  with multiprocessing.get_context('spawn').Pool(6) as pool:
    won = pool.map(_create, [(path, f'process {i}') for i in range(6)])
  assert sum(won) == 1
  assert fs.create_new(path, 'late') == (False, f'process {won.index(True)}')
  # Two writers that both saw no object: the precondition lets only the first one through.
  store, key = fs._kvstore(f'gs://{BUCKET}/atomic/race')
  seen_a, seen_b = store.read(key).result(), store.read(key).result()
  assert seen_a.state == seen_b.state == 'missing'
  first = store.write(key, b'a', if_equal=seen_a.stamp.generation).result()
  second = store.write(key, b'b', if_equal=seen_b.stamp.generation).result()
  assert first.generation and not second.generation
  assert store.read(key).result().value == b'a'
  assert not fs.remove_if_unchanged(path, 'not its text')
  assert fs.remove_if_unchanged(path, f'process {won.index(True)}')
  assert 'atomic/.lock' not in emulator.objects(BUCKET, 'atomic/')  # Asked of the server.


def test_workdir_lock_on_a_bucket(emulator, caplog):
  run = f'gs://{BUCKET}/locked'
  lock_object = f'locked/{workdir.LOCK_FILE}'
  with workdir.lock(run):
    assert lock_object in emulator.objects(BUCKET, 'locked/')
    with pytest.raises(workdir.validation.ConfigError, match=r'is in use by pid \d+ on '):
      with workdir.lock(run):
        pass
  assert lock_object not in emulator.objects(BUCKET, 'locked/')
  # A lock left by a process of this host that is gone is taken over (the local rule).
  dead = subprocess.run([sys.executable, '-c', 'import os; print(os.getpid())'],
                        capture_output=True, text=True).stdout.strip()
  fs.write_text(fs.join(run, workdir.LOCK_FILE),
                json.dumps({'host': socket.gethostname(), 'pid': int(dead), 'since': 'then'}))
  with workdir.lock(run):
    held = json.loads(emulator.read(BUCKET, lock_object))
    assert held['pid'] == os.getpid()
  assert f'stale lock of pid {dead}' in caplog.text
  # Another host's lock is not: it may be running.
  fs.write_text(fs.join(run, workdir.LOCK_FILE),
                json.dumps({'host': 'other-host', 'pid': 1, 'since': 'then'}))
  with pytest.raises(workdir.validation.ConfigError, match='in use by pid 1 on other-host'):
    with workdir.lock(run):
      pass


def test_metrics_on_a_bucket_cost_the_same_at_every_write(emulator, monkeypatch):
  """Each flush writes one new object of the new lines only; readers see one history."""
  monkeypatch.setattr(workdir, 'METRICS_FLUSH_S', 0.0)
  stage = f'gs://{BUCKET}/metrics/pretrain'
  for step in range(1, 13):
    workdir.append_metrics(stage, {'step': step, 'loss': 1.0 / step})
  parts = emulator.objects(BUCKET, f'metrics/pretrain/{workdir.METRICS_PARTS}/')
  assert len(parts) == 12  # One object per flush.
  assert max(parts.values()) <= 2 * min(parts.values())  # Sizes do not grow with the run.
  assert not fs.exists(fs.join(stage, workdir.METRICS_FILE))
  assert [r['step'] for r in workdir.read_metrics(stage)] == list(range(1, 13))
  workdir.merge_metrics(stage)  # Once per run segment.
  assert not emulator.objects(BUCKET, f'metrics/pretrain/{workdir.METRICS_PARTS}/')
  assert [r['step'] for r in workdir.read_metrics(stage)] == list(range(1, 13))
  workdir.append_metrics(stage, {'step': 13, 'loss': 0.0})
  workdir.flush_metrics(stage)
  assert [r['step'] for r in workdir.read_metrics(stage)] == list(range(1, 14))


def test_a_damaged_newest_checkpoint_in_a_bucket_is_set_aside(emulator):
  """The newest step's array data overwritten in the bucket: restore says so, moves it to
  damaged_checkpoints/ and restores the step before."""
  stage = f'gs://{BUCKET}/damaged'
  manager = checkpoints.make_manager(stage, keep=3, asynchronous=False)
  states = {step: {'step': np.asarray(step, np.int32),
                   'params': {'kernel': np.full((64, 64), step, np.float32)}} for step in (1, 2)}
  for step, state in states.items():
    checkpoints.save(manager, step, state, {'step': step})
  manager.wait_until_finished()
  data = [n for n in emulator.objects(BUCKET, 'damaged/checkpoints/2/state/') if '/d/' in n]
  assert data, 'no array data objects found'
  for name in data:
    emulator.upload(BUCKET, name, b'\x00' * 64)
  manager = checkpoints.make_manager(stage, keep=3, asynchronous=False)
  state, meta = checkpoints.restore_latest(manager, checkpoints.abstract_like(states[1]))
  assert meta['step'] == 1
  np.testing.assert_array_equal(state['params']['kernel'], states[1]['params']['kernel'])
  names = emulator.objects(BUCKET, 'damaged/')
  assert any(n.startswith('damaged/damaged_checkpoints/2-') for n in names)
  assert manager.all_steps() == [1]


def test_a_profile_of_a_run_in_a_bucket_lands_in_the_bucket(emulator):
  """jax.profiler writes to a local folder; profiling.Profiler copies the trace into the workdir."""
  import jax
  import jax.numpy as jnp

  from simclr_jax import profiling

  workdir = f'gs://{BUCKET}/profiled/pretrain'
  profiler = profiling.Profiler(workdir, '2,1', first_step=1)
  square = jax.jit(lambda x: x @ x)
  for step in (1, 2, 3):
    profiler.before(step)
    out = square(jnp.ones((64, 64)))
    profiler.after(step, out)
  assert not profiler.active
  traces = [name for name, size in emulator.objects(BUCKET, 'profiled/').items()
            if name.endswith('.xplane.pb') and size > 1000]
  assert len(traces) == 1 and traces[0].startswith('profiled/pretrain/plugins/profile/'), traces
  assert not os.path.exists(profiler._local)  # The local copy is gone.
