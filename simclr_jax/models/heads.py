"""Projection and supervised heads with the official SimCLR conventions (tf2/model.py).

Parameter tree, mirroring the official layer names:
  ProjectionHead:  nl_{j}/dense/kernel, nl_{j}/bn/{scale, bias}   (j = 0..num_layers-1; the last
                   layer's BN has no bias, official `center=False`)
  SupervisedHead:  linear_layer/dense/{kernel, bias}             (official head_supervised)
"""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from simclr_jax.models.resnet import LayerConfig

# Official LinearLayer: tf.keras.initializers.RandomNormal(stddev=0.01).
_DENSE_INIT = nn.initializers.normal(stddev=0.01)


class LinearLayer(nn.Module):
  """Official LinearLayer: Dense, then optionally BN (no ReLU).

  The dense layer has a bias only if `use_bias and not use_bn` (BN's beta replaces it).
  `bn_center=None` follows the official rule `center=use_bias`.
  """

  features: int
  use_bias: bool = True
  use_bn: bool = False
  bn_center: bool | None = None
  dtype: Any = jnp.float32
  bn_axis_name: str | None = None
  bn_momentum: float = 0.9
  bn_epsilon: float = 1e-5

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    # Official: `assert inputs.shape.ndims == 2`; a 4-D input would silently act per pixel.
    if x.ndim != 2:
      raise ValueError(f'LinearLayer expects [batch, features], got shape {x.shape}')
    x = nn.Dense(
      self.features,
      use_bias=self.use_bias and not self.use_bn,
      kernel_init=_DENSE_INIT,
      dtype=self.dtype,
      name='dense',
    )(x)
    if self.use_bn:
      center = self.use_bias if self.bn_center is None else self.bn_center
      layers = LayerConfig(self.dtype, self.bn_axis_name, self.bn_momentum, self.bn_epsilon)
      x = layers.batch_norm(x, train, 'bn', relu=False, center=center)
    return x


class ProjectionHead(nn.Module):
  """Official nonlinear projection head; returns `hiddens = [input, out_0, ..., out_{L-1}]`.

  Middle layers: Dense(D->D, no bias) -> BN(center) -> ReLU, D = input width. Last layer:
  Dense(D->out_dim, no bias) -> BN(center=False, scale). `num_layers=0` is the identity.
  """

  num_layers: int = 3
  out_dim: int = 128
  dtype: Any = jnp.float32
  bn_axis_name: str | None = None
  bn_momentum: float = 0.9
  bn_epsilon: float = 1e-5

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> list[jax.Array]:
    if self.num_layers < 0:
      raise ValueError(f'model.num_proj_layers={self.num_layers} must be >= 0')
    hiddens = [x]
    for j in range(self.num_layers):
      last = j == self.num_layers - 1
      h = LinearLayer(
        features=self.out_dim if last else x.shape[-1],
        use_bias=not last,  # official: bias (BN centre) and ReLU only for middle layers
        use_bn=True,
        dtype=self.dtype,
        bn_axis_name=self.bn_axis_name,
        bn_momentum=self.bn_momentum,
        bn_epsilon=self.bn_epsilon,
        name=f'nl_{j}',
      )(hiddens[-1], train)
      hiddens.append(h if last else nn.relu(h))
    return hiddens


class SupervisedHead(nn.Module):
  """Official head_supervised: one Dense with bias, kernel N(0, 0.01^2), bias 0."""

  num_classes: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    del train  # no BN: same in both modes
    return LinearLayer(self.num_classes, use_bias=True, use_bn=False, dtype=self.dtype,
                       name='linear_layer')(x, False)
