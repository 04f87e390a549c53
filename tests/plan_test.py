"""The pod rehearsal: compile for a described TPU slice (libtpu, no TPU) and check the plan's
figures against independent arithmetic and the compiler's own counts."""

import json
import os
import subprocess
import sys
import types

import jax
import numpy as np
import pytest

from configs import demo as demo_lib
from simclr_jax import perf, plan, plan_files, sharding
from simclr_jax.models import load

from train_test import IMAGE_SIZE, _tiny_config

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.parametrize('accelerator_type, topology, chips, devices', [
  ('v3-128', 'v3:8x8', 64, 128),
  ('v4-8', 'v4:2x2x1', 4, 4),
  ('v4-64', 'v4:2x4x4', 32, 32),
  ('v5litepod-256', 'v5e:16x16', 256, 256),
  ('v5p-128', 'v5p:4x4x4', 64, 64),
  ('v6e-64', 'v6e:8x8', 64, 64),
])
def test_accelerator_types_as_gcloud_spells_them(accelerator_type, topology, chips, devices):
  tpu_slice = plan.parse_accelerator_type(accelerator_type)
  assert (tpu_slice.topology, tpu_slice.chips, tpu_slice.num_devices) == (topology, chips, devices)
  assert len(plan.slice_devices(tpu_slice)) == devices


@pytest.mark.parametrize('bad', ['v4-63', 'tpu-8', 'v9-8', 'v4-12', 'v4'])
def test_bad_accelerator_type_is_one_line_naming_the_flag(bad):
  with pytest.raises(plan.PlanError, match='accelerator-type|power of two') as error:
    plan.slice_devices(plan.parse_accelerator_type(bad))
  assert '\n' not in str(error.value)


def _tiny_plan_config(shard_state):
  config = _tiny_config('lars')
  config.data.dataset = 'cifar10'  # Known classes: no data is read.
  config.train.shard_state = shard_state
  config.train.eval_batch_size = 16
  return config


@pytest.mark.parametrize('accelerator_type, shard_state', [('v5litepod-4', False), ('v4-8', True)])
def test_compiled_state_bytes_match_arithmetic(accelerator_type, shard_state, monkeypatch):
  """State bytes = parameters x 4 bytes x (1 + LARS momentum) / sharding factor (+ BN, step);
  the compiler's argument bytes are that plus the batch, and donation aliases all of the state."""
  monkeypatch.setattr(sharding, 'MIN_SHARDED_SIZE', 64)
  config = _tiny_plan_config(shard_state)
  tpu_slice = plan.parse_accelerator_type(accelerator_type)
  devices = plan.slice_devices(tpu_slice)
  row = plan.compile_stage(config, 'pretrain', tpu_slice, devices)
  assert row['fits'] and row['devices'] == 4 and row['per_device_batch'] == 4

  model = load.build(config, num_classes=10)
  variables = load.abstract_variables(model, IMAGE_SIZE)
  params = jax.tree.leaves(variables['params'])
  stats = sum(x.size for x in jax.tree.leaves(variables['batch_stats']))

  def per_device(x):  # 1/4 of a tensor that has a dimension divisible by 4 (and >= 64 values).
    split = shard_state and x.size >= 64 and any(d % 4 == 0 for d in x.shape)
    return x.size // 4 if split else x.size

  state_bytes = 4 * (2 * sum(per_device(x) for x in params) + stats + 2)  # + step, LARS count
  batch_bytes = 4 * (2 * 4 * IMAGE_SIZE * IMAGE_SIZE * 3 + 4)  # two views and labels of 4 images
  gib = 2**30
  assert abs(row['state_gib'] * gib - state_bytes) <= 64
  # The compiler's own count: at least the raw bytes; more for a toy whose tiny tensors are
  # padded to TPU memory tiles (at R50 size the two agree within 1 %: docs/BENCHMARKS.md).
  arguments = row['argument_gib'] * gib
  assert state_bytes + batch_bytes <= arguments < 8 * (state_bytes + batch_bytes)
  # Donation really reuses the state: only donated state buffers can be aliased to outputs.
  assert row['alias_gib'] * gib >= state_bytes
  if shard_state:
    assert state_bytes < 0.4 * 4 * (2 * sum(x.size for x in params))
  assert row['tflop_per_device'] > 0 and row['step_ms'] > 0 and 0 < row['mfu'] <= 1.0
  assert row['eval_gib'] > 0


