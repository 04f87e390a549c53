"""A run explains itself: images/s, input wait, step time, MFU, memory, a verdict, a profile."""

import dataclasses
import glob
import json
import logging
import os
import time

import jax
import jax.numpy as jnp
import pytest

from configs import demo as demo_lib
from simclr_jax import perf, plan_files, run, train
from simclr_jax.data import input as data_input

SLOW_FROM = 9  # The iterator sleeps before the batches of this step on.
SLEEP_S = 0.5


def _config():
  config = demo_lib.get_config()
  config.model.width_multiplier = 0.125
  config.data.device_resident = True  # Batches are indices: the fast input.
  config.stages = ('pretrain',)
  config.train.train_steps = 12
  config.train.global_batch_size = 32
  config.train.log_every_steps = 2
  config.train.eval_at_end = False
  config.train.plots_at_end = False
  config.train.profile_steps = '3,2'
  config.knn.enabled = False
  return run.stage_config(config, 'pretrain')


def _slow_from(make_train_data, first_slow_step):
  """make_train_data whose iterator sleeps before the batch of every step >= first_slow_step."""

  def make(config, stage, mesh):
    data = make_train_data(config, stage, mesh)

    def batches(start_step):
      for step, batch in enumerate(data.batches(start_step), start=start_step + 1):
        if step >= first_slow_step:
          time.sleep(SLEEP_S)
        yield batch

    return dataclasses.replace(data, batches=batches)

  return make


@pytest.fixture(scope='module')
def slow_late_run(tmp_path_factory):
  """One pretraining run: fast input (device-resident) for steps 1-8, a sleeping iterator for
  steps 9-12, a profile of steps 3-4. Returns (workdir, results, metrics lines, log records)."""
  workdir = str(tmp_path_factory.mktemp('perf'))
  records = []
  handler = logging.Handler()
  handler.emit = records.append
  logger = logging.getLogger('absl')
  logger.addHandler(handler)
  level = logger.level
  logger.setLevel(logging.INFO)
  perf._SAID_NO_PEAK.clear()  # As in a new process.
  original = data_input.make_train_data
  data_input.make_train_data = _slow_from(original, SLOW_FROM)
  try:
    results = train.train_and_evaluate(_config(), workdir, stage='pretrain')
  finally:
    data_input.make_train_data = original
    logger.removeHandler(handler)
    logger.setLevel(level)
  with open(os.path.join(workdir, train.METRICS_FILE)) as file:
    lines = {line['step']: line for line in map(json.loads, file) if 'input_wait' in line}
  return workdir, results, lines, [record.getMessage() for record in records]


def test_a_sleeping_iterator_shows_as_input_wait_and_warns_once(slow_late_run):
  _, _, lines, messages = slow_late_run
  assert sorted(lines) == [2, 4, 6, 8, 10, 12]
  for step in (4, 6, 8):  # Device-resident batches: the devices never wait.
    assert lines[step]['input_wait'] < 0.10, (step, lines[step])
  for step in (10, 12):  # 0.5 s asleep per step against a step of about 0.1 s.
    assert lines[step]['input_wait'] > 0.50, (step, lines[step])
  warnings = [m for m in messages if 'waited for input' in m]
  assert len(warnings) == 1, warnings
  assert 'steps 9-10' in warnings[0] and 'data.cache' in warnings[0]
  assert 'data.canvas_size' in warnings[0]


def test_each_log_line_has_throughput_and_memory(slow_late_run):
  _, _, lines, _ = slow_late_run
  for line in lines.values():
    assert line['images_per_s'] == pytest.approx(line['images_per_s_per_host'])  # One process.
    # 32 images x 2 views over 8 devices.
    assert line['views_per_s_per_device'] == pytest.approx(line['images_per_s'] * 2 / 8)
    assert line['step_time_s'] > 0 and line['host_rss_gib'] > 0.1
    assert 'mfu' not in line and 'device_memory_gib' not in line  # CPU: no peak, no stats.
  # Slow steps: at least the sleep each, so at most 32 / 0.25 images/s.
  assert lines[12]['images_per_s'] <= 32 / SLEEP_S
  assert lines[12]['step_time_s'] >= SLEEP_S


def test_cpu_says_once_that_it_has_no_mfu(slow_late_run):
  _, results, _, messages = slow_late_run
  assert len([m for m in messages if m.startswith('No MFU')]) == 1
  assert results['mfu'] is None and results['device_kind'] == 'cpu'


def test_results_record_the_stage_figures(slow_late_run):
  _, results, lines, _ = slow_late_run
  for key in ('step_time_median_s', 'images_per_s', 'input_wait_fraction', 'mfu',
              'device_memory_peak_gib', 'host_rss_peak_gib', 'views_per_s_per_device'):
    assert key in results, key
  assert results['measured_steps'] == 11  # Every interval after the first step (compilation).
  # 4 of the 11 measured steps slept: the median is a fast step, the segment's wait between the
  # fast windows' and the slow ones'.
  assert results['step_time_median_s'] < SLEEP_S
  assert results['images_per_s'] == pytest.approx(32 / results['step_time_median_s'])
  slowest = min(lines[10]['input_wait'], lines[12]['input_wait'])
  assert 0.1 < results['input_wait_fraction'] < slowest
  assert results['host_rss_peak_gib'] >= max(line['host_rss_gib'] for line in lines.values())
  table = run.results_table({'pretrain': results})
  assert 'img/s' in table.splitlines()[0]
  assert f'{results["images_per_s"]:7.0f}' in table.splitlines()[2]


