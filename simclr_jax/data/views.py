"""The device half of the one data path: a batch of canvases -> the stage's views.

The host (pipeline.py) only decodes each image onto a fixed uint8 canvas; every random
augmentation runs here, inside the jitted step, per device (`prepare` is called in `shard_map`):

    batch {'image': uint8 [b, C, C, 3], 'size': int32 [b, 2], 'label', 'index', 'epoch'}
      (or, device-resident, {'label', 'index', 'epoch'} and the canvases gathered from the
       split on the device)
    -> pretrain: {'view_a', 'view_b': float32 [b, S, S, 3], 'label'}  (crop, flip, colour, blur)
    -> others:   {'image': float32 [b, S, S, 3], 'label'}             (crop, flip)

Eval batches ({'image': uint8 canvases, 'size', 'label', 'index', 'mask'}) get the official
deterministic eval view (`make_eval_view`) inside the eval and feature steps the same way.

Keys: example i's views come from (seed, 'augment', epoch, split index of i), so a view depends
on neither the device nor the batch it lands in, nor on how many hosts there are. The official
per-replica blur draws its sigma from (seed, 'blur', step, device, view).
"""

from typing import Callable

import jax
import jax.numpy as jnp
import ml_collections

from simclr_jax.data import device_augment

AUGMENT_PURPOSE, BLUR_PURPOSE = 2, 3  # Folded into the root key (shuffling is 1, sources.py).


def example_keys(seed: int, epochs: jax.Array, indices: jax.Array) -> jax.Array:
  """[b] keys of examples (epoch, split index), from (seed, 'augment')."""
  root = jax.random.fold_in(jax.random.key(seed), AUGMENT_PURPOSE)
  return jax.vmap(lambda e, i: jax.random.fold_in(jax.random.fold_in(root, e), i))(epochs, indices)


def train_views(
  keys: jax.Array, canvases: jax.Array, sizes: jax.Array, *, image_size: int, num_views: int,
  color_jitter_strength: float = 0.0, blur: str = '', blur_key: jax.Array | None = None,
) -> list[jax.Array]:
  """`num_views` independent views (float32 [b, S, S, 3] each) of one device's canvases.

  blur: '' (none), 'batch' (official: one sigma per view of this device's batch, from
  `blur_key`) or 'image' (one sigma per image).
  """
  per_view = jax.vmap(lambda k: jax.random.split(k, num_views), out_axes=1)(keys)  # [V, b]

  def one_view(view_keys: jax.Array, v: jax.Array) -> jax.Array:
    view = jax.vmap(lambda k, x, s: device_augment.train_view(
      k, x, s, image_size, color_jitter_strength, blur_per_image=blur == 'image'))(
        view_keys, canvases, sizes)
    if blur == 'batch':
      view = device_augment.batch_random_blur(jax.random.fold_in(blur_key, v), view)
    return view

  # vmap over the views: one copy of the augmentation graph, half the compile time.
  views = jax.vmap(one_view)(per_view, jnp.arange(num_views))
  return [views[v] for v in range(num_views)]


def make_prepare(config: ml_collections.ConfigDict, views: str, axis_name: str) -> Callable:
  """prepare(batch, resident, step) for the train step, per device (inside shard_map).

  views: 'simclr' (two SimCLR views) or 'crop_flip' (one view), as `stages.Stage.views`.
  `resident` is the device-resident split ({'images': canvases, 'sizes'}) or None (the host sent
  the canvases).
  """
  data = config.data

  def prepare(batch: dict, resident: dict | None, step: jax.Array) -> dict:
    if resident is not None:
      canvases = jnp.take(resident['images'], batch['index'], axis=0)
      sizes = jnp.take(resident['sizes'], batch['index'], axis=0)
    else:
      canvases, sizes = batch['image'], batch['size']
    keys = example_keys(config.seed, batch['epoch'], batch['index'])
    if views != 'simclr':
      (image,) = train_views(keys, canvases, sizes, image_size=data.image_size, num_views=1)
      return {'image': image, 'label': batch['label']}
    blur_key = jax.random.fold_in(jax.random.key(config.seed), BLUR_PURPOSE)
    blur_key = jax.random.fold_in(jax.random.fold_in(blur_key, step), jax.lax.axis_index(axis_name))
    view_a, view_b = train_views(
      keys, canvases, sizes, image_size=data.image_size, num_views=2,
      color_jitter_strength=data.color_jitter_strength,
      blur=data.blur_mode if data.use_blur else '', blur_key=blur_key)
    return {'view_a': view_a, 'view_b': view_b, 'label': batch['label']}

  return prepare


def make_eval_view(config: ml_collections.ConfigDict) -> Callable[[dict], jax.Array]:
  """view(batch) -> float32 [b, S, S, 3]: the eval view of every canvas of an eval batch."""
  image_size, crop_proportion = config.data.image_size, config.data.eval_crop_proportion

  def view(batch: dict) -> jax.Array:
    return jax.vmap(lambda canvas, size: device_augment.eval_view(
      canvas, size, image_size, crop_proportion))(batch['image'], batch['size'])

  return view
