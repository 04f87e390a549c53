"""ResNet v1 encoder with the official SimCLR(v2) conventions, incl. Selective Kernels (SK).

Follows google-research/simclr `tf2/resnet.py` (commit 383d414) layer for layer, so that official
checkpoints import by position: post-activation blocks, stride on the 3x3, fixed padding for
strided convs, a projection shortcut on the first block of *every* group, ResNet-D stem and
shortcuts when `sk_ratio > 0`, zero-init gamma on each block's last BN.

Parameter tree (`params` and `batch_stats` share it; `{i}` counts from 0 in call order):

  stem/conv_{i}, stem/bn_{i}     i=0 (7x7/2 or CIFAR 3x3/1) or i=0,1,2 (SK deep stem, 3x3 convs)
  stage{g}/block_{b}/...         g=1..4 (official `block_group{g}`), b=0..blocks_per_stage[g-1]-1
    conv_0, bn_0, conv_1, bn_1[, conv_2, bn_2]   main path in order: bottleneck 1x1, 3x3, 1x1;
                                                 basic 3x3, 3x3 (the last BN has gamma init 0)
    sk_conv/{conv_0, bn_0, conv_1, bn_1, conv_2} replaces a bottleneck's conv_1/bn_1 when SK:
                                                 3x3 f->2f, its BN, 1x1 fuse f->mid, its BN,
                                                 1x1 select mid->2f
    shortcut_conv, shortcut_bn                   projection shortcut (first block of a stage)

Official layers are numbered in creation order, which inside a block is: shortcut conv/BN first,
then the main path in the order above (for SK: conv_0, bn_0, sk_conv/{conv_0, bn_0, conv_1, bn_1,
conv_2}, conv_2, bn_2). Mapping the fixtures in ../shared/fixtures/official_tf2 by that order
reproduces every official endpoint: relative error < 2e-6 in eval mode, < 7e-4 in train mode.

Endpoints sown into `intermediates` under the official names (each a 1-tuple, flax convention):
`initial_conv` (stem conv output before BN), `initial_max_pool`, `block_group1..4`,
`final_avg_pool`. Get them with `model.apply(..., mutable=['intermediates'])`. The stages are
not called `block_group{g}` because flax forbids a submodule and a sown value sharing a name.
"""

import dataclasses
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

_BLOCKS_FOR_DEPTH = {
  18: (2, 2, 2, 2),
  34: (3, 4, 6, 3),
  50: (3, 4, 6, 3),
  101: (3, 4, 23, 3),
  152: (3, 8, 36, 3),
  200: (3, 24, 36, 3),
}
_BLOCK_TYPES = ('basic', 'bottleneck')
# Official SK_Conv2D default `min_dim` (resnet.py).
_SK_MIN_DIM = 32
# Official Conv2dFixedPadding / Conv2D: tf.keras.initializers.VarianceScaling() defaults.
_CONV_INIT = nn.initializers.variance_scaling(1.0, 'fan_in', 'truncated_normal')


def _unsupported_depth(depth: int) -> ValueError:
  supported = ', '.join(str(d) for d in _BLOCKS_FOR_DEPTH)
  return ValueError(
    f'model.depth={depth} is not supported; use one of {supported} (or give model.blocks_per_stage)'
  )


def blocks_for_depth(depth: int) -> tuple[int, int, int, int]:
  """Blocks per stage of the official depth table, e.g. 50 -> (3, 4, 6, 3)."""
  if depth not in _BLOCKS_FOR_DEPTH:
    raise _unsupported_depth(depth)
  return _BLOCKS_FOR_DEPTH[depth]


def block_type_for_depth(depth: int) -> str:
  """'basic' for ResNet-18/34, 'bottleneck' for deeper nets (official resnet.py)."""
  if depth not in _BLOCKS_FOR_DEPTH:
    raise _unsupported_depth(depth)
  return 'basic' if depth < 50 else 'bottleneck'


def sk_mid_dim(filters: int, sk_ratio: float) -> int:
  """Width of the SK fuse layer: max(int(filters * sk_ratio), 32) (official SK_Conv2D)."""
  return max(int(filters * sk_ratio), _SK_MIN_DIM)


