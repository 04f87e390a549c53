"""Tests for simclr_jax/models/simclr.py: outputs, endpoints, stop-gradient, official structure."""

import ast
import collections
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

import shared_paths
from simclr_jax.models.simclr import SimCLRModel

FIXTURES = shared_paths.OFFICIAL_TF2_FIXTURES
# Tiny ResNet-18-style net: 64 features, 8x8 images through the CIFAR stem.
TINY = dict(depth=18, width_multiplier=0.125, blocks_per_stage=(1, 1, 1, 1), cifar_stem=True,
            proj_out_dim=16, num_classes=5)  # fmt: skip

# Tests compile many small programs once each: skip XLA's slow CPU backend optimisations.
_jit = functools.partial(jax.jit, compiler_options={'xla_backend_optimization_level': 0})


def _images(batch=4, size=8, seed=0):
  return jax.random.uniform(jax.random.key(seed), (batch, size, size, 3))


@pytest.fixture(scope='module')
def tiny_variables():
  model = SimCLRModel(**TINY)
  key = jax.random.key(0, impl='unsafe_rbg')  # threefry init compiles slowly on CPU
  return _jit(lambda x: model.init(key, x, train=False))(_images())


@functools.partial(_jit, static_argnums=(0, 3))
def _apply(model, variables, images, train):
  return model.apply(variables, images, train=train, mutable=['batch_stats', 'intermediates'])


def test_outputs_and_endpoints(tiny_variables):
  assert sorted(tiny_variables['params']) == ['encoder', 'head_supervised', 'projection_head']
  out, state = _apply(SimCLRModel(**TINY), tiny_variables, _images(), True)
  assert sorted(out) == ['features', 'hiddens', 'logits_sup', 'projection']
  assert out['features'].shape == (4, 64) and out['projection'].shape == (4, 16)
  assert out['logits_sup'].shape == (4, 5)
  assert [h.shape for h in out['hiddens']] == [(4, 64), (4, 64), (4, 64), (4, 16)]
  assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(out))
  np.testing.assert_array_equal(out['hiddens'][0], out['features'])
  np.testing.assert_array_equal(out['hiddens'][-1], out['projection'])
  ends = state['intermediates']
  np.testing.assert_array_equal(ends['proj_head_input'][0], out['features'])
  np.testing.assert_array_equal(ends['proj_head_output'][0], out['projection'])
  np.testing.assert_array_equal(ends['logits_sup'][0], out['logits_sup'])
  assert ends['encoder']['final_avg_pool'][0].shape == (4, 64)


@pytest.mark.parametrize('selector', [0, 1])
def test_supervised_head_reads_the_selected_hidden(tiny_variables, selector):
  model = SimCLRModel(**TINY, ft_proj_selector=selector)
  out, _ = _apply(model, tiny_variables, _images(), False)
  dense = tiny_variables['params']['head_supervised']['linear_layer']['dense']
  expected = out['hiddens'][selector] @ dense['kernel'] + dense['bias']
  np.testing.assert_allclose(out['logits_sup'], expected, rtol=1e-5, atol=1e-6)


def test_selector_minus_one_reads_the_projection():
  model = SimCLRModel(**TINY, ft_proj_selector=-1)
  params = jax.eval_shape(lambda x: model.init(jax.random.key(0), x, train=False),
                          _images())['params']
  assert params['head_supervised']['linear_layer']['dense']['kernel'].shape == (16, 5)


def test_probe_does_not_train_the_encoder_during_pretraining(tiny_variables):
  def grads(model, params):
    def loss(params):
      out, _ = model.apply({**tiny_variables, 'params': params}, _images(), train=True,
                           mutable=['batch_stats'])
      return jnp.sum(out['logits_sup'] ** 2)

    return jax.grad(loss)(params)

  # One compile for both: XLA shares the forward pass.
  both = _jit(lambda p: [grads(SimCLRModel(**TINY, supervised_head_stop_gradient=stop), p)
                            for stop in (True, False)])  # fmt: skip
  frozen, finetune = both(tiny_variables['params'])
  norm = lambda tree: sum(float(jnp.abs(x).sum()) for x in jax.tree.leaves(tree))
  assert norm(frozen['encoder']) == 0.0
  assert norm(frozen['head_supervised']) > 0.0
  assert norm(finetune['encoder']) > 0.0


def test_encoder_basic_blocks_start_with_zero_gamma_on_their_last_bn(tiny_variables):
  flat = traverse_util.flatten_dict(tiny_variables['params']['encoder'], sep='/')
  scales = {k: v for k, v in flat.items() if k.endswith('/scale')}
  zero = sorted(k for k, v in scales.items() if not np.any(v))
  assert zero == [f'stage{g}/block_0/bn_1/scale' for g in range(1, 5)]
  assert all(np.all(v == 1) for k, v in scales.items() if k not in zero)


def test_bf16_model_keeps_float32_params_and_outputs(tiny_variables):
  out, state = _apply(SimCLRModel(**TINY, dtype=jnp.bfloat16), tiny_variables, _images(), True)
  assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(out))
  assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(state['batch_stats']))


def test_selector_out_of_range_fails_early():
  with pytest.raises(ValueError, match='model.ft_proj_selector=4'):
    SimCLRModel(**TINY, num_proj_layers=3, ft_proj_selector=4)


def _official_shapes(fixture):
  shapes = collections.Counter()
  for line in (FIXTURES / fixture / 'variables.txt').read_text().splitlines():
    if not line.startswith('#'):
      shapes[tuple(ast.literal_eval(line.split('\t')[1]))] += 1
  return shapes


@pytest.mark.parametrize('fixture, sk_ratio', [('bottleneck_sk0', 0.0), ('bottleneck_sk1', 0.0625)])
def test_variable_shapes_match_official_fixture(fixture, sk_ratio):
  if not (FIXTURES / fixture).is_dir():
    pytest.skip(f'{FIXTURES / fixture} not available')
  model = SimCLRModel(50, width_multiplier=0.125, sk_ratio=sk_ratio,
                      blocks_per_stage=(1, 1, 1, 1), num_classes=10)  # fmt: skip
  images = jax.ShapeDtypeStruct((1, 64, 64, 3), jnp.float32)
  variables = jax.eval_shape(lambda x: model.init(jax.random.key(0), x, train=False), images)
  ours = collections.Counter(tuple(x.shape) for x in jax.tree.leaves(variables))
  assert ours == _official_shapes(fixture)
