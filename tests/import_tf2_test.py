"""The importer against the official TF2 fixtures: every endpoint, both modes, both networks."""

import collections
import functools
import os
import pathlib
import subprocess
import sys

import jax
import numpy as np
import pytest
from flax import traverse_util

from configs import official_fixture
from simclr_jax import checkpoints, import_tf2
from simclr_jax.models import load

import shared_paths

REPO = pathlib.Path(__file__).resolve().parent.parent
ENDPOINTS = ('initial_conv', 'initial_max_pool', 'block_group1', 'block_group2', 'block_group3',
             'block_group4', 'final_avg_pool', 'proj_head_input', 'proj_head_output', 'logits_sup')
# Fixture README: relative error max|ours - official| / max(max|official|, 1e-6).
TOLERANCE = {'eval': 1e-4, 'train': 2e-3}
FIXTURES = {'sk0': 'bottleneck_sk0', 'sk1': 'bottleneck_sk1'}


def _fixture_dir(variant: str) -> pathlib.Path:
  root = shared_paths.OFFICIAL_TF2_FIXTURES / FIXTURES[variant]
  if not (root / 'saved_model' / 'variables').is_dir():
    pytest.skip(f'official TF2 fixtures not found at {root}; set SIMCLR_SHARED_DIR to the shared '
                'folder holding fixtures/official_tf2')
  return root


@functools.cache
def _variables(variant: str) -> dict[str, np.ndarray]:
  return import_tf2.read_variables(str(_fixture_dir(variant) / 'saved_model'))


def _endpoints(model, params, batch_stats, images, train_mode: bool) -> dict[str, np.ndarray]:
  @jax.jit
  def apply(params, batch_stats, images):
    mutable = ['intermediates', 'batch_stats'] if train_mode else ['intermediates']
    _, state = model.apply({'params': params, 'batch_stats': batch_stats}, images,
                           train=train_mode, mutable=mutable)
    return state['intermediates']

  flat = traverse_util.flatten_dict(apply(params, batch_stats, images), sep='/')
  return {path.split('/')[-1]: np.asarray(value[0]) for path, value in flat.items()}


def relative_error(ours: np.ndarray, official: np.ndarray) -> float:
  return float(np.abs(ours - official).max() / max(np.abs(official).max(), 1e-6))


@pytest.mark.parametrize('variant', ['sk0', 'sk1'])
def test_imported_model_reproduces_every_official_endpoint(variant):
  root = _fixture_dir(variant)
  config = official_fixture.get_config(variant)
  params, batch_stats, info = import_tf2.convert_variables(_variables(variant), config)
  arch = info['architecture']
  assert arch['blocks_per_stage'] == (1, 1, 1, 1) and arch['block_type'] == 'bottleneck'
  assert arch['width_multiplier'] == 0.125 and arch['num_features'] == 256
  assert arch['selective_kernels'] == (variant == 'sk1') and not arch['cifar_stem']
  assert (arch['num_proj_layers'], arch['proj_out_dim'], arch['num_classes']) == (3, 128, 10)

  outputs = np.load(root / 'outputs.npz')
  model = load.build(config, arch['num_classes'], bn_axis_name=None)
  errors = {}
  for mode in ('eval', 'train'):
    ours = _endpoints(model, params, batch_stats, outputs['inputs'], mode == 'train')
    for name in ENDPOINTS:
      assert ours[name].shape == outputs[f'{mode}/{name}'].shape, (mode, name)
      errors[f'{mode}/{name}'] = relative_error(ours[name], outputs[f'{mode}/{name}'])
  print(variant, ' '.join(f'{k}={v:.1e}' for k, v in errors.items()))  # for `pytest -s`
  too_large = {k: v for k, v in errors.items() if v > TOLERANCE[k.split('/')[0]]}
  assert not too_large, f'{variant}: endpoints beyond the README tolerance: {too_large}'


