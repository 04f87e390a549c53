"""Tests for simclr_jax/data/views.py: the device half of the one data path."""

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, PartitionSpec as P

from configs import demo as demo_lib
from simclr_jax.data import views

AXIS = 'data'


def _config(stage_blur: bool = False):
  config = demo_lib.get_config()
  config.data.image_size = 16
  config.data.use_blur = stage_blur
  return config


def _batch(count: int = 8) -> dict:
  rng = np.random.default_rng(0)
  return {
    'image': rng.integers(0, 256, (count, 24, 24, 3), dtype=np.uint8),
    'size': np.tile(np.int32([[20, 24]]), (count, 1)),
    'label': np.arange(count, dtype=np.int32),
    'index': np.arange(100, 100 + count, dtype=np.int32),
    'epoch': np.full(count, 3, np.int32),
  }


def _prepare_on(devices, stage: str, batch: dict, dataset=None):
  mesh = Mesh(np.asarray(devices), (AXIS,))
  prepare = views.make_prepare(_config(), stage, AXIS)
  run = jax.jit(jax.shard_map(lambda b, d: prepare(b, d, jnp.int32(7)), mesh=mesh,
                              in_specs=(P(AXIS), P()), out_specs=P(AXIS), check_vma=False))
  return jax.device_get(run(batch, dataset))


def test_a_view_depends_on_the_example_not_on_its_device_or_position():
  batch = _batch()
  on_eight = _prepare_on(jax.devices()[:8], 'finetune', batch)['image']
  on_one = _prepare_on(jax.devices()[:1], 'finetune', batch)['image']
  np.testing.assert_array_equal(on_eight, on_one)
  reversed_batch = {k: v[::-1] for k, v in batch.items()}
  np.testing.assert_array_equal(_prepare_on(jax.devices()[:1], 'finetune', reversed_batch)['image'],
                                on_one[::-1])
  later = dict(batch, epoch=batch['epoch'] + 1)  # Another epoch: other views.
  assert not np.allclose(_prepare_on(jax.devices()[:1], 'finetune', later)['image'], on_one)


def test_resident_canvases_give_the_views_the_host_canvases_give():
  batch = _batch()
  dataset = {'images': np.zeros((200, 24, 24, 3), np.uint8), 'sizes': np.zeros((200, 2), np.int32)}
  dataset['images'][100:108], dataset['sizes'][100:108] = batch['image'], batch['size']
  resident = {k: batch[k] for k in ('label', 'index', 'epoch')}
  two = jax.devices()[:2]
  np.testing.assert_array_equal(_prepare_on(two, 'finetune', resident, dataset)['image'],
                                _prepare_on(two, 'finetune', batch)['image'])
