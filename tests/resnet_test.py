"""Tests for simclr_jax/models/resnet.py: official conventions (REFERENCE.md section 3)."""

import functools
import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util
from jax.sharding import Mesh, PartitionSpec as P

from simclr_jax.models import resnet
from simclr_jax.models.resnet import LayerConfig, ResNet, blocks_for_depth, count_params

# Tiny bottleneck net shaped like the official fixtures (1 block per stage, width 0.125).
TINY = dict(depth=50, width_multiplier=0.125, blocks_per_stage=(1, 1, 1, 1))

# Tests compile many small programs once each: skip XLA's slow CPU backend optimisations.
_jit = functools.partial(jax.jit, compiler_options={'xla_backend_optimization_level': 0})


def _init(model, images):
  # Jitted, with an RBG key: threefry-based initialisation takes seconds to compile on CPU.
  key = jax.random.key(0, impl='unsafe_rbg')
  return _jit(lambda x: model.init(key, x, train=False))(images)


@pytest.fixture(scope='module')
def tiny_sk_variables():
  return _init(ResNet(**TINY, sk_ratio=0.0625), _images(2, 32))


def _images(batch, size, seed=0):
  return jax.random.uniform(jax.random.key(seed), (batch, size, size, 3))


@functools.cache
def _trace(depth, width=1, sk_ratio=0.0, cifar_stem=False):
  """(trainable, incl. batch_stats, output ShapeDtypeStruct), by tracing only (eval_shape)."""
  model = ResNet(depth, width_multiplier=width, sk_ratio=sk_ratio, cifar_stem=cifar_stem)
  images = jax.ShapeDtypeStruct((2, 32, 32, 3), jnp.float32)
  output, variables = jax.eval_shape(
    lambda x: model.init_with_output(jax.random.key(0), x, train=False), images
  )
  size = lambda tree: sum(x.size for x in jax.tree.leaves(tree))
  trainable = size(variables['params'])
  return trainable, trainable + size(variables['batch_stats']), output


def test_count_params_agrees_with_a_direct_count():
  assert count_params(ResNet(50, sk_ratio=0.0625), 32) == _trace(50, 1, 0.0625)[:2]


def _count(*args):
  return _trace(*args)[:2]


# (derived) counts from REFERENCE.md section 3: (trainable, incl. BN moving statistics).
@pytest.mark.parametrize(
  'args, trainable, total',
  [
    ((50,), 23_508_032, 23_561_152),
    ((50, 1, 0.0625), 35_215_584, 35_277_408),
    ((152, 2), 232_253_568, 232_556_416),
    ((152, 3, 0.0625), 794_704_160, 795_235_360),  # 3 GB if it were materialised
    ((18,), 11_180_736, None),
    ((18, 1, 0.0, True), 11_173_056, None),
  ],
)
def test_param_counts_match_reference_exactly(args, trainable, total):
  counted = _count(*args)
  assert counted[0] == trainable
  if total is not None:
    assert counted[1] == total


# README "Param (M)" column of the 13 released SimCLRv2 models (incl. BN statistics, rounded).
README_PARAMS_M = {
  'r50_1x_sk0': 24, 'r50_1x_sk1': 35, 'r50_2x_sk0': 94, 'r50_2x_sk1': 140,
  'r101_1x_sk0': 43, 'r101_1x_sk1': 65, 'r101_2x_sk0': 170, 'r101_2x_sk1': 257,
  'r152_1x_sk0': 58, 'r152_1x_sk1': 89, 'r152_2x_sk0': 233, 'r152_2x_sk1': 354,
  'r152_3x_sk1': 795,
}  # fmt: skip


@pytest.mark.parametrize('name', sorted(README_PARAMS_M))
def test_param_counts_match_readme_table(name):
  depth, width, sk = name[1:].split('_')
  _, total = _count(int(depth), int(width[:-1]), 0.0625 * int(sk[-1]))
  assert round(total / 1e6) == README_PARAMS_M[name]


@pytest.mark.parametrize('depth', [18, 34, 50, 101, 152, 200])
def test_output_shape_for_each_depth(depth):
  out = _trace(depth)[2]
  channels = 512 if depth < 50 else 2048
  assert out.shape == (2, channels) and out.dtype == jnp.float32
  assert ResNet(depth).num_features == channels
  assert blocks_for_depth(depth) == resnet._BLOCKS_FOR_DEPTH[depth]


def test_cifar_stem_keeps_resolution_and_skips_max_pool():
  model = ResNet(18, width_multiplier=0.125, cifar_stem=True)
  _, state = jax.eval_shape(
    lambda x: model.init_with_output(jax.random.key(0), x, train=False,
                                     mutable=['params', 'batch_stats', 'intermediates']),
    _images(2, 16),
  )
  ends = state['intermediates']
  assert ends['initial_conv'][0].shape == (2, 16, 16, 8)
  assert ends['initial_max_pool'][0].shape == (2, 16, 16, 8)
  assert ends['block_group4'][0].shape == (2, 2, 2, 64)