def test_analytic_forward_flops_match_the_compiler():
  """2 x multiply-adds of every conv/dense layer vs XLA's FLOP count of the forward pass.

  XLA leaves out the taps that fall on zero padding, which the analytic count includes: a few
  percent at 64 px (stage 4 is 8x8), a few per mille at 224 px.
  """
  config = _tiny_config('lars')
  config.model.width_multiplier = 0.25
  config.data.image_size = 64
  model = load.build(config, num_classes=10)
  analytic = perf.forward_flops(model, 64)
  variables = load.abstract_variables(model, 64)
  images = jax.ShapeDtypeStruct((8, 64, 64, 3), np.float32)
  compiled = jax.jit(lambda v, x: model.apply(v, x, train=False)).lower(variables, images).compile()
  cost = compiled.cost_analysis()
  xla = (cost[0] if isinstance(cost, list) else cost)['flops'] / 8
  print(f'analytic {analytic:.4g} FLOPs, XLA {xla:.4g} FLOPs per image')
  assert abs(xla - analytic) / analytic < 0.10


def test_resnet50_forward_flops_as_published():
  """ResNet-50 at 224 px: 2 x 4.1 G multiply-adds (4.1 GMACs in the usual tables; the ResNet
  paper's 3.8 G counts fewer operations of the shortcut and stem)."""
  from configs import r50_1x

  config = r50_1x.get_config()
  model = load.build(config, num_classes=1000)
  flops = perf.forward_flops(model, 224)
  assert 7.9e9 < flops < 8.6e9, flops


def _plan_cli(out, *extra):
  return subprocess.run(
    [sys.executable, '-m', 'simclr_jax.plan', '--config=configs/demo.py',
     '--accelerator-type=v5litepod-4', '--config.stages=pretrain,',
     '--config.train.global_batch_size=33554432', f'--out={out}', *extra],
    capture_output=True, text=True, cwd=REPO, timeout=600)


def test_config_that_cannot_fit_is_refused_in_one_line_and_the_plan_reused(tmp_path, capsys):
  out = tmp_path / 'plan.json'
  result = _plan_cli(out)
  assert result.returncode == 1
  last = result.stderr.strip().splitlines()[-1]
  assert last.startswith('error: pretrain does not fit on v5litepod-4: needs ')
  assert 'GiB, has 14.9 GiB' in last
  saved = json.loads(out.read_text())
  assert saved['fits'] is False and saved['stages'][0]['fits'] is False
  assert 'Traceback' not in result.stderr
  sys.path.insert(0, os.path.join(REPO, 'benchmarks'))
  import plan_table  # The docs/BENCHMARKS.md rows.

  (row,) = plan_table.rows([str(out)])[2:]
  # 2^23 examples per device x (32 x 32 x 3 uint8 canvas + size, label, index, epoch: 3092 B)
  # = 24.2 GiB with the state, over the 14.9 GiB of a v5e chip.
  assert row.startswith('| demo | v5litepod-4 (v5e:2x2) | pretrain | 4 | 8388608 | **no** | 24.2')

  # A second pre-flight of the same config and slice reuses the plan (same config, slice, jax,
  # libtpu and code) without compiling; --workdir leaves a copy where the run finds it.
  made = saved
  assert set(made['fingerprint']) == {'config_hash', 'accelerator_type', 'topology',
                                      'max_fix_compiles', 'jax', 'libtpu', 'code'}
  assert made['fingerprint']['libtpu']  # The [test] extra brings libtpu.
  assert 'compiling the train and eval steps' in result.stderr
  again = _plan_cli(out, f'--workdir={tmp_path / "run"}')
  assert again.returncode == 1 and 'compiling' not in again.stderr
  assert f'Reusing the plan in {out}' in again.stderr
  assert again.stderr.strip().splitlines()[-1] == last
  assert json.loads((tmp_path / 'run' / 'plan.json').read_text()) == made
  assert json.loads(out.read_text()) == made  # Not rewritten.
  for key in ('config_hash', 'code', 'libtpu'):
    wanted = {**made['fingerprint'], key: 'other'}
    assert plan_files.reusable(str(out), wanted) == (None, f'{out} was made with another {key}')
  # --replan compiles again (the command's main in this process, with its flag values).
  config = demo_lib.get_config()
  config.stages = ('pretrain',)
  config.train.global_batch_size = 33554432
  values = (config, 'v5litepod-4', '', str(out), 3, True, '')
  with pytest.raises(SystemExit):
    plan.main(['plan'], [types.SimpleNamespace(value=value) for value in values])
  forced = capsys.readouterr().err
  assert 'compiling the train and eval steps' in forced and 'Reusing' not in forced