def test_profile_steps_leave_a_trace_for_tensorboard(slow_late_run):
  workdir, _, _, messages = slow_late_run
  traces = glob.glob(os.path.join(workdir, 'plugins', 'profile', '*', '*.xplane.pb'))
  assert len(traces) == 1 and os.path.getsize(traces[0]) > 1000
  assert any('Profile of steps 3-4' in m for m in messages)


class _Device:
  def __init__(self, kind):
    self.device_kind = kind


def test_mfu_is_model_flops_over_step_time_times_the_table_peak():
  meter = perf.StepMeter('pretrain', global_batch=64, num_views=2, flops_per_step=3e13,
                         devices=[_Device('TPU v4')] * 4, num_processes=1)
  try:
    for step in range(1, 6):
      with meter.input(step):
        pass
      meter.dispatched(step, jnp.ones(()))
      time.sleep(0.02)
    figures = meter.window(5)
  finally:
    meter.close()
  peak = 275e12  # A v4 chip, one device (megacore): Cloud TPU's figure in chips.CHIPS.
  assert figures['mfu'] == pytest.approx(3e13 / (figures['step_time_s'] * 4 * peak))
  assert 0.015 < figures['step_time_s'] < 0.5
  assert perf.peak_of('TPU v3').tflops == 123.0 / 2  # One device per TensorCore.
  assert perf.peak_of('NVIDIA H100 80GB HBM3').tflops == 989.5
  assert perf.peak_of('NVIDIA H100 PCIe').tflops == 756.0
  assert perf.peak_of('NVIDIA A100-SXM4-80GB').tflops == 312.0
  assert perf.peak_of('cpu') is None


def test_a_slow_fetch_while_the_device_is_busy_is_not_input_wait():
  """JAX dispatches asynchronously: a fetch taking half a step while the device still computes
  the previous step costs nothing, and the meter says so (the time in the iterator alone would
  say 50 %)."""
  work = jax.jit(lambda x: jax.lax.fori_loop(0, 60, lambda _, y: jnp.tanh(y @ y), x))
  x = jnp.ones((256, 256)) / 256
  work(x).block_until_ready()
  started = time.perf_counter()
  work(x).block_until_ready()
  device_s = time.perf_counter() - started
  meter = perf.StepMeter('pretrain', 8, 1, 1, devices=[_Device('cpu')], num_processes=1)
  try:
    output = work(x)
    meter.dispatched(1, output)
    for step in range(2, 8):
      with meter.input(step):
        time.sleep(device_s / 2)
      output = work(output)
      meter.dispatched(step, output)
    output.block_until_ready()
    figures = meter.window(7)
  finally:
    meter.close()
  assert figures['input_wait'] < 0.10, (figures, device_s)
  assert figures['step_time_s'] == pytest.approx(device_s, rel=0.5)


def test_a_plan_for_this_config_and_slice_is_compared_once_after_warm_up(monkeypatch):
  config = demo_lib.get_config()
  plan = {'config_hash': plan_files.config_hash(config), 'accelerator_type': 'v4-16',
          'chip': {'name': 'v4'},
          'stages': [{'stage': 'pretrain', 'devices': 8, 'step_ms': 50.0, 'mfu': 0.4}]}
  row, why_not = plan_files.plan_row_for_run(plan, config, 'pretrain')
  assert row is None and 'this run has 8 cpu devices' in why_not  # Not a v4: not compared.
  monkeypatch.setattr(perf, 'peak_of', lambda kind: perf.PEAKS['TPU v4'])
  row, _ = plan_files.plan_row_for_run(plan, config, 'pretrain')
  assert row['step_ms'] == 50.0 and row['accelerator_type'] == 'v4-16'
  with config.unlocked():
    config.distributed.initialize = True  # What the launchers add: the same run.
  assert plan_files.plan_row_for_run(plan, config, 'pretrain')[0] == row
  config.seed = 1
  assert plan_files.plan_row_for_run(plan, config, 'pretrain') == (
    None, 'it was made for another config (or other overrides)')
  verdicts = perf.Verdicts('pretrain', row)
  figures = {'step_time_s': 0.1, 'input_wait': 0.0, 'mfu': 0.2}
  assert verdicts(1, 10, figures) == []  # Warm-up.
  (line,) = verdicts(11, 20, figures)
  assert line == ("pretrain: step time 100 ms against the plan's roofline bound 50 ms for v4-16 "
                  "(50% of the bound's speed), MFU 20% (plan: 40% at the bound)")
  assert verdicts(21, 30, figures) == []  # Once.
