"""Preemption-safe, deterministic resume; NaN detection; atomic checkpoints; workdir safety."""

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import raw_checkpoint
from configs import demo as demo_lib
from simclr_jax import checkpoints, train, validation, workdir
from simclr_jax.data import input as data_input

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = [
  '--config=configs/demo.py', '--config.stages=pretrain,', '--config.model.width_multiplier=0.125',
  '--config.train.global_batch_size=16', '--config.train.checkpoint_every_steps=2',
  '--config.train.log_every_steps=1', '--config.knn.enabled=False',
  '--config.train.eval_at_end=False', '--config.data.use_blur=True',
]


def _start(workdir_path, *extra):
  # A shared compilation cache: restarts skip compiling, as after a real preemption.
  cache = os.path.join(os.path.dirname(str(workdir_path)), 'xla_cache')
  extra = (*extra, f'--config.compilation_cache_dir={cache}')
  env = dict(os.environ, JAX_PLATFORMS='cpu')
  env['XLA_FLAGS'] = '--xla_force_host_platform_device_count=2 --xla_backend_optimization_level=0'
  return subprocess.Popen(
    [sys.executable, '-m', 'simclr_jax.main', f'--workdir={workdir_path}', *TINY, *extra],
    cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
  )


def _last_logged_step(stage_dir) -> int:
  path = os.path.join(stage_dir, 'metrics.jsonl')
  if not os.path.exists(path):
    return 0
  with open(path) as f:
    steps = [json.loads(line)['step'] for line in f if line.strip()]
  return max(steps, default=0)


def _wait_for_step(process, stage_dir, step, timeout=240):
  deadline = time.time() + timeout
  while time.time() < deadline:
    if _last_logged_step(stage_dir) >= step:
      return
    if process.poll() is not None:
      raise AssertionError(f'run ended before step {step}:\n{process.stdout.read()[-3000:]}')
    time.sleep(0.05)
  raise AssertionError(f'step {step} not reached in {timeout}s')


@pytest.mark.slow
def test_sigkill_three_times_then_resume_is_bitwise_identical(tmp_path):
  steps = '--config.train.train_steps=12'
  straight = _start(tmp_path / 'straight', steps)
  assert straight.wait(timeout=300) == 0, straight.stdout.read()[-3000:]

  killed_dir = tmp_path / 'killed'
  rng = np.random.default_rng(0)
  kill_steps = sorted(rng.choice(np.arange(2, 12), size=3, replace=False))
  for kill_step in kill_steps:
    process = _start(killed_dir, steps)
    _wait_for_step(process, killed_dir / 'pretrain', kill_step)
    process.send_signal(signal.SIGKILL)
    process.wait()
  final = _start(killed_dir, steps)
  output = final.stdout.read()
  assert final.wait(timeout=300) == 0, output[-3000:]
  assert 'Restored checkpoint of step' in output

  step_a, state_a = raw_checkpoint.raw_state(tmp_path / 'straight' / 'pretrain')
  step_b, state_b = raw_checkpoint.raw_state(killed_dir / 'pretrain')
  assert step_a == step_b == 12
  leaves_a, leaves_b = jax.tree.leaves(state_a), jax.tree.leaves(state_b)
  assert len(leaves_a) == len(leaves_b) > 10
  for a, b in zip(leaves_a, leaves_b):  # params, BN statistics, optimizer state: bitwise.
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


@pytest.mark.slow
@pytest.mark.parametrize('signum', [signal.SIGTERM, signal.SIGINT])
def test_sigterm_or_ctrl_c_saves_the_current_step_and_exits_cleanly(tmp_path, signum):
  process = _start(tmp_path, '--config.train.train_steps=500',
                   '--config.train.checkpoint_every_steps=100')
  _wait_for_step(process, tmp_path / 'pretrain', 3)
  process.send_signal(signum)
  output = process.stdout.read()
  assert process.wait(timeout=120) == 0, output[-3000:]
  assert 'Stopped on request' in output and 'Traceback' not in output
  manager = checkpoints._read_only_manager(str(tmp_path / 'pretrain'))
  saved = manager.latest_step()
  assert 3 <= saved < 100  # Not a scheduled save: the one made on SIGTERM.
  assert saved >= _last_logged_step(tmp_path / 'pretrain')
  assert not os.path.exists(tmp_path / 'pretrain' / 'results.json')


