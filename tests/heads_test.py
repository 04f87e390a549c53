"""Tests for simclr_jax/models/heads.py: official conventions (REFERENCE.md section 4)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from simclr_jax.models.heads import LinearLayer, ProjectionHead, SupervisedHead

_KEY = jax.random.key(0, impl='unsafe_rbg')  # fast-compiling RNG for initialisation on CPU


def _inputs(batch=8, dim=16, seed=0):
  return np.asarray(jax.random.normal(jax.random.key(seed), (batch, dim)))


def _batch_norm(x, scale, bias, eps=1e-5):
  mean, var = x.mean(0), x.var(0)
  return (x - mean) / np.sqrt(var + eps) * scale + bias


@pytest.mark.parametrize(
  'use_bias, use_bn, dense_keys, bn_keys',
  [
    (True, False, {'kernel', 'bias'}, None),
    (False, False, {'kernel'}, None),
    (True, True, {'kernel'}, {'scale', 'bias'}),  # BN beta replaces the dense bias
    (False, True, {'kernel'}, {'scale'}),  # official center=use_bias
  ],
)
def test_linear_layer_bias_and_bn_flags(use_bias, use_bn, dense_keys, bn_keys):
  layer = LinearLayer(4, use_bias=use_bias, use_bn=use_bn)
  params = jax.eval_shape(lambda x: layer.init(_KEY, x, train=False), _inputs())['params']
  assert set(params['dense']) == dense_keys
  assert (set(params['bn']) if 'bn' in params else None) == bn_keys


def test_linear_layer_bn_center_override_and_2d_check():
  layer = LinearLayer(4, use_bias=False, use_bn=True, bn_center=True)
  params = jax.eval_shape(lambda x: layer.init(_KEY, x, train=False), _inputs())['params']
  assert set(params['bn']) == {'scale', 'bias'}
  with pytest.raises(ValueError, match='batch, features'):
    layer.init(_KEY, np.zeros((2, 3, 3, 4)), train=False)


def test_dense_kernel_init_is_normal_0_01():
  layer = LinearLayer(256, use_bias=True)
  params = layer.init(_KEY, np.zeros((2, 256)), train=False)['params']['dense']
  assert abs(float(params['kernel'].std()) - 0.01) < 0.0005
  assert abs(float(params['kernel'].mean())) < 0.0005
  np.testing.assert_array_equal(params['bias'], 0.0)


def test_projection_head_structure():
  head = ProjectionHead(num_layers=3, out_dim=8)
  variables = jax.eval_shape(lambda x: head.init(_KEY, x, train=False), _inputs(dim=16))
  params = variables['params']
  assert sorted(params) == ['nl_0', 'nl_1', 'nl_2']
  for j, (shape, bn_keys) in enumerate(
    [((16, 16), {'scale', 'bias'}), ((16, 16), {'scale', 'bias'}), ((16, 8), {'scale'})]
  ):
    assert set(params[f'nl_{j}']['dense']) == {'kernel'}
    assert params[f'nl_{j}']['dense']['kernel'].shape == shape
    assert set(params[f'nl_{j}']['bn']) == bn_keys
    assert set(variables['batch_stats'][f'nl_{j}']['bn']) == {'mean', 'var'}


def test_projection_head_matches_numpy_in_train_mode():
  x = _inputs(dim=16)
  head = ProjectionHead(num_layers=3, out_dim=8)
  variables = head.init(_KEY, x, train=False)
  # Random BN affine parameters so that centre/scale and ReLU placement all matter.
  rng = np.random.RandomState(0)
  params = jax.tree.map(lambda p: p + rng.normal(0, 0.5, p.shape).astype(np.float32),
                        variables['params'])
  hiddens, _ = head.apply({**variables, 'params': params}, x, train=True,
                          mutable=['batch_stats'])
  expected = [x]
  for j in range(3):
    layer = jax.tree.map(np.asarray, params[f'nl_{j}'])
    h = _batch_norm(expected[-1] @ layer['dense']['kernel'], layer['bn']['scale'],
                    layer['bn'].get('bias', 0.0))
    expected.append(h if j == 2 else np.maximum(h, 0))
  assert len(hiddens) == 4
  for got, want in zip(hiddens, expected):
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
  assert (hiddens[1] >= 0).all() and (hiddens[3] < 0).any()  # no ReLU after the last layer


def test_projection_head_with_zero_layers_is_identity():
  x = _inputs()
  head = ProjectionHead(num_layers=0)
  variables = head.init(_KEY, x, train=False)
  assert not variables.get('params')
  hiddens = head.apply(variables, x, train=False)
  assert len(hiddens) == 1
  np.testing.assert_array_equal(hiddens[0], x)


def test_supervised_head_is_dense_with_zero_bias():
  x = _inputs(dim=16)
  head = SupervisedHead(num_classes=5)
  variables = head.init(_KEY, x)
  dense = variables['params']['linear_layer']['dense']
  assert dense['kernel'].shape == (16, 5)
  np.testing.assert_array_equal(dense['bias'], 0.0)
  assert 'batch_stats' not in variables
  np.testing.assert_allclose(head.apply(variables, x), x @ np.asarray(dense['kernel']),
                             rtol=1e-5, atol=1e-6)


def test_bf16_head_keeps_float32_params():
  head = ProjectionHead(num_layers=2, out_dim=8, dtype=jnp.bfloat16)
  variables = head.init(_KEY, _inputs(), train=False)
  assert all(v.dtype == jnp.float32 for v in jax.tree.leaves(variables))
  hiddens, state = head.apply(variables, _inputs(), train=True, mutable=['batch_stats'])
  assert hiddens[-1].dtype == jnp.bfloat16  # the caller (SimCLRModel) casts to float32
  assert all(v.dtype == jnp.float32 for v in jax.tree.leaves(state))
