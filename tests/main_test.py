"""End to end: the demo config pretrains, checkpoints, logs, evaluates and resumes."""

import glob
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from configs import demo as demo_lib
from simclr_jax import train

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _small_demo():
  config = demo_lib.get_config()
  config.train.train_steps = 6
  config.train.global_batch_size = 32
  config.train.log_every_steps = 2
  config.train.checkpoint_every_steps = 4
  config.train.eval_batch_size = 64  # 200 test images: 4 batches, the last one padded.
  config.model.width_multiplier = 0.125
  return config


@pytest.mark.slow
def test_demo_trains_checkpoints_and_resumes(tmp_path):
  workdir = str(tmp_path / 'demo')
  results = train.train_and_evaluate(_small_demo(), workdir)
  assert results['steps'] == 6 and results['resumed_from_step'] == 0
  assert results['eval_num_examples'] == 200  # Exact: padding is masked out.
  assert 0.0 <= results['eval_top1'] <= results['eval_top5'] <= 1.0
  assert sorted(os.listdir(os.path.join(workdir, 'checkpoints'))) == ['4', '6']
  assert glob.glob(os.path.join(workdir, 'events.out.tfevents.*'))
  with open(os.path.join(workdir, 'results.json')) as f:
    assert json.load(f)['config']['name'] == 'demo'

  # Rerunning the same config resumes from the final checkpoint instead of starting over.
  again = train.train_and_evaluate(_small_demo(), workdir)
  assert again['resumed_from_step'] == 6
  assert again['eval_top1'] == results['eval_top1']

  # A longer run continues from step 6 and saves its new final step.
  longer = _small_demo()
  longer.train.train_steps = 8
  resumed = train.train_and_evaluate(longer, workdir)
  assert resumed['resumed_from_step'] == 6
  assert '8' in os.listdir(os.path.join(workdir, 'checkpoints'))
  # wall_time_s covers every segment, not only the last one.
  assert resumed['wall_time_s'] > results['wall_time_s']
  # The parameter table goes to a file, written once (not to the log).
  with open(os.path.join(workdir, 'parameters.txt')) as f:
    table = f.read()
  assert 'stem' in table or 'conv' in table.lower()


def _run_main(*args):
  env = dict(os.environ, JAX_PLATFORMS='cpu')
  return subprocess.run(
    [sys.executable, '-m', 'simclr_jax.main', '--config=configs/demo.py', *args],
    cwd=REPO, env=env, capture_output=True, text=True, timeout=300,
  )


@pytest.mark.parametrize(
  'override,field',
  [
    ('--config.train.temperature=-1', 'train.temperature'),
    ('--config.data.dataset=imagenet3000', 'data.dataset'),
    ('--config.model.depth=19', 'model.depth'),
  ],
)
def test_cli_rejects_bad_config_in_one_line(tmp_path, override, field):
  proc = _run_main(f'--workdir={tmp_path}', override)
  assert proc.returncode != 0
  error_lines = [line for line in proc.stderr.splitlines() if field in line]
  assert error_lines, proc.stderr[-2000:]
  assert 'Traceback' not in proc.stderr
  assert 'google_auth' not in proc.stderr  # The tfds name check makes no network call.
  assert not os.path.exists(tmp_path / 'checkpoints')  # Failed before building anything.


@pytest.mark.parametrize('args, message', [
  (('--config=configs/demo.py', '--config.train.foo=1'),
   'error: --config.train.foo: no such config field; see docs/CONFIG.md'),
  (('--config=configs/demo.py', '--config.train.train_steps=abc'),
   "error: flag --config.train.train_steps=abc: invalid literal for int()"),
  (('--config=configs/nope.py',), 'error: --config=configs/nope.py: no such file'),
  (('--config=configs/r152_3x.py:2pct',), 'error: configs/r152_3x.py:2pct is unknown; use 1pct'),
])
def test_command_line_mistakes_are_one_line(tmp_path, args, message):
  """Typos in flags and config files: one line naming the flag, no traceback (from any dir)."""
  env = dict(os.environ, JAX_PLATFORMS='cpu')
  args = [a.replace('configs/', f'{REPO}/configs/') if 'r152' in a else a for a in args]
  cwd = tmp_path if any('r152' in a for a in args) else REPO  # The config from another dir.
  proc = subprocess.run([sys.executable, '-m', 'simclr_jax.main', *args], cwd=cwd, env=env,
                        capture_output=True, text=True, timeout=120)
  assert proc.returncode == 1
  assert proc.stderr.strip().splitlines() == [proc.stderr.strip()]  # One line.
  assert proc.stderr.startswith(message), proc.stderr


def test_data_mistakes_end_in_one_line_without_a_traceback(tmp_path):
  """A split folder that does not exist: the error names it and the fix, no traceback."""
  demo = os.path.join(REPO, 'simclr_jax', 'demo_data', 'cifar10')
  proc = _run_main(f'--workdir={tmp_path}', '--config.data.dataset=folder',
                   f'--config.data.folder={demo}', '--config.data.eval_split=validation',
                   '--config.stages=pretrain,')
  assert proc.returncode == 1 and 'Traceback' not in proc.stderr
  assert proc.stderr.strip().splitlines()[-1] == (
    f"error: data.folder='{demo}' has no split folder 'validation' (found: test, train); set the "
    'split (data.train_split / data.eval_split) to one of them.')