@pytest.mark.parametrize(
  'variant,override,expected',
  [
    # The SK network imported without SK: the deep stem and SK convs have no place.
    ('sk1', {'sk_ratio': 0.0}, ['model.sk_ratio=0.0 but the SavedModel has selective kernels',
                                'sk__conv2d', 'encoder/stage1/block_0/conv_1/kernel']),
    ('sk0', {'num_proj_layers': 2}, ['model.num_proj_layers=2, the SavedModel has 3',
                                     'projection_head/nl_2/dense_2/kernel']),
    ('sk0', {'width_multiplier': 0.25}, ['model.width_multiplier=0.25, the SavedModel has 0.125',
                                         'expected (7, 7, 3, 16) got (7, 7, 3, 8)']),
    ('sk0', {'blocks_per_stage': (1, 2, 1, 1)}, ['give blocks (1, 2, 1, 1)',
                                                 'encoder/stage2/block_1/conv_0/kernel']),
  ],
)
def test_wrong_config_fails_with_one_list_of_mismatches(variant, override, expected):
  config = official_fixture.get_config(variant)
  config.model.update(override)
  with pytest.raises(ValueError, match=r'^\d+ variables of the SavedModel do not match') as error:
    import_tf2.convert_variables(_variables(variant), config)
  message = str(error.value)
  assert '\n' not in message
  for fragment in expected:
    assert fragment in message


def test_unmapped_and_missing_variables_are_listed_not_dropped():
  variables = dict(_variables('sk0'))
  variables['resnet/block_group2/bottleneck_block_1/squeeze_excite/dense_9/kernel'] = np.zeros(3)
  variables['optimizer/momentum/kernel'] = np.zeros(3)
  del variables['head_supervised/linear_layer/dense_3/bias']
  with pytest.raises(ValueError) as error:
    import_tf2.convert_variables(variables, official_fixture.get_config('sk0'))
  message = str(error.value)
  assert message.startswith('3 variables of the SavedModel do not match the config:')
  assert 'squeeze_excite/dense_9/kernel unmapped' in message
  assert 'optimizer/momentum/kernel unmapped' in message
  assert 'head_supervised/linear_layer/dense/bias (10,) (params) missing' in message


def _official_r50_names(sk: bool) -> dict[str, np.ndarray]:
  """Variables named as the official TF2 code names a ResNet-50 1x SimCLRv2 (Keras creation
  counters in the official construction order). Each value is its variable's creation index,
  broadcast (no memory), so a test can tell where each one landed."""
  counters = collections.Counter()
  variables = {}

  def unique(base):
    counters[base] += 1
    return base if counters[base] == 1 else f'{base}_{counters[base] - 1}'

  def conv(scope, k, c_in, c_out, fixed_padding=True):
    wrapper = f'{unique("conv2d_fixed_padding")}/' if fixed_padding else ''
    variables[f'{scope}/{wrapper}{unique("conv2d")}/kernel'] = (k, k, c_in, c_out)

  def bn(scope, c, center=True):
    layer = f'{scope}/{unique("batch_norm_relu")}/{unique("sync_batch_normalization")}'
    for leaf in ('gamma', 'beta', 'moving_mean', 'moving_variance'):
      if center or leaf != 'beta':
        variables[f'{layer}/{leaf}'] = (c,)

  for c_in, c_out in [(3, 32), (32, 32), (32, 64)] if sk else [(3, 64)]:
    conv('resnet', 3 if sk else 7, c_in, c_out), bn('resnet', c_out)
  c_in = 64
  for g, num_blocks in enumerate((3, 4, 6, 3)):
    f = 64 * 2**g
    mid = max(int(f * 0.0625), 32)
    for b in range(num_blocks):
      scope = f'resnet/block_group{g + 1}/{unique("bottleneck_block")}'
      if b == 0:
        conv(scope, 1, c_in, 4 * f), bn(scope, 4 * f)
      conv(scope, 1, c_in if b == 0 else 4 * f, f), bn(scope, f)
      if sk:
        sk_scope = f'{scope}/{unique("sk__conv2d")}'
        conv(sk_scope, 3, f, 2 * f), bn(sk_scope, 2 * f)
        conv(sk_scope, 1, f, mid, fixed_padding=False), bn(sk_scope, mid)
        conv(sk_scope, 1, mid, 2 * f, fixed_padding=False)
      else:
        conv(scope, 3, f, f), bn(scope, f)
      conv(scope, 1, f, 4 * f), bn(scope, 4 * f)
    c_in = 4 * f
  for j in range(3):
    variables[f'projection_head/nl_{j}/{unique("dense")}/kernel'] = (2048, 128 if j == 2 else 2048)
    bn(f'projection_head/nl_{j}', 128 if j == 2 else 2048, center=j < 2)
  dense = unique('dense')
  variables[f'head_supervised/linear_layer/{dense}/kernel'] = (2048, 1000)
  variables[f'head_supervised/linear_layer/{dense}/bias'] = (1000,)
  return {name: np.broadcast_to(np.float32(index), shape)
          for index, (name, shape) in enumerate(variables.items())}


