"""Device-resident training: the demo pretrains and fine-tunes with TensorFlow unimportable."""

import json
import os
import subprocess
import sys
import textwrap

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

DRIVER = textwrap.dedent('''
  import sys
  # Make TensorFlow (and everything built on it) unimportable, as on a JAX-only machine.
  for name in ('tensorflow', 'tensorflow_datasets', 'tensorboard'):
    sys.modules[name] = None
  from simclr_jax import cli, main
  sys.argv = ['main'] + sys.argv[1:]
  try:
    cli.run(main._define_flags, main.main)
  finally:
    loaded = [m for m in sys.modules if m.startswith('tensorflow') and sys.modules[m] is not None]
    print('TENSORFLOW_MODULES', loaded)
''')


@pytest.mark.slow
def test_device_resident_demo_runs_without_tensorflow(tmp_path):
  workdir = tmp_path / 'run'
  args = [
    '--config=configs/demo.py', f'--workdir={workdir}', '--config.stages=pretrain,finetune',
    '--config.data.device_resident=True', '--config.data.use_blur=True',
    '--config.model.width_multiplier=0.125', '--config.train.global_batch_size=32',
    '--config.train.train_steps=4', '--config.train.log_every_steps=2',
    '--config.finetune.train.train_steps=2', '--config.finetune.train.global_batch_size=16',
    '--config.train.plots_at_end=False', '--config.train.eval_batch_size=64',
  ]
  env = dict(os.environ, JAX_PLATFORMS='cpu')
  env['XLA_FLAGS'] = '--xla_force_host_platform_device_count=2 --xla_backend_optimization_level=0'
  proc = subprocess.run([sys.executable, '-c', DRIVER, *args], cwd=REPO, env=env,
                        capture_output=True, text=True, timeout=600)
  output = proc.stdout + proc.stderr
  assert proc.returncode == 0, output[-4000:]
  assert 'TENSORFLOW_MODULES []' in proc.stdout
  for stage in ('pretrain', 'finetune'):
    with open(workdir / stage / 'results.json') as f:
      results = json.load(f)
    assert results['eval_num_examples'] == 200
    assert os.listdir(workdir / stage / 'checkpoints')
  metrics = (workdir / 'pretrain' / 'metrics.jsonl').read_text().splitlines()
  first = json.loads(metrics[0])
  assert first['step'] == 2 and first['contrastive_loss'] > 0
  assert 'knn_top1' in results or json.loads(metrics[-1]).get('knn_top1') is not None
