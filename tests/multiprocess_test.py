"""Two JAX processes on localhost train the demo together, as two hosts of a pod would.

The test runs this file as a driver script (`python tests/multiprocess_test.py ...`) three times:
two workers that join through `jax.distributed` (gloo CPU collectives, 2 fake devices each) and
run `simclr_jax.main` with the `config.distributed` flags, and one single-process reference that
feeds the loop the same global batches (both hosts' shares, built in one process). Each run
records the example indices its host fed per step and its parameters after the last step.

Checked: the hosts' shares of every global batch are disjoint and strided by host; the
parameters are identical on both processes and equal to the single-process run's; only process
0 writes results.json and metrics.jsonl in the shared workdir.
"""

import json
import os
import socket
import subprocess
import sys
import time
import types

import numpy as np
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STEPS = 3
GLOBAL_BATCH = 16
NUM_PROCESSES = 2
FLAGS = (
  '--config=configs/demo.py', '--config.stages=pretrain,', f'--config.train.train_steps={STEPS}',
  f'--config.train.global_batch_size={GLOBAL_BATCH}', '--config.model.width_multiplier=0.125',
  '--config.knn.enabled=False', '--config.train.eval_batch_size=64',
  '--config.train.log_every_steps=1', '--config.train.checkpoint_every_steps=2',
)


# ----------------------------------------------------------------------------- driver (subprocess)


def _record_indices(record: dict) -> None:
  """Every train dataset built also yields, unused, its first batches' example indices."""
  from simclr_jax.data import pipeline

  original = pipeline.make_train_dataset

  def recording(source, **kwargs):
    batches = original(source, **kwargs).take(STEPS).as_numpy_iterator()
    record['indices'] += [batch['index'].tolist() for batch in batches]
    return original(source, **kwargs)

  pipeline.make_train_dataset = recording


def _record_params(record: dict) -> None:
  """Keeps a host copy of the parameters after every train step."""
  import jax

  from simclr_jax import train

  original = train.make_train_step

  def recording_factory(*args, **kwargs):
    step = original(*args, **kwargs)

    def recording_step(state, *rest):
      state, metrics = step(state, *rest)
      replicas = [jax.tree.map(lambda x: np.asarray(x.addressable_data(i)), state.params)
                  for i in range(jax.local_device_count())]
      record['local_replicas_equal'] = all(
        all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(replicas[0]), jax.tree.leaves(r)))
        for r in replicas)
      record['params'] = replicas[0]
      return state, metrics

    return recording_step

  train.make_train_step = recording_factory


def _feed_both_hosts_shares() -> None:
  """Single process: each global batch = host 0's share + host 1's share, as in the 2-host run."""
  import jax

  from simclr_jax.data import input as data_input

  original = data_input.make_train_data

  def as_host(index: int):
    return types.SimpleNamespace(process_index=lambda: index, process_count=lambda: NUM_PROCESSES,
                                 local_device_count=lambda: jax.local_device_count())

  def both_hosts(config, stage, mesh):
    per_host = []
    for index in range(NUM_PROCESSES):
      data_input.jax = as_host(index)
      per_host.append(original(config, stage, mesh))
    data_input.jax = jax

    def make_iterator(start_step: int):
      iterators = []
      for index, data in enumerate(per_host):  # The datasets read the host when built.
        data_input.jax = as_host(index)
        iterators.append(data.batches(start_step))
      data_input.jax = jax
      for host_batches in zip(*iterators):
        yield {k: np.concatenate([b[k] for b in host_batches]) for k in host_batches[0]}

    return data_input.TrainData(per_host[0].num_examples, per_host[0].num_classes,
                                per_host[0].class_names, make_iterator,
                                prepare=per_host[0].prepare)

  data_input.make_train_data = both_hosts


def _drive(mode: str, out_prefix: str, flags: list[str]) -> None:
  from flax import traverse_util

  from simclr_jax import cli, main

  record = {'indices': [], 'params': None}
  _record_indices(record)
  _record_params(record)
  if mode == 'reference':
    _feed_both_hosts_shares()
  try:
    cli.run(main._define_flags, main.main, argv=['simclr_jax.main', *flags])
  except SystemExit as stop:
    if stop.code:
      raise
  import jax

  np.savez(out_prefix + '.npz', **traverse_util.flatten_dict(record['params'], sep='/'))
  with open(out_prefix + '.json', 'w') as f:
    json.dump({'indices': record['indices'], 'process_index': jax.process_index(),
               'process_count': jax.process_count(), 'device_count': jax.device_count(),
               'local_replicas_equal': record['local_replicas_equal']}, f)


# ----------------------------------------------------------------------------- test


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(('localhost', 0))
    return s.getsockname()[1]