# Backbone values incl. BN statistics of r50_1x_sk0 / r50_1x_sk1 (REFERENCE §3).
@pytest.mark.parametrize('sk,backbone_values', [(False, 23_561_152), (True, 35_277_408)])
def test_full_depth_official_naming_maps_block_by_block(sk, backbone_values):
  config = official_fixture.get_config('sk1' if sk else 'sk0')
  config.model.blocks_per_stage = None  # depth 50: (3, 4, 6, 3)
  config.model.width_multiplier = 1.0
  config.data.image_size = 224
  variables = _official_r50_names(sk)
  params, batch_stats, info = import_tf2.convert_variables(variables, config)
  arch = info['architecture']
  assert (arch['depth'], arch['blocks_per_stage'], arch['num_classes']) == (50, (3, 4, 6, 3), 1000)
  sizes = lambda tree: sum(np.size(x) for x in jax.tree.leaves(tree))
  assert sizes(params['encoder']) + sizes(batch_stats['encoder']) == backbone_values
  assert params['encoder']['stage3']['block_5']['conv_2']['kernel'].shape == (1, 1, 256, 1024)
  # Creation order survives: blocks in counter order (bottleneck_block_10 after _9, not after
  # _1), and inside a block the shortcut, then the main path.
  def created(block, layer):
    stage, index = block
    return float(params['encoder'][stage][index][layer]['kernel'][0, 0, 0, 0])

  blocks = [(f'stage{g}', f'block_{b}') for g, n in enumerate((3, 4, 6, 3), 1) for b in range(n)]
  order = [created(block, 'conv_0') for block in blocks]
  assert order == sorted(order)
  first = blocks[0]
  assert created(first, 'shortcut_conv') < created(first, 'conv_0') < created(first, 'conv_2')


def test_cli_round_trip_writes_a_checkpoint_that_restores_equal(tmp_path):
  saved_model = _fixture_dir('sk1') / 'saved_model'
  workdir = tmp_path / 'imported'
  # The sk0 config with overrides: proves `--config.*` overrides reach the architecture check.
  proc = subprocess.run(
    [sys.executable, '-m', 'simclr_jax.import_tf2', f'--saved_model={saved_model}',
     '--config=configs/official_fixture.py:sk0', '--config.model.sk_ratio=0.0625',
     '--config.model.ft_proj_selector=1', f'--workdir={workdir}'],
    cwd=REPO, env=dict(os.environ, JAX_PLATFORMS='cpu'), capture_output=True, text=True,
    timeout=300,
  )
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert 'Imported 135 variables' in proc.stdout and '-class model)' in proc.stdout

  params, batch_stats, meta = checkpoints.restore_variables(str(workdir))
  expected_params, expected_stats, _ = import_tf2.convert_variables(
    _variables('sk1'), official_fixture.get_config('sk1'))
  for restored, expected in ((params, expected_params), (batch_stats, expected_stats)):
    restored = traverse_util.flatten_dict(restored, sep='/')
    expected = traverse_util.flatten_dict(expected, sep='/')
    assert restored.keys() == expected.keys()
    for key, value in expected.items():
      np.testing.assert_array_equal(restored[key], value, err_msg=key)
  assert meta['imported_from'] == str(saved_model)
  assert meta['architecture']['selective_kernels'] is True
  assert meta['config']['model']['sk_ratio'] == 0.0625

  # A workdir that already holds checkpoints is never overwritten.
  proc = subprocess.run(proc.args, cwd=REPO, env=dict(os.environ, JAX_PLATFORMS='cpu'),
                        capture_output=True, text=True, timeout=300)
  assert proc.returncode != 0 and 'already holds checkpoints' in proc.stderr