def test_endpoints_are_sown_with_official_shapes(tiny_sk_variables):
  model = ResNet(**TINY, sk_ratio=0.0625)
  apply = _jit(lambda v, x: model.apply(v, x, train=False, mutable=['intermediates']))
  features, state = apply(tiny_sk_variables, _images(2, 64))
  ends = {k: v[0] for k, v in state['intermediates'].items()}
  # Shapes of the official TF2 fixtures (fixtures/official_tf2/README.md).
  assert {k: v.shape for k, v in ends.items()} == {
    'initial_conv': (2, 32, 32, 8), 'initial_max_pool': (2, 16, 16, 8),
    'block_group1': (2, 16, 16, 32), 'block_group2': (2, 8, 8, 64),
    'block_group3': (2, 4, 4, 128), 'block_group4': (2, 2, 2, 256), 'final_avg_pool': (2, 256),
  }  # fmt: skip
  np.testing.assert_allclose(ends['final_avg_pool'], features)
  np.testing.assert_allclose(features, ends['block_group4'].mean(axis=(1, 2)), rtol=1e-5)


def test_bad_configuration_fails_with_one_line_naming_the_field():
  with pytest.raises(ValueError, match=r'model.depth=42 is not supported; use one of 18, 34'):
    ResNet(42)
  with pytest.raises(ValueError, match='model.width_multiplier'):
    ResNet(50, width_multiplier=0)
  with pytest.raises(ValueError, match='model.blocks_per_stage'):
    ResNet(50, blocks_per_stage=(1, 1, 1))
  with pytest.raises(ValueError, match='model.block_type'):
    ResNet(50, block_type='wide')
  with pytest.raises(ValueError, match='model.block_type is needed'):
    ResNet(0, blocks_per_stage=(1, 1, 1, 1))
  # blocks_per_stage overrides the depth table; an explicit block type needs no known depth.
  assert ResNet(0, blocks_per_stage=(1, 1, 1, 1), block_type='basic').num_features == 512


class _Conv(nn.Module):
  kernel_size: int
  strides: int

  @nn.compact
  def __call__(self, x):
    return LayerConfig().conv(x, 4, self.kernel_size, self.strides, 'conv')


@pytest.mark.parametrize('kernel_size, pad', [(3, (1, 1)), (7, (3, 3))])
def test_strided_conv_uses_official_fixed_padding(kernel_size, pad):
  x = np.asarray(_images(2, 8))  # even input: TF SAME would pad (0, 1) or (2, 3) instead
  module = _Conv(kernel_size, 2)
  variables = _jit(module.init)(jax.random.key(1, impl='unsafe_rbg'), x)
  kernel = variables['params']['conv']['kernel']
  expected = jax.lax.conv_general_dilated(
    x, kernel, (2, 2), [pad, pad], dimension_numbers=('NHWC', 'HWIO', 'NHWC')
  )
  np.testing.assert_allclose(_jit(module.apply)(variables, x), expected, rtol=1e-5, atol=1e-6)
  if kernel_size == 3:
    same = jax.lax.conv_general_dilated(
      x, kernel, (2, 2), 'SAME', dimension_numbers=('NHWC', 'HWIO', 'NHWC')
    )
    assert not np.allclose(expected, same)


def test_conv_init_is_lecun_truncated_normal_without_bias(tiny_sk_variables):
  stage4 = tiny_sk_variables['params']['stage4']['block_0']
  assert set(stage4['conv_0']) == {'kernel'}  # no bias
  kernel = np.asarray(stage4['sk_conv']['conv_0']['kernel'])  # [3, 3, 64, 128], fan_in 576
  assert abs(kernel.std() * np.sqrt(9 * 64) - 1.0) < 0.05
  # Keras/flax truncate at 2 sigma of the underlying normal (stddev 1/0.8796 of the target).
  assert np.abs(kernel).max() <= 2 / np.sqrt(9 * 64) / 0.8796 * 1.001


def assert_last_bn_gamma_zero(params, last: str, num_blocks: int) -> None:
  """Exactly the last BN of each block starts with gamma 0; every other gamma is 1."""
  flat = traverse_util.flatten_dict(params, sep='/')
  scales = {k: v for k, v in flat.items() if k.endswith('/scale')}
  zero = [k for k, v in scales.items() if not np.any(v)]
  assert len(zero) == num_blocks and all(k.split('/')[-2] == last for k in zero)
  assert all(k.split('/')[-3].startswith('block_') for k in zero)
  assert all(np.all(v == 1) for k, v in scales.items() if k not in zero)


def test_bottleneck_last_bn_has_zero_gamma(tiny_sk_variables):
  assert_last_bn_gamma_zero(tiny_sk_variables['params'], 'bn_2', 4)


def test_projection_shortcut_on_first_block_of_every_stage():
  # (Zero gamma of basic blocks is checked on the SimCLRModel's ResNet-18 in simclr_model_test.)
  model = ResNet(18, width_multiplier=0.125, blocks_per_stage=(2, 1, 1, 2))
  params = jax.eval_shape(lambda x: model.init(jax.random.key(0), x, train=False),
                          _images(1, 32))['params']
  for g in range(1, 5):
    assert 'shortcut_conv' in params[f'stage{g}']['block_0']
  assert 'shortcut_conv' not in params['stage1']['block_1']
  assert 'shortcut_conv' not in params['stage4']['block_1']
  # Group 1 of ResNet-18 also projects although the widths already match (official).
  assert params['stage1']['block_0']['shortcut_conv']['kernel'].shape == (1, 1, 8, 8)


