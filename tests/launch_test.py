"""Launch scripts: --dry-run prints the right commands; bad arguments: a usage line, exit 2."""

import os
import re
import shlex
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TPU_VM = os.path.join(REPO, 'launch', 'tpu_vm.sh')
TPU_POD = os.path.join(REPO, 'launch', 'tpu_pod.sh')
GPU = os.path.join(REPO, 'launch', 'gpu.sh')


def _run(script, *args, timeout=30, env=None):
  return subprocess.run(['bash', script, *args], capture_output=True, text=True, timeout=timeout,
                        cwd=REPO, env=env)


def _commands(stdout):
  """The printed command lines (not the Logs/TensorBoard hints), split as a shell would."""
  return [shlex.split(line) for line in stdout.splitlines() if not re.match(r'^[A-Z]\w*:', line)]


def test_tpu_vm_dry_run_creates_copies_installs_and_runs_on_every_worker():
  result = _run(TPU_VM, '--dry-run', '--skip-plan', '--create', '--spot',
                '--accelerator-type=v4-32',
                '--project=my-project', 'my-tpu', 'us-central2-b', 'configs/r50_1x.py',
                'gs://bucket/r50', '--config.data.tfds_data_dir=gs://bucket/tfds')
  assert result.returncode == 0, result.stderr
  create, tar, scp, install, start = _commands(result.stdout)
  assert create[:5] == ['gcloud', 'compute', 'tpus', 'tpu-vm', 'create']
  for flag in ('my-tpu', '--zone=us-central2-b', '--accelerator-type=v4-32', '--spot',
               '--project=my-project'):
    assert flag in create
  assert tar[0] == 'tar' and '--exclude=./.venv' in tar and tar[-3:] == ['-C', REPO, '.']
  assert scp[:5] == ['gcloud', 'compute', 'tpus', 'tpu-vm', 'scp'] and '--worker=all' in scp
  assert scp[5] == tar[2] and scp[6] == 'my-tpu:simclr_jax_src.tar.gz'
  for command in (install, start):
    assert command[:6] == ['gcloud', 'compute', 'tpus', 'tpu-vm', 'ssh', 'my-tpu']
    assert '--worker=all' in command and '--zone=us-central2-b' in command
  assert "pip install -q -e '.[tpu]'" in install[-1]
  remote = start[-1]
  assert remote.startswith('--command=')
  main = shlex.split(remote.split('nohup ', 1)[1].split(' > ', 1)[0])
  assert main[1:3] == ['-m', 'simclr_jax.main']
  assert main[3:] == ['--config=configs/r50_1x.py', '--workdir=gs://bucket/r50',
                      '--config.distributed.initialize=True',
                      '--config.data.tfds_data_dir=gs://bucket/tfds']
  assert 'tail -f ~/simclr_train.log' in result.stdout


def test_tpu_vm_existing_slice_without_install_only_starts_the_job():
  result = _run(TPU_POD, '--dry-run', '--skip-install', 'my-tpu', 'europe-west4-a',
                'configs/r50_1x.py', 'gs://bucket/r50')
  assert result.returncode == 0, result.stderr
  (start,) = _commands(result.stdout)
  assert start[4] == 'ssh' and 'simclr_jax.main' in start[-1]


@pytest.mark.parametrize('args, message', [
  ((), 'usage:'),
  (('my-tpu', 'us-central2-b', 'configs/r50_1x.py'), 'usage:'),
  (('my-tpu', 'us-central2-b', 'configs/r50_1x.py', '/tmp/local'), 'is not a gs:// path'),
  (('my-tpu', 'us-central2-b', 'configs/nope.py', 'gs://b/w'), 'is not a file of this checkout'),
  (('--bogus', 'my-tpu', 'us-central2-b', 'configs/r50_1x.py', 'gs://b/w'), 'unknown option'),
])
def test_tpu_vm_bad_arguments(args, message):
  result = _run(TPU_VM, '--dry-run', *args)
  assert result.returncode == 2
  assert message in result.stderr and result.stdout == ''


def test_gpu_dry_run_one_command_per_host_with_its_process_id():
  hosts = ['gpu-0', 'gpu-1', 'gpu-2']
  result = _run(GPU, '--dry-run', '--port=2222', 'configs/demo.py', '/nfs/simclr/demo', *hosts,
                '--config.train.train_steps=5')
  assert result.returncode == 0, result.stderr
  lines = result.stdout.splitlines()
  assert len(lines) == 3
  for process_id, (host, line) in enumerate(zip(hosts, lines)):
    words = shlex.split(line)
    assert words[:4] == ['ssh', '-o', 'BatchMode=yes', host]
    assert words[5:] == ['>', f'/tmp/simclr_gpu_logs/process_{process_id}.log', '2>&1', '&']
    remote = shlex.split(words[4])
    assert remote[:3] == ['cd', REPO, '&&']
    assert remote[4:6] == ['-m', 'simclr_jax.main']
    assert remote[6:] == [
      '--config=configs/demo.py', '--workdir=/nfs/simclr/demo', '--config.train.train_steps=5',
      '--config.distributed.initialize=True',
      '--config.distributed.coordinator_address=gpu-0:2222',
      '--config.distributed.num_processes=3', f'--config.distributed.process_id={process_id}',
    ]


def test_gpu_single_local_host_runs_one_plain_process():
  result = _run(GPU, '--dry-run', '--python=/opt/venv/bin/python', 'configs/demo.py', '/tmp/w')
  assert result.returncode == 0, result.stderr
  (line,) = result.stdout.splitlines()
  words = shlex.split(line)
  assert words[:2] == ['bash', '-c']
  assert shlex.split(words[2]) == ['cd', REPO, '&&', '/opt/venv/bin/python', '-m',
                                   'simclr_jax.main', '--config=configs/demo.py',
                                   '--workdir=/tmp/w']


@pytest.mark.parametrize('args, message', [
  ((), 'usage:'),
  (('configs/demo.py',), 'usage:'),
  (('--port=x', 'configs/demo.py', '/tmp/w'), 'is not a number'),
  (('--nope', 'configs/demo.py', '/tmp/w'), 'unknown option'),
])
def test_gpu_bad_arguments(args, message):
  result = _run(GPU, '--dry-run', *args)
  assert result.returncode == 2
  assert message in result.stderr and result.stdout == ''


def test_tpu_vm_refuses_a_config_that_does_not_fit_before_creating_anything():
  """Pre-flight: the plan compiles the config for the slice here and the launch stops there."""
  result = _run(TPU_VM, '--dry-run', '--create', '--accelerator-type=v5litepod-4', 'my-tpu',
                'us-west4-a', 'configs/demo.py', 'gs://bucket/demo', '--config.stages=pretrain,',
                '--config.train.global_batch_size=33554432', timeout=600,
                env={**os.environ, 'PYTHON': sys.executable})
  assert result.returncode == 1
  assert result.stdout == ''  # Nothing created, copied or started, not even in the dry run.
  last = result.stderr.strip().splitlines()[-1]
  assert 'refused by the pre-flight plan: pretrain does not fit on v5litepod-4: needs' in last
  assert '--skip-plan' in last