def fixed_padding(x: jax.Array, kernel_size: int) -> jax.Array:
  """Pads H and W by k-1, (k-1)//2 before and the rest after (official `fixed_padding`)."""
  pad_total = kernel_size - 1
  pad_beg = pad_total // 2
  pad_end = pad_total - pad_beg
  return jnp.pad(x, ((0, 0), (pad_beg, pad_end), (pad_beg, pad_end), (0, 0)))


@dataclasses.dataclass(frozen=True)
class LayerConfig:
  """Conv/BN settings shared by every layer; builds flax layers in the calling module."""

  dtype: Any = jnp.float32
  bn_axis_name: str | None = None
  bn_momentum: float = 0.9
  bn_epsilon: float = 1e-5

  def conv(
    self, x: jax.Array, filters: int, kernel_size: int, strides: int, name: str
  ) -> jax.Array:
    # Official Conv2dFixedPadding: explicit padding + VALID when strided (TF SAME would pad (0,1)
    # on even inputs), SAME otherwise.
    if strides > 1:
      x = fixed_padding(x, kernel_size)
    return nn.Conv(
      filters,
      (kernel_size, kernel_size),
      strides=(strides, strides),
      padding='SAME' if strides == 1 else 'VALID',
      use_bias=False,
      kernel_init=_CONV_INIT,
      dtype=self.dtype,
      name=name,
    )(x)

  def batch_norm(
    self,
    x: jax.Array,
    train: bool,
    name: str,
    relu: bool = True,
    zero_init: bool = False,
    center: bool = True,
  ) -> jax.Array:
    # Official BatchNormRelu; with `bn_axis_name` the statistics span all devices (global_bn).
    # Flax reduces in float32 even when `dtype` is bfloat16.
    x = nn.BatchNorm(
      use_running_average=not train,
      momentum=self.bn_momentum,
      epsilon=self.bn_epsilon,
      use_bias=center,
      scale_init=nn.initializers.zeros if zero_init else nn.initializers.ones,
      axis_name=self.bn_axis_name,
      dtype=self.dtype,
      name=name,
    )(x)
    return nn.relu(x) if relu else x


class SelectiveKernelConv(nn.Module):
  """Official SK_Conv2D: two 3x3 streams from one conv, mixed by per-channel softmax weights."""

  filters: int
  strides: int
  sk_ratio: float
  layers: LayerConfig

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    layers = self.layers
    x = layers.conv(x, 2 * self.filters, 3, self.strides, 'conv_0')
    x = layers.batch_norm(x, train, 'bn_0')
    streams = jnp.stack(jnp.split(x, 2, axis=-1))  # [2, N, H, W, f]
    # Reduce in float32 even under bf16 compute.
    fused = jnp.mean(streams.sum(0).astype(jnp.float32), axis=(1, 2), keepdims=True)
    fused = layers.conv(fused.astype(layers.dtype), sk_mid_dim(self.filters, self.sk_ratio), 1, 1,
                        'conv_1')
    fused = layers.batch_norm(fused, train, 'bn_1')
    mixing = layers.conv(fused, 2 * self.filters, 1, 1, 'conv_2')  # [N, 1, 1, 2f]
    mixing = jnp.stack(jnp.split(mixing, 2, axis=-1))  # [2, N, 1, 1, f]
    mixing = jax.nn.softmax(mixing.astype(jnp.float32), axis=0).astype(layers.dtype)
    return jnp.sum(streams * mixing, axis=0)


def _projection_shortcut(
  x: jax.Array, filters_out: int, strides: int, resnet_d: bool, train: bool, layers: LayerConfig
) -> jax.Array:
  """Projection shortcut; ResNet-D (avg-pool then 1x1) when SK is on (official blocks)."""
  if resnet_d:
    if strides > 1:
      x = fixed_padding(x, 2)  # pads (0, 1)
      x = nn.avg_pool(x, (2, 2), strides=(strides, strides), padding='VALID')
    else:
      # TF SAME average pooling excludes the padded cells from the mean.
      x = nn.avg_pool(x, (2, 2), strides=(1, 1), padding='SAME', count_include_pad=False)
    x = layers.conv(x, filters_out, 1, 1, 'shortcut_conv')
  else:
    x = layers.conv(x, filters_out, 1, strides, 'shortcut_conv')
  return layers.batch_norm(x, train, 'shortcut_bn', relu=False)