def _launch(mode: str, out_prefix: str, devices: int, flags: list[str]) -> subprocess.Popen:
  # Unoptimised CPU code compiles 3-7x faster (measured: jit(init) 22.6 s -> 3.6 s) and these
  # programs run 3 steps; all three runs use it, and it moved the parameters by < 1e-7.
  xla_flags = f'--xla_force_host_platform_device_count={devices} --xla_backend_optimization_level=0'
  env = dict(os.environ, JAX_PLATFORMS='cpu', TF_CPP_MIN_LOG_LEVEL='2', CUDA_VISIBLE_DEVICES='',
             XLA_FLAGS=xla_flags, PYTHONPATH=REPO)
  return subprocess.Popen(
    [sys.executable, os.path.abspath(__file__), mode, out_prefix, *flags], cwd=REPO, env=env,
    stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _finish(process: subprocess.Popen, timeout: float) -> str:
  try:
    output, _ = process.communicate(timeout=timeout)
  except subprocess.TimeoutExpired:
    process.kill()
    output, _ = process.communicate()
    pytest.fail(f'driver timed out:\n{output[-4000:]}')
  assert process.returncode == 0, output[-4000:]
  return output


def _load(out_prefix: str) -> tuple[dict, dict[str, np.ndarray]]:
  with open(out_prefix + '.json') as f:
    info = json.load(f)
  with np.load(out_prefix + '.npz') as params:
    return info, dict(params)


@pytest.mark.slow
def test_two_processes_train_like_one(tmp_path):
  start = time.time()
  port = _free_port()
  workdir = str(tmp_path / 'shared_workdir')
  workers = []
  for process_id in range(NUM_PROCESSES):
    distributed = [
      '--config.distributed.initialize=True',
      f'--config.distributed.coordinator_address=localhost:{port}',
      f'--config.distributed.num_processes={NUM_PROCESSES}',
      f'--config.distributed.process_id={process_id}',
    ]
    workers.append(_launch('worker', str(tmp_path / f'worker{process_id}'), 2,
                           [*FLAGS, f'--workdir={workdir}', *distributed]))
  reference = _launch('reference', str(tmp_path / 'reference'), 4,
                      [*FLAGS, f'--workdir={tmp_path / "reference_workdir"}'])
  outputs = [_finish(p, timeout=240) for p in (*workers, reference)]
  elapsed = time.time() - start

  (info0, params0), (info1, params1) = (_load(str(tmp_path / f'worker{i}')) for i in range(2))
  reference_info, reference_params = _load(str(tmp_path / 'reference'))
  assert [info0['process_index'], info1['process_index']] == [0, 1]
  assert info0['process_count'] == info1['process_count'] == NUM_PROCESSES
  assert info0['device_count'] == info1['device_count'] == 4, outputs[0][-2000:]
  assert info0['local_replicas_equal'] and info1['local_replicas_equal']

  # Each host fed its own half of every global batch: disjoint, strided by host.
  host_batch = GLOBAL_BATCH // NUM_PROCESSES
  assert len(info0['indices']) == len(info1['indices']) == STEPS
  for step, (ours, theirs) in enumerate(zip(info0['indices'], info1['indices'])):
    assert len(ours) == len(set(ours)) == host_batch and len(theirs) == host_batch
    assert not set(ours) & set(theirs), f'step {step}: hosts fed the same examples'
    assert all(i % 2 == 0 for i in ours) and all(i % 2 == 1 for i in theirs)
  # The reference fed exactly these global batches (host 0's shares, then host 1's).
  assert reference_info['indices'] == info0['indices'] + info1['indices']

  assert sorted(params0) == sorted(params1) == sorted(reference_params)
  across = max(float(np.max(np.abs(params0[k] - params1[k]))) for k in params0)
  versus_single = max(float(np.max(np.abs(params0[k] - reference_params[k]))) for k in params0)
  print(f'{NUM_PROCESSES} processes: params max |diff| across processes {across:.3g}, vs single '
        f'process {versus_single:.3g}; wall {elapsed:.0f} s')
  assert across == 0.0
  for key in params0:
    np.testing.assert_allclose(params0[key], reference_params[key], rtol=1e-5, atol=1e-6,
                               err_msg=key)

  # One writer in the shared workdir: one results.json, one line per logged step.
  pretrain_dir = os.path.join(workdir, 'pretrain')
  with open(os.path.join(pretrain_dir, 'results.json')) as f:
    assert json.load(f)['steps'] == STEPS
  with open(os.path.join(pretrain_dir, 'metrics.jsonl')) as f:
    steps_logged = [json.loads(line)['step'] for line in f]
  assert steps_logged.count(1) == 1 and steps_logged.count(STEPS) >= 1
  assert sorted(os.listdir(os.path.join(pretrain_dir, 'checkpoints'))) == ['2', '3']


if __name__ == '__main__':
  _drive(sys.argv[1], sys.argv[2], sys.argv[3:])