def test_sk_conv_mid_dim_and_resnet_d_structure():
  model = ResNet(50, width_multiplier=2, sk_ratio=0.0625)
  params = jax.eval_shape(lambda x: model.init(jax.random.key(0), x, train=False),
                          _images(1, 32))['params']
  for g, filters in enumerate([128, 256, 512, 1024], start=1):
    sk = params[f'stage{g}']['block_0']['sk_conv']
    mid = max(int(filters * 0.0625), 32)
    assert resnet.sk_mid_dim(filters, 0.0625) == mid
    assert sk['conv_0']['kernel'].shape == (3, 3, filters, 2 * filters)
    assert sk['conv_1']['kernel'].shape == (1, 1, filters, mid)
    assert sk['conv_2']['kernel'].shape == (1, 1, mid, 2 * filters)
    # ResNet-D: stride lives in the avg-pool, so the shortcut conv is 1x1 on the input width.
    in_width = 128 if g == 1 else 2 * filters
    assert params[f'stage{g}']['block_0']['shortcut_conv']['kernel'].shape == (
      1, 1, in_width, 4 * filters,
    )  # fmt: skip
  stem = params['stem']
  assert [stem[f'conv_{i}']['kernel'].shape for i in range(3)] == [
    (3, 3, 3, 64), (3, 3, 64, 64), (3, 3, 64, 128),
  ]  # fmt: skip


@pytest.fixture(scope='module')
def tiny_sk_train_reference(tiny_sk_variables):
  """Float32 single-device training-mode (features, state) on 16 images of 32x32."""
  model = ResNet(**TINY, sk_ratio=0.0625)
  apply = _jit(lambda v, x: model.apply(v, x, train=True, mutable=['batch_stats']))
  return apply(tiny_sk_variables, _images(16, 32, seed=3))


def test_cross_replica_bn_matches_single_device_on_the_global_batch(
  tiny_sk_variables, tiny_sk_train_reference
):
  images = _images(16, 32, seed=3)
  single, single_state = tiny_sk_train_reference
  model = ResNet(**TINY, sk_ratio=0.0625, bn_axis_name='data')
  mesh = Mesh(np.array(jax.devices()[:8]), ('data',))

  @_jit
  @functools.partial(jax.shard_map, mesh=mesh, in_specs=(P(), P('data')),
                     out_specs=(P('data'), P()))
  def sharded(variables, images):  # 2 images per device
    return model.apply(variables, images, train=True, mutable=['batch_stats'])

  features, state = sharded(tiny_sk_variables, images)
  np.testing.assert_allclose(features, single, rtol=1e-5, atol=1e-5)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6),
               state['batch_stats'], single_state['batch_stats'])
  # Statistics moved away from their initial values (so the comparison is not vacuous).
  assert not np.allclose(state['batch_stats']['stage2']['block_0']['bn_0']['mean'], 0.0)


def test_bf16_compute_keeps_float32_params_stats_and_outputs(
  tiny_sk_variables, tiny_sk_train_reference
):
  model = ResNet(**TINY, sk_ratio=0.0625, dtype=jnp.bfloat16)
  assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(tiny_sk_variables))
  apply = _jit(lambda v, x: model.apply(v, x, train=True, mutable=['batch_stats']))
  features, state = apply(tiny_sk_variables, _images(16, 32, seed=3))
  assert features.dtype == jnp.float32
  assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(state))
  reference = tiny_sk_train_reference[0]
  # bf16 keeps ~3 significant digits; that error grows a little through 13 layers.
  assert np.abs(features - reference).mean() < 0.02 * np.abs(reference).mean()


def test_remat_keeps_param_tree_and_checkpoints_each_block():
  kwargs = dict(depth=18, width_multiplier=0.125, blocks_per_stage=(1, 1, 1, 1), cifar_stem=True)
  images = _images(2, 8)
  plain, remat = ResNet(**kwargs), ResNet(**kwargs, remat=True)
  init = lambda m: jax.eval_shape(lambda x: m.init(jax.random.key(0), x, train=False), images)
  variables = init(plain)
  assert jax.tree.structure(init(remat)) == jax.tree.structure(variables)

  def grad_jaxpr(model):
    def loss(params, batch_stats):
      out, _ = model.apply({'params': params, 'batch_stats': batch_stats}, images, train=True,
                           mutable=['batch_stats'])
      return jnp.sum(out**2)

    # Tracing only: nn.remat maps to jax.checkpoint (one per block) with `train` static.
    jaxpr = jax.make_jaxpr(jax.grad(loss))(variables['params'], variables['batch_stats'])
    return len(re.findall(r'\b(?:checkpoint|remat\w*)\[', str(jaxpr)))

  assert grad_jaxpr(remat) >= 4
  assert grad_jaxpr(plain) == 0
