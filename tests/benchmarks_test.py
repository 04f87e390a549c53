"""Smoke tests of benchmarks/*.py: each main runs in a tiny mode and writes the expected JSON."""

import importlib.util
import json
import os
import subprocess
import sys

import pytest

BENCHMARKS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'benchmarks')


def _load(name: str):
  if BENCHMARKS not in sys.path:
    sys.path.insert(0, BENCHMARKS)  # The scripts import their sibling `common`.
  spec = importlib.util.spec_from_file_location(f'benchmark_{name}', f'{BENCHMARKS}/{name}.py')
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def _run(name: str, tmp_path, argv: list[str]) -> dict:
  output = str(tmp_path / f'{name}.json')
  returned = _load(name).main(argv + [f'--output={output}'])
  with open(output) as f:
    written = json.load(f)
  assert written['benchmark'] == name and 'cpu' in written['machine']
  assert set(returned) <= set(written)
  return written


def test_ntxent_scaling(tmp_path):
  result = _run('ntxent_scaling', tmp_path, ['--batches=64,128', '--fixed_batch=64', '--dim=8'])
  assert [r['global_batch'] for r in result['by_global_batch']] == [64, 128]
  assert [r['devices'] for r in result['by_devices']] == [1, 2, 4, 8]
  assert result['slope_vs_devices'] < 0  # Fewer rows per device, less memory.


def test_augment_seam_compiles_the_device_part_for_a_tpu_slice(tmp_path):
  result = _run('augment_seam', tmp_path, ['--accelerator-type=v5litepod-4', '--batch-per-device=2',
                                           '--size=32', '--raw-size=40'])
  rows = {row['split']: row for row in result['rows']}
  assert set(rows) == {'colour', 'all'}
  assert rows['colour']['shipped_bytes'] == 2 * 32 * 32 * 3 and rows['all']['shipped_bytes'] == 4800
  for row in rows.values():  # Colour and blur are arithmetic: XLA counts FLOPs and bytes.
    assert row['tflop_per_device'] > 0 and row['gb_per_device'] > 0 and row['roofline_ms'] > 0


@pytest.mark.slow
def test_cifar10_on_demo_folder(tmp_path):
  demo = os.path.join(os.path.dirname(BENCHMARKS), 'simclr_jax', 'demo_data', 'cifar10')
  result = _run('cifar10', tmp_path, [f'--data={demo}', '--steps=2', '--batch=16', '--width=0.125',
                                      '--knn_k=5', f'--workdir={tmp_path / "work"}'])
  assert result['steps'] == 2 and result['views_per_s'] > 0
  assert 0.0 <= result['eval_top1'] <= 1.0


def test_device_check_runs_every_part_and_prints_one_table(tmp_path):
  """benchmarks/device_check.py --quick: the script a lent GPU runs, kept working on the CPU."""
  result = subprocess.run(
    [sys.executable, os.path.join(BENCHMARKS, 'device_check.py'), '--quick',
     f'--out={tmp_path}'], capture_output=True, text=True, timeout=900,
    cwd=os.path.dirname(BENCHMARKS))
  assert result.returncode == 0, result.stdout + result.stderr
  summary = json.loads((tmp_path / 'summary.json').read_text())
  assert [row['part'] for row in summary] == ['train_step', 'demo', 'input_pipeline']
  assert all(row['ok'] for row in summary)
  demo = summary[1]
  assert demo['images_per_s'] > 0 and 0 <= demo['input_wait'] < 1 and demo['device'] == 'cpu'
  assert summary[0]['views_per_s_per_device'] > 0 and summary[2]['images_per_s'] > 0
  table = result.stdout[result.stdout.index('Device check (quick)'):].splitlines()
  assert len(table) == 5 and table[1].startswith('part') and table[3].startswith('demo ')
  # What each part wrote (train_step.py and input_pipeline.py run nowhere else in the tests).
  step = json.loads((tmp_path / 'train_step.json').read_text())
  assert step['benchmark'] == 'train_step' and 'cpu' in step['machine']
  for key in ('compile_s', 'steps_per_s', 'views_per_s_per_device', 'flops_per_step',
              'peak_memory_bytes', 'mfu'):
    assert key in step
  assert step['steps_per_s'] > 0 and step['num_devices'] == 8
  assert step['mfu'] is None and step['flops_per_step'] > 0  # A CPU: no peak in perf.PEAKS.
  data = json.loads((tmp_path / 'input_pipeline.json').read_text())
  assert [(r['image_size'], r['mode']) for r in data['rows']] == [
    (32, 'canvas'), (32, 'crop_flip'), (32, 'full')]
  assert data['rows'][0]['host_images_per_s_per_core'] > 0
  assert all(row['device_images_per_s'] > 0 for row in data['rows'][1:])