class BottleneckBlock(nn.Module):
  """1x1 f -> 3x3 f (or SK conv) stride s -> 1x1 4f, post-activation (official BottleneckBlock)."""

  filters: int
  strides: int
  use_projection: bool
  sk_ratio: float
  layers: LayerConfig

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    layers = self.layers
    shortcut = x
    if self.use_projection:
      shortcut = _projection_shortcut(
        x, 4 * self.filters, self.strides, self.sk_ratio > 0, train, layers
      )
    x = layers.conv(x, self.filters, 1, 1, 'conv_0')
    x = layers.batch_norm(x, train, 'bn_0')
    if self.sk_ratio > 0:
      x = SelectiveKernelConv(self.filters, self.strides, self.sk_ratio, layers, name='sk_conv')(
        x, train
      )
    else:
      x = layers.conv(x, self.filters, 3, self.strides, 'conv_1')
      x = layers.batch_norm(x, train, 'bn_1')
    x = layers.conv(x, 4 * self.filters, 1, 1, 'conv_2')
    x = layers.batch_norm(x, train, 'bn_2', relu=False, zero_init=True)
    return nn.relu(x + shortcut)


class BasicBlock(nn.Module):
  """3x3 f stride s -> 3x3 f, post-activation (official ResidualBlock; never uses SK conv)."""

  filters: int
  strides: int
  use_projection: bool
  sk_ratio: float
  layers: LayerConfig

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    layers = self.layers
    shortcut = x
    if self.use_projection:
      # TF2 semantics: ResNet-D shortcut when SK (TF1's basic-block ResNet-D path is broken).
      shortcut = _projection_shortcut(x, self.filters, self.strides, self.sk_ratio > 0, train,
                                      layers)
    x = layers.conv(x, self.filters, 3, self.strides, 'conv_0')
    x = layers.batch_norm(x, train, 'bn_0')
    x = layers.conv(x, self.filters, 3, 1, 'conv_1')
    x = layers.batch_norm(x, train, 'bn_1', relu=False, zero_init=True)
    return nn.relu(x + shortcut)


class Stem(nn.Module):
  """Returns (initial_conv before BN, initial_max_pool) as in the official Resnet stem."""

  width: int  # int(64 * width_multiplier)
  half_width: int  # official `64 * width_multiplier // 2`, for the SK deep stem
  sk: bool
  cifar_stem: bool
  layers: LayerConfig

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> tuple[jax.Array, jax.Array]:
    layers = self.layers
    if self.cifar_stem:
      initial_conv = layers.conv(x, self.width, 3, 1, 'conv_0')
      return initial_conv, layers.batch_norm(initial_conv, train, 'bn_0')  # no max-pool
    if self.sk:
      # ResNet-D deep stem.
      x = layers.conv(x, self.half_width, 3, 2, 'conv_0')
      x = layers.batch_norm(x, train, 'bn_0')
      x = layers.conv(x, self.half_width, 3, 1, 'conv_1')
      x = layers.batch_norm(x, train, 'bn_1')
      initial_conv = layers.conv(x, self.width, 3, 1, 'conv_2')
      x = layers.batch_norm(initial_conv, train, 'bn_2')
    else:
      initial_conv = layers.conv(x, self.width, 7, 2, 'conv_0')
      x = layers.batch_norm(initial_conv, train, 'bn_0')
    # flax SAME max-pool pads with -inf exactly like TF SAME.
    return initial_conv, nn.max_pool(x, (3, 3), strides=(2, 2), padding='SAME')


class Stage(nn.Module):
  """One official `block_group`: first block strided with a projection shortcut."""

  block_cls: Any
  num_blocks: int
  filters: int
  strides: int
  sk_ratio: float
  layers: LayerConfig

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    for b in range(self.num_blocks):
      x = self.block_cls(
        filters=self.filters,
        strides=self.strides if b == 0 else 1,
        use_projection=b == 0,
        sk_ratio=self.sk_ratio,
        layers=self.layers,
        name=f'block_{b}',
      )(x, train)
    return x


