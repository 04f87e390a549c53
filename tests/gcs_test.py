"""The product on the storage Cloud TPU runs use: gs:// paths on an emulated bucket.

fake-gcs-server on 127.0.0.1 behind the TLS proxy of tests/gcs_emulator.py: TensorFlow's GCS
client (epath, tf.data) and tensorstore's (orbax arrays) talk to it as they would to Cloud
Storage. Nothing here reaches the network.
"""

import io
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time

import jax
import numpy as np
import pytest

import raw_checkpoint
import shared_paths
from configs import official_fixture
from flax import traverse_util
from simclr_jax import checkpoints, fs, import_tf2, workdir

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BUCKET = 'bkt'


def _main(workdir_url: str, *flags: str, env: dict | None = None, wait: bool = True,
          devices: int = 2):
  environment = dict(os.environ, JAX_PLATFORMS='cpu', **(env or {}))
  environment['XLA_FLAGS'] = (f'--xla_force_host_platform_device_count={devices} '
                              '--xla_backend_optimization_level=0')
  command = [sys.executable, '-m', 'simclr_jax.main', '--config=configs/demo.py',
             f'--workdir={workdir_url}', *flags]
  log = tempfile.TemporaryFile('w+')  # Not a pipe: a long log must never stall the run.
  process = subprocess.Popen(command, cwd=REPO, env=environment, stdout=log,
                             stderr=subprocess.STDOUT, text=True)
  process.log = log
  if not wait:
    return process
  process.wait(timeout=900)
  return process.returncode, _output(process)


def _output(process) -> str:
  process.log.seek(0)
  return process.log.read()


# ------------------------------------------------------------------- the main command on gs://


def test_a_missing_or_read_only_bucket_stops_the_main_command_before_compiling(emulator):
  code, output = _main('gs://nobucket/run')
  assert code == 1
  assert output.strip().splitlines()[-1] == (
    'error: --workdir=gs://nobucket/run: bucket gs://nobucket does not exist (or this machine '
    'cannot see it); create it (gcloud storage buckets create gs://nobucket) or fix --workdir')
  assert 'Traceback' not in output and ' steps (' not in output  # Nothing was built.
  read_only = emulator.new_proxy()
  read_only.read_only_buckets.add(BUCKET)
  code, output = _main(f'gs://{BUCKET}/read_only', env=read_only.env())
  assert code == 1 and ' steps (' not in output
  last = output.strip().splitlines()[-1]
  assert re.match(r'error: --workdir=gs://bkt/read_only is not writable: .*permission denied',
                  last), last
  assert not emulator.objects(BUCKET, 'read_only/')


TINY_CHAIN = [
  '--config.model.width_multiplier=0.125', '--config.train.train_steps=12',
  '--config.train.global_batch_size=32', '--config.train.eval_batch_size=100',
  '--config.train.log_every_steps=1', '--config.train.checkpoint_every_steps=4',
  '--config.knn.k=20', '--config.finetune.train.train_steps=2',
  '--config.finetune.train.global_batch_size=16', '--config.supervised.train.train_steps=2',
  '--config.supervised.train.global_batch_size=16', '--config.distill.train.train_steps=2',
  '--config.distill.train.global_batch_size=16', '--config.train.plots_at_end=False',
]
STAGES = ('pretrain', 'finetune', 'distill', 'supervised')


def _table(output: str) -> list[str]:
  """The results table without its time and images/s columns (they differ between runs)."""
  lines = output[output.index('Results in'):].splitlines()[1:]
  return [re.sub(r'\s+\d+s\s+(?:\d+|-)$', '', line) for line in lines if line.strip()]