def _flat_folder(tmp_path, count=48):
  """A flat folder of unlabeled photos (the demo's, without their class folders)."""
  import shutil

  source = os.path.join(REPO, 'simclr_jax', 'demo_data', 'cifar10', 'train')
  flat = tmp_path / 'photos'
  flat.mkdir()
  photos = sorted(glob.glob(os.path.join(source, '*', '*.png')))[::1000 // count][:count]
  for index, path in enumerate(photos):
    shutil.copy(path, flat / f'{index:04d}.png')
  return str(flat)


@pytest.mark.slow
def test_flat_folder_of_unlabeled_images_pretrains_end_to_end(tmp_path):
  """No labels: probe, kNN and eval step aside (one line), checkpoints save, embed works."""
  folder = _flat_folder(tmp_path)
  workdir = tmp_path / 'run'
  args = [f'--workdir={workdir}', '--config.data.dataset=folder', f'--config.data.folder={folder}',
          '--config.stages=pretrain,', '--config.train.train_steps=3',
          '--config.train.global_batch_size=16', '--config.model.width_multiplier=0.125',
          '--config.train.plots_at_end=False']
  proc = _run_main(*args)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert 'have no labels, so the linear probe, kNN monitor and evaluation are off' in proc.stderr
  results = json.loads((workdir / 'pretrain' / 'results.json').read_text())
  assert results['steps'] == 3 and 'eval_top1' not in results
  assert os.listdir(workdir / 'pretrain' / 'checkpoints')
  again = _run_main(*args)  # A rerun finds the stage complete (its config was recorded as asked).
  assert again.returncode == 0, again.stderr[-3000:]
  # Quiet by default: no parameter table, hyperparameter dump or orbax metadata warnings.
  for noise in ('| Name', 'hparams', '_CHECKPOINT_METADATA', 'Metadata file does not exist'):
    assert noise not in proc.stderr + again.stderr, noise
  assert len(proc.stderr.splitlines()) < 30, proc.stderr  # One stage, 3 steps.

  output = tmp_path / 'features.npz'
  embed = subprocess.run(
    [sys.executable, '-m', 'simclr_jax.embed', '--config=configs/demo.py',
     f'--workdir={workdir / "pretrain"}', '--split=train', f'--output={output}',
     '--config.data.dataset=folder', f'--config.data.folder={folder}',
     '--config.model.width_multiplier=0.125'],
    cwd=REPO, capture_output=True, text=True, timeout=300,
    env=dict(os.environ, JAX_PLATFORMS='cpu'))
  assert embed.returncode == 0, embed.stderr[-3000:]
  features = np.load(output)
  assert features['features'].shape == (48, 64) and set(features['labels'].tolist()) == {-1}


def test_stages_that_need_labels_are_refused_up_front_on_unlabeled_images(tmp_path):
  folder = _flat_folder(tmp_path, count=8)
  proc = _run_main(f'--workdir={tmp_path / "run"}', '--config.data.dataset=folder',
                   f'--config.data.folder={folder}', '--config.stages=pretrain,finetune')
  assert proc.returncode == 1
  assert proc.stderr.strip().splitlines()[-1].startswith(
    f'error: data.folder={folder!r} is a flat folder of unlabeled images, but finetune needs '
    'labels')
  assert not os.path.exists(tmp_path / 'run' / 'pretrain' / 'checkpoints')


def test_verbose_brings_the_traceback_back(tmp_path):
  quiet = _run_main(f'--workdir={tmp_path}', '--config.train.nosuchfield=1')
  assert quiet.returncode == 1 and 'Traceback' not in quiet.stderr
  env = dict(os.environ, JAX_PLATFORMS='cpu', SIMCLR_VERBOSE='1')
  loud = subprocess.run(
    [sys.executable, '-m', 'simclr_jax.main', '--config=configs/demo.py', f'--workdir={tmp_path}',
     '--config.train.nosuchfield=1'],
    cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
  assert loud.returncode != 0 and 'Traceback' in loud.stderr and 'nosuchfield' in loud.stderr


def test_embed_on_a_run_workdir_names_its_stages_in_one_line(tmp_path):
  (tmp_path / 'pretrain' / 'checkpoints').mkdir(parents=True)
  (tmp_path / 'finetune' / 'checkpoints').mkdir(parents=True)
  result = subprocess.run(
    [sys.executable, '-m', 'simclr_jax.embed', '--config=configs/demo.py',
     f'--workdir={tmp_path}', f'--output={tmp_path / "e.npz"}'],
    cwd=REPO, env=dict(os.environ, JAX_PLATFORMS='cpu'), capture_output=True, text=True,
    timeout=300)
  assert result.returncode == 1 and 'Traceback' not in result.stderr
  last = result.stderr.strip().splitlines()[-1]
  assert last.startswith(f'error: {tmp_path} is a run workdir, not a stage workdir; pass one of')
