"""The importer against the official TF2 fixtures: every endpoint, both modes, both networks."""

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
from simclr_jax import checkpoints, import_tf2, train

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
  model = train.build_model(config, arch['num_classes'], bn_axis_name=None)
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
  assert 'Imported 135 variables' in proc.stdout

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