@pytest.mark.slow
def test_the_demo_chain_on_a_flaky_bucket_killed_and_rerun_equals_the_chain_on_a_local_disk(
    emulator, tmp_path):
  """pretrain -> finetune -> distill -> supervised in a bucket whose every 50th request fails
  (HTTP 503 or a dropped connection, in turn), killed (SIGKILL) during pretraining and rerun:
  the same table, every stage's losses and the pretrained state bit for bit as on a local disk
  (that run goes on beside it)."""
  bucket_run, local_run = f'gs://{BUCKET}/chain', str(tmp_path / 'chain')
  flaky = emulator.new_proxy()
  flaky.fail_every, flaky.fault = 50, 'mixed'
  local = _main(local_run, *TINY_CHAIN, wait=False)
  killed = _main(bucket_run, *TINY_CHAIN, env=flaky.env(), wait=False)
  deadline = time.time() + 600
  while 4 not in _finished_steps(emulator, 'chain/pretrain/checkpoints/'):
    assert killed.poll() is None, _output(killed)[-3000:]
    assert time.time() < deadline, 'no checkpoint appeared'
    time.sleep(0.05)
  killed.send_signal(signal.SIGKILL)
  killed.wait()
  code, on_bucket = _main(bucket_run, *TINY_CHAIN, env=flaky.env())
  assert code == 0, on_bucket[-4000:]
  local.wait(timeout=900)
  on_disk = _output(local)
  assert local.returncode == 0, on_disk[-4000:]
  resumed = re.search(r'pretrain: resuming from step (\d+) ', on_bucket)
  assert resumed and int(resumed[1]) in (4, 8), on_bucket[:6000]  # Killed during pretraining.
  assert flaky.failed >= 5, flaky.failed  # Faults happened, and were retried.
  assert _table(on_bucket) == _table(on_disk) and len(_table(on_disk)) >= 6
  for stage in STAGES:  # Every stage's losses, bit for bit.
    remote = workdir.read_metrics(fs.join(bucket_run, stage))
    local_records = workdir.read_metrics(fs.join(local_run, stage))
    losses = [{r['step']: r['total_loss'] for r in records if 'total_loss' in r}
              for records in (remote, local_records)]
    assert losses[0] == losses[1] and losses[0], stage
  step_a, state_a = raw_checkpoint.raw_state(f'{bucket_run}/pretrain')
  step_b, state_b = raw_checkpoint.raw_state(f'{local_run}/pretrain')
  assert step_a == step_b == 12
  leaves_a, leaves_b = jax.tree.leaves(state_a), jax.tree.leaves(state_b)
  assert len(leaves_a) == len(leaves_b) > 10
  for a, b in zip(leaves_a, leaves_b):  # params, BN statistics, optimizer state: bitwise.
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  objects = emulator.objects(BUCKET, 'chain/')
  for stage in STAGES:
    assert f'chain/{stage}/results.json' in objects
    assert any(name.startswith(f'chain/{stage}/checkpoints/') for name in objects)
  assert not any(workdir.METRICS_PARTS in name or name.endswith('.lock') for name in objects)

  # The commands that read a workdir or a SavedModel, with gs:// inputs and outputs, at once.
  official = shared_paths.OFFICIAL_TF2_FIXTURES / 'bottleneck_sk1' / 'saved_model'
  emulator.upload_tree(str(official), BUCKET, 'official/sk1/saved_model')
  out = f'gs://{BUCKET}/outputs'
  commands = [
    ['simclr_jax.embed', '--config=configs/demo.py', f'--workdir={bucket_run}/pretrain',
     '--split=test', f'--output={out}/features.npz', '--config.model.width_multiplier=0.125'],
    ['simclr_jax.export', f'--workdir={bucket_run}/finetune', f'--output={out}/exported'],
    ['simclr_jax.visualize', '--config=configs/demo.py', f'--workdir={bucket_run}',
     '--config.model.width_multiplier=0.125', '--plots=curves,stages'],
    ['simclr_jax.import_tf2', f'--saved_model=gs://{BUCKET}/official/sk1/saved_model',
     '--config=configs/official_fixture.py:sk1', f'--workdir={out}/imported'],
  ]
  env = dict(os.environ, JAX_PLATFORMS='cpu')
  processes = [subprocess.Popen([sys.executable, '-m', *command], cwd=REPO, env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
               for command in commands]
  for command, process in zip(commands, processes):
    stdout, stderr = process.communicate(timeout=600)
    assert process.returncode == 0, (command, stdout[-2000:], stderr[-3000:])
  written = emulator.objects(BUCKET, 'outputs/')
  assert 'outputs/exported/model.npz' in written and 'outputs/exported/config.json' in written
  assert any(name.startswith('outputs/exported/saved_model/') for name in written)
  features = np.load(io.BytesIO(fs.read_bytes(f'{out}/features.npz')))
  assert features['features'].shape == (200, 64) and features['labels'].shape == (200,)
  drawn = emulator.objects(BUCKET, 'chain/')  # By visualize, from the bucket's records.
  assert 'chain/plots/stage_top1.png' in drawn
  assert all(f'chain/{stage}/plots/curves.png' in drawn for stage in STAGES)
  imported, _, meta = checkpoints.restore_variables(f'{out}/imported')
  expected, _, _ = import_tf2.convert_variables(
    import_tf2.read_variables(str(official)), official_fixture.get_config('sk1'))
  flat = lambda tree: traverse_util.flatten_dict(tree, sep='/')
  assert flat(imported).keys() == flat(expected).keys()
  for key, value in flat(expected).items():
    np.testing.assert_array_equal(flat(imported)[key], value, err_msg=key)
  assert meta['imported_from'] == f'gs://{BUCKET}/official/sk1/saved_model'


TINY_PRETRAIN = [
  '--config.stages=pretrain,', '--config.model.width_multiplier=0.125',
  '--config.train.global_batch_size=16', '--config.train.checkpoint_every_steps=2',
  '--config.train.log_every_steps=1', '--config.knn.enabled=False',
  '--config.train.eval_at_end=False', '--config.train.plots_at_end=False',
]


def _finished_steps(emu, prefix: str) -> list[int]:
  """Checkpoint steps orbax has committed in the bucket (commit_success.txt written)."""
  names = emu.objects(BUCKET, prefix)  # The step's own marker (its items have one each, first).
  return sorted(int(n[len(prefix):].split('/')[0]) for n in names
                if re.fullmatch(r'\d+/commit_success\.txt', n[len(prefix):]))


SLOW_SAVER = '''
import sys
import numpy as np
from simclr_jax import checkpoints
workdir = sys.argv[1]
checkpoints.save_variables(workdir, {'kernel': np.ones((4, 4), np.float32)}, {}, {'step': 1}, 1)
big = {'kernel': np.random.default_rng(0).normal(size=(30_000_000,)).astype(np.float32)}
print('SAVING', flush=True)
checkpoints.save_variables(workdir, big, {}, {'step': 2}, step=2)
'''


@pytest.mark.slow
def test_a_kill_during_a_save_on_a_bucket_leaves_the_previous_step(emulator):
  run = f'gs://{BUCKET}/slow_save'
  process = subprocess.Popen([sys.executable, '-c', SLOW_SAVER, run], cwd=REPO,
                             env=dict(os.environ, JAX_PLATFORMS='cpu'), stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True)
  deadline, writing = time.time() + 180, False
  while time.time() < deadline and not writing:
    writing = any('/checkpoints/2' in name for name in emulator.objects(BUCKET, 'slow_save/'))
    assert process.poll() is None, process.stdout.read()[-3000:]
    time.sleep(0.02)
  process.send_signal(signal.SIGKILL)
  process.wait()
  assert writing, 'the save of step 2 was never seen in progress'
  assert 2 not in _finished_steps(emulator, 'slow_save/checkpoints/')
  params, _, meta = checkpoints.restore_variables(run)
  assert meta['step'] == 1
  np.testing.assert_array_equal(params['kernel'], np.ones((4, 4), np.float32))


def test_the_tpu_launcher_checks_the_bucket_before_creating_anything(emulator, tmp_path):
  fake_bin = tmp_path / 'bin'
  fake_bin.mkdir()
  gcloud = fake_bin / 'gcloud'  # Records that the launcher went on to the slice.
  gcloud.write_text(f'#!/bin/sh\necho "$@" >> {tmp_path}/gcloud_calls\n')
  gcloud.chmod(0o755)
  env = dict(os.environ, PYTHON=sys.executable, PATH=f'{fake_bin}:{os.environ["PATH"]}')
  launch = [os.path.join(REPO, 'launch', 'tpu_vm.sh'), '--skip-plan', '--skip-install',
            '--create', 'my-tpu', 'us-central2-b', 'configs/demo.py']
  refused = subprocess.run(['bash', *launch, 'gs://nobucket/run'], capture_output=True,
                           text=True, timeout=120, cwd=REPO, env=env)
  assert refused.returncode == 1
  assert 'error: --workdir=gs://nobucket/run: bucket gs://nobucket does not exist' in (
    refused.stderr)
  assert not (tmp_path / 'gcloud_calls').exists()  # No slice created, nothing started.
  accepted = subprocess.run(['bash', *launch, f'gs://{BUCKET}/launched'], capture_output=True,
                            text=True, timeout=120, cwd=REPO, env=env)
  assert accepted.returncode == 0, accepted.stderr[-2000:]
  calls = (tmp_path / 'gcloud_calls').read_text()
  assert calls.startswith('compute tpus tpu-vm create my-tpu')
  assert '--workdir=gs://bkt/launched' in calls


_READER = '''
import itertools, json, sys
from simclr_jax.data import sources
dataset, root, index, count = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
where = {'folder': root} if dataset == 'folder' else {'data_dir': root}
source = sources.load(dataset, 'train', decode=False, process_index=index, process_count=count,
                      **where)
print('listed', flush=True)  # The test counts what follows: reading the epoch.
sys.stdin.readline()
stream = source.epochs(seed=7, shuffle_buffer=30, start_example=0, process_index=index)
examples = list(itertools.islice(stream.as_numpy_iterator(), source.num_host_examples))
print(json.dumps({'indices': sorted(int(x['index']) for x in examples),
                  'host_indices': source.host_indices.tolist()}))
'''


def _read_as_hosts(emu, dataset: str, root: str, count: int = 2) -> list[tuple[dict, dict]]:
  """Each of `count` processes lists the data, then reads one epoch of its share through its
  own proxy: [(what it read, {object: bytes fetched while reading the epoch})].

  The listing is not counted: every host checks every image of a folder (the verdicts decide the
  split's indices, which must agree across hosts without talking to each other).
  """
  proxies = [emu.new_proxy() for _ in range(count)]
  processes = [subprocess.Popen(
    [sys.executable, '-c', _READER, dataset, root, str(i), str(count)], cwd=REPO,
    env=dict(os.environ, PYTHONPATH=REPO, TF_CPP_MIN_LOG_LEVEL='3', **proxies[i].env()),
    stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    for i in range(count)]
  for process in processes:
    line = process.stdout.readline()
    assert line.strip() == 'listed', (line, process.stderr.read()[-3000:])
  for process, proxy in zip(processes, proxies):
    proxy.reset()
    process.stdin.write('go\n')
    process.stdin.flush()
  results = []
  for process, proxy in zip(processes, proxies):
    out, err = process.communicate(timeout=300)
    assert process.returncode == 0, err[-3000:]
    results.append((json.loads(out.strip().splitlines()[-1]), dict(proxy.reads)))
  return results


@pytest.mark.slow
def test_an_image_folder_in_a_bucket_is_read_by_each_host_in_its_share(emulator):
  from simclr_jax.data import folders

  local = os.path.join(folders.demo_data_dir(), 'train')
  for name in ('airplane', 'cat', 'ship'):  # 300 photos in 3 class folders.
    emulator.upload_tree(os.path.join(local, name), BUCKET, f'photos/train/{name}')
  results = _read_as_hosts(emulator, 'folder', f'gs://{BUCKET}/photos')
  seen, fetched = [], []
  for read, objects in results:
    assert read['indices'] == read['host_indices']  # One epoch: each of its examples once.
    seen += read['indices']
    images = {name for name in objects if name.endswith('.png')}
    assert len(images) == len(read['indices'])  # Its own files, and no one else's.
    fetched.append(images)
  assert sorted(seen) == list(range(300))
  assert not fetched[0] & fetched[1] and len(fetched[0] | fetched[1]) == 300


@pytest.mark.slow
def test_a_tfds_dataset_in_a_bucket_is_read_by_each_host_in_its_share(emulator, tmp_path):
  import fake_imagenet

  local = str(tmp_path / 'tfds')
  fake_imagenet.write(local, num_train=64, num_validation=8, shards=8)
  emulator.upload_tree(local, BUCKET, 'tensorflow_datasets')
  shards = {f'{BUCKET}/tensorflow_datasets/{os.path.relpath(path, local)}': os.path.getsize(path)
            for path in fake_imagenet.shard_files(local)}
  results = _read_as_hosts(emulator, fake_imagenet.NAME, f'gs://{BUCKET}/tensorflow_datasets')
  seen, fetched = [], []
  for read, objects in results:
    assert read['indices'] == read['host_indices']
    seen += read['indices']
    mine = {name: size for name, size in objects.items() if name in shards}
    assert sum(mine.values()) <= sum(shards.values()) / 2 + max(shards.values())  # Its half.
    fetched.append(set(mine))
  assert sorted(seen) == list(range(64))
  assert not fetched[0] & fetched[1] and fetched[0] | fetched[1] == set(shards)


@pytest.mark.slow
def test_two_hosts_share_a_bucket_workdir_and_hand_over_between_stages(emulator):
  """Two JAX processes (2 devices each) run pretrain -> finetune in one gs:// workdir: process 0
  alone writes the run's files, the lock keeps a third start out, finetune reads pretrain."""
  import socket

  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    port = s.getsockname()[1]
  run = f'gs://{BUCKET}/two_hosts'
  flags = [*(f for f in TINY_PRETRAIN if not f.startswith('--config.stages')),
           '--config.stages=pretrain,finetune', '--config.train.train_steps=3',
           '--config.finetune.train.train_steps=2', '--config.finetune.train.global_batch_size=16']
  proxies = [emulator.new_proxy() for _ in range(2)]
  workers = [_main(run, *flags, '--config.distributed.initialize=True',
                   f'--config.distributed.coordinator_address=127.0.0.1:{port}',
                   '--config.distributed.num_processes=2', f'--config.distributed.process_id={i}',
                   env=proxies[i].env(), wait=False) for i in range(2)]
  deadline = time.time() + 300
  while f'two_hosts/{workdir.LOCK_FILE}' not in emulator.objects(BUCKET, 'two_hosts/'):
    for worker in workers:
      assert worker.poll() is None, _output(worker)[-4000:]
    assert time.time() < deadline
    time.sleep(0.1)
  code, output = _main(run, *flags)  # A third start while they run.
  assert code == 1 and re.match(r"error: workdir 'gs://bkt/two_hosts' is in use by pid \d+ on ",
                                output.strip().splitlines()[-1]), output[-2000:]
  for worker in workers:
    worker.wait(timeout=600)
    assert worker.returncode == 0, _output(worker)[-4000:]

  finetune = json.loads(fs.read_text(f'{run}/finetune/results.json'))
  assert finetune['restored_from'] == f'{run}/pretrain' and finetune['steps'] == 2
  objects = emulator.objects(BUCKET, 'two_hosts/')
  assert f'two_hosts/{workdir.LOCK_FILE}' not in objects  # Released at the end.
  run_files = ('results.json', 'config.json', 'metrics.jsonl', 'parameters.txt')
  for stage in ('pretrain', 'finetune'):
    for name in run_files:
      assert proxies[0].writes[f'{BUCKET}/two_hosts/{stage}/{name}'] >= 1, (stage, name)
  host1 = sorted(name for name in proxies[1].writes
                 if name.endswith(run_files + (workdir.LOCK_FILE,)) or 'metrics.jsonl' in name)
  assert not host1, host1  # Process 1 wrote none of the run's records.
  assert [r['step'] for r in workdir.read_metrics(f'{run}/pretrain')] == [1, 2, 3]