@pytest.mark.slow
def test_second_run_on_a_workdir_is_refused_and_a_stale_lock_is_taken_over(tmp_path):
  first = _start(tmp_path, '--config.train.train_steps=500',
                 '--config.train.checkpoint_every_steps=100')
  _wait_for_step(first, tmp_path / 'pretrain', 2)
  second = _start(tmp_path, '--config.train.train_steps=500')
  output = second.stdout.read()
  assert second.wait(timeout=120) == 1
  assert f'is in use by pid {first.pid} on ' in output and 'Traceback' not in output
  assert output.strip().splitlines()[-1].startswith('error: workdir ')
  first.send_signal(signal.SIGKILL)  # Leaves its lock behind.
  first.wait()
  assert os.path.exists(tmp_path / workdir.LOCK_FILE)
  third = _start(tmp_path, '--config.train.train_steps=4',
                 '--config.train.allow_config_change=True')
  output = third.stdout.read()
  assert third.wait(timeout=300) == 0, output[-3000:]
  assert f'stale lock of pid {first.pid}' in output
  assert not os.path.exists(tmp_path / workdir.LOCK_FILE)  # Released at the end.


def _tiny_config():
  config = demo_lib.get_config()
  config.stages = ('pretrain',)
  config.model.width_multiplier = 0.125
  config.train.global_batch_size = 16
  config.train.train_steps = 8
  config.train.log_every_steps = 3
  config.train.checkpoint_every_steps = 2
  config.knn.enabled = False
  config.train.eval_at_end = False
  return config


def _poison_from_step(monkeypatch, first_bad_step):
  make = data_input.make_train_data

  def poisoned(config, stage, mesh):
    data = make(config, stage, mesh)

    def prepare(batch, resident, step):  # In the step: `step` counts the steps done before it.
      views = data.prepare(batch, resident, step)
      return dict(views, view_a=jnp.where(step + 1 >= first_bad_step, jnp.nan, views['view_a']))

    return dataclasses.replace(data, prepare=prepare)

  monkeypatch.setattr(data_input, 'make_train_data', poisoned)


def test_nan_stops_within_the_log_window_and_keeps_the_last_finite_checkpoint(
    tmp_path, monkeypatch):
  _poison_from_step(monkeypatch, first_bad_step=5)
  with pytest.raises(FloatingPointError, match='between steps 4 and 6'):
    train.train_and_evaluate(_tiny_config(), str(tmp_path))
  params, _, meta = checkpoints.restore_variables(str(tmp_path))
  assert meta['step'] == 4
  assert all(np.all(np.isfinite(x)) for x in jax.tree.leaves(params))


def test_skip_nonfinite_updates_keeps_training(tmp_path, monkeypatch):
  _poison_from_step(monkeypatch, first_bad_step=7)
  config = _tiny_config()
  config.train.skip_nonfinite_updates = True
  config.train.log_every_steps = 100  # The NaN loss is logged; the parameters stay finite.
  with pytest.raises(FloatingPointError):
    train.train_and_evaluate(config, str(tmp_path))
  params, _, meta = checkpoints.restore_variables(str(tmp_path))
  assert all(np.all(np.isfinite(x)) for x in jax.tree.leaves(params))


def test_interrupted_save_is_never_restored(tmp_path):
  config = _tiny_config()
  config.train.train_steps = 2
  train.train_and_evaluate(config, str(tmp_path))
  directory = checkpoints.checkpoint_dir(str(tmp_path))
  # What a kill in the middle of writing step 4 leaves behind: orbax's temporary folder.
  partial = os.path.join(directory, '4.orbax-checkpoint-tmp-1234')
  os.makedirs(os.path.join(partial, 'state'))
  with open(os.path.join(partial, 'state', 'garbage'), 'w') as f:
    f.write('half a checkpoint')
  _, _, meta = checkpoints.restore_variables(str(tmp_path))
  assert meta['step'] == 2