class ResNet(nn.Module):
  """Official SimCLR ResNet: NHWC images in [0, 1] -> pooled float32 features [N, C]."""

  depth: int
  width_multiplier: float = 1
  sk_ratio: float = 0.0
  cifar_stem: bool = False
  blocks_per_stage: Sequence[int] | None = None
  block_type: str | None = None
  dtype: Any = jnp.float32
  bn_axis_name: str | None = None
  bn_momentum: float = 0.9
  bn_epsilon: float = 1e-5
  remat: bool = False

  def __post_init__(self) -> None:
    self.architecture()  # fail at construction, with one line naming the field
    super().__post_init__()

  def architecture(self) -> tuple[str, tuple[int, ...]]:
    """(block type, blocks per stage) after validating the configuration."""
    if not self.width_multiplier > 0:
      raise ValueError(f'model.width_multiplier={self.width_multiplier} must be > 0')
    if self.sk_ratio < 0:
      raise ValueError(f'model.sk_ratio={self.sk_ratio} must be >= 0 (0.0625 for SimCLRv2 SK)')
    if self.block_type is not None and self.block_type not in _BLOCK_TYPES:
      raise ValueError(f"model.block_type={self.block_type!r} must be 'basic' or 'bottleneck'")
    if self.blocks_per_stage is None:
      blocks = blocks_for_depth(self.depth)
      block_type = self.block_type or block_type_for_depth(self.depth)
    else:
      blocks = tuple(int(n) for n in self.blocks_per_stage)
      if len(blocks) != 4 or min(blocks) < 1:
        raise ValueError(
          f'model.blocks_per_stage={list(self.blocks_per_stage)} must be 4 positive ints'
        )
      if self.block_type is None and self.depth not in _BLOCKS_FOR_DEPTH:
        raise ValueError(
          f"model.block_type is needed with model.blocks_per_stage when model.depth={self.depth} "
          "is not in the depth table; use 'basic' or 'bottleneck'"
        )
      block_type = self.block_type or block_type_for_depth(self.depth)
    return block_type, blocks

  @property
  def num_features(self) -> int:
    """Width of the pooled output: 512w (basic) or 2048w (bottleneck)."""
    block_type, _ = self.architecture()
    expansion = 4 if block_type == 'bottleneck' else 1
    return int(512 * self.width_multiplier) * expansion

  @nn.compact
  def __call__(self, images: jax.Array, train: bool) -> jax.Array:
    block_type, blocks = self.architecture()
    layers = LayerConfig(self.dtype, self.bn_axis_name, self.bn_momentum, self.bn_epsilon)
    sk = self.sk_ratio > 0
    w = self.width_multiplier
    block_cls = BottleneckBlock if block_type == 'bottleneck' else BasicBlock
    if self.remat:
      # static_argnums counts `self` as 0: `train` is argument 2.
      block_cls = nn.remat(block_cls, static_argnums=(2,))

    x = images.astype(self.dtype)
    initial_conv, x = Stem(int(64 * w), int(64 * w // 2), sk, self.cifar_stem, layers,
                           name='stem')(x, train)
    self.sow('intermediates', 'initial_conv', initial_conv)
    self.sow('intermediates', 'initial_max_pool', x)
    for g, num_blocks in enumerate(blocks):
      # Official filters 64w, 128w, 256w, 512w (Keras truncates float filters with int()).
      x = Stage(block_cls, num_blocks, int(64 * 2**g * w), 1 if g == 0 else 2, self.sk_ratio,
                layers, name=f'stage{g + 1}')(x, train)
      self.sow('intermediates', f'block_group{g + 1}', x)
    features = jnp.mean(x.astype(jnp.float32), axis=(1, 2))
    self.sow('intermediates', 'final_avg_pool', features)
    return features


def count_params(model: nn.Module, image_size: int = 224) -> tuple[int, int]:
  """(trainable params, params + batch_stats) via `jax.eval_shape` (nothing is allocated)."""
  images = jax.ShapeDtypeStruct((1, image_size, image_size, 3), jnp.float32)
  variables = jax.eval_shape(lambda x: model.init(jax.random.key(0), x, train=False), images)
  sizes = lambda tree: sum(int(np.prod(leaf.shape)) for leaf in jax.tree.leaves(tree))
  trainable = sizes(variables['params'])
  return trainable, trainable + sizes(variables.get('batch_stats', {}))