def test_unwritable_and_full_workdir(tmp_path, monkeypatch):
  blocker = tmp_path / 'a_file'
  blocker.write_text('not a directory')
  with pytest.raises(validation.ConfigError, match='is not writable'):
    workdir.check_writable(str(blocker / 'run'))
  monkeypatch.setattr(workdir.fs, 'free_bytes', lambda _: 10 * 2**20)
  with pytest.raises(validation.ConfigError, match='MiB free'):
    workdir.check_writable(str(tmp_path / 'run'))


def test_a_start_that_fails_before_the_first_step_records_no_config(tmp_path):
  """Following the error's advice (another split, data dir) must not be refused afterwards."""
  config = _tiny_config()
  config.data.eval_split = 'validation'  # The demo photos have train and test only.
  with pytest.raises((validation.ConfigError, FileNotFoundError, ValueError)):
    train.train_and_evaluate(config, str(tmp_path))
  assert not os.path.exists(tmp_path / workdir.CONFIG_FILE)


def test_workdir_of_a_different_config_is_refused(tmp_path):
  config = _tiny_config()
  workdir.check_same_run(config, str(tmp_path))
  workdir.write_config(config, str(tmp_path))
  moved = _tiny_config()
  moved.data.tfds_data_dir = '/elsewhere/tensorflow_datasets'  # Where the data lives: same run.
  workdir.check_same_run(moved, str(tmp_path))
  longer = _tiny_config()
  longer.train.train_steps = 100  # Extending a run is allowed.
  workdir.check_same_run(longer, str(tmp_path))
  other = _tiny_config()
  other.model.width_multiplier = 0.25
  with pytest.raises(validation.ConfigError, match='model.width_multiplier: 0.125 -> 0.25'):
    workdir.check_same_run(other, str(tmp_path))
  other.train.allow_config_change = True
  workdir.check_same_run(other, str(tmp_path))


SLOW_SAVER = '''
import sys
import numpy as np
from simclr_jax import checkpoints
workdir = sys.argv[1]
small = {'kernel': np.ones((4, 4), np.float32)}
checkpoints.save_variables(workdir, small, {}, {'step': 1}, step=1)
# Step 2 is large enough (400 MB) that writing it takes a while: the test kills it mid-write.
big = {'kernel': np.random.default_rng(0).normal(size=(100_000_000,)).astype(np.float32)}
print('SAVING', flush=True)
checkpoints.save_variables(workdir, big, {}, {'step': 2}, step=2)
print('SAVED', flush=True)
'''


@pytest.mark.slow
def test_kill_during_a_save_restores_the_previous_checkpoint(tmp_path):
  process = subprocess.Popen(
    [sys.executable, '-c', SLOW_SAVER, str(tmp_path)], cwd=REPO, stdout=subprocess.PIPE,
    stderr=subprocess.STDOUT, text=True, env=dict(os.environ, JAX_PLATFORMS='cpu'))
  directory = checkpoints.checkpoint_dir(str(tmp_path))
  deadline, writing = time.time() + 120, False
  while time.time() < deadline and not writing:
    names = os.listdir(directory) if os.path.isdir(directory) else []
    writing = any(n.startswith('2.') and 'tmp' in n for n in names)  # Step 2 being written.
    assert process.poll() is None, process.stdout.read()[-3000:]
    time.sleep(0.01)
  process.send_signal(signal.SIGKILL)
  process.wait()
  assert writing, 'the save of step 2 was never seen in progress'
  assert '2' not in os.listdir(directory)  # Step 2 never completed ...
  params, _, meta = checkpoints.restore_variables(str(tmp_path))
  assert meta['step'] == 1  # ... so the previous checkpoint is the one restored.
  np.testing.assert_array_equal(params['kernel'], np.ones((4, 4), np.float32))
