"""Tests for simclr_jax/data/resident.py: folder order as sources.py, data order, no TF."""

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from simclr_jax import sharding
from simclr_jax.data import resident


def test_demo_folder_loads_in_sources_order():
  split = resident.load_split('demo', 'test')
  assert split.images.dtype == np.uint8 and split.images.shape[1:] == (32, 32, 3)
  assert split.labels.dtype == np.int32 and len(split.class_names) == 10
  from simclr_jax.data import sources  # TF reference: same order, labels and pixels.

  source = sources.load('demo', 'test')
  examples = list(source.dataset.as_numpy_iterator())
  assert split.num_examples == source.num_examples == len(examples)
  np.testing.assert_array_equal(split.labels, [e['label'] for e in examples])
  np.testing.assert_array_equal(split.images, np.stack([e['image'] for e in examples]))
  assert split.class_names == source.class_names


def test_flat_folder_and_unequal_sizes(tmp_path):
  from PIL import Image

  for i, size in enumerate([(6, 6), (6, 6)]):
    Image.fromarray(np.full(size + (3,), i * 50, np.uint8)).save(tmp_path / f'{i}.png')
  split = resident.load_folder(str(tmp_path), 'train')
  np.testing.assert_array_equal(split.labels, [-1, -1])
  Image.fromarray(np.zeros((5, 6, 3), np.uint8)).save(tmp_path / '2.png')
  with pytest.raises(ValueError, match='equal image sizes'):
    resident.load_folder(str(tmp_path), 'train')


def test_batch_indices_cover_each_epoch_once_and_are_deterministic():
  num_examples, batch = 10, 4
  stream = np.concatenate([resident.batch_indices(3, s, batch, num_examples) for s in range(5)])
  for epoch in range(2):
    np.testing.assert_array_equal(np.sort(stream[epoch * 10:(epoch + 1) * 10]), np.arange(10))
    np.testing.assert_array_equal(stream[epoch * 10:(epoch + 1) * 10],
                                  resident.epoch_permutation(3, epoch, num_examples))
  assert not np.array_equal(stream[:10], stream[10:20])  # A new order each epoch.
  assert not np.array_equal(resident.batch_indices(4, 0, batch, num_examples), stream[:4])
  with pytest.raises(ValueError, match='two epochs'):
    resident.batch_indices(0, 0, 11, num_examples)


def test_put_on_mesh_replicates_canvases_and_sizes():
  mesh = sharding.make_mesh()
  split = resident.load_split('demo', 'test')
  on_device = resident.put_on_mesh(mesh, split)
  assert all(array.sharding.is_fully_replicated for array in on_device.values())
  np.testing.assert_array_equal(on_device['images'], split.images)  # 32 x 32: canvas = image.
  assert np.asarray(on_device['sizes']).tolist() == [[32, 32]] * split.num_examples
  wide = resident.HostSplit(np.ones((3, 4, 6, 3), np.uint8), np.zeros(3, np.int32), ())
  padded = resident.put_on_mesh(mesh, wide)
  assert padded['images'].shape == (3, 6, 6, 3)
  assert np.asarray(padded['sizes']).tolist() == [[4, 6]] * 3
  assert not np.asarray(padded['images'])[:, 4:].any()


_NO_TF_SCRIPT = textwrap.dedent("""
  import sys
  sys.modules['tensorflow'] = None  # Any `import tensorflow` now raises ImportError.
  sys.modules['tensorflow_datasets'] = None
  import jax
  import jax.numpy as jnp
  from simclr_jax.data import resident, views
  split = resident.load_split('demo', 'train')
  indices = resident.batch_indices(0, 3, 8, split.num_examples)
  images = jnp.take(jax.device_put(split.images), indices, axis=0)
  (a,) = views.train_views(jax.random.split(jax.random.key(0), 8), images,
                           jnp.full((8, 2), 32, jnp.int32), image_size=32, num_views=1)
  assert a.shape == (8, 32, 32, 3), a.shape
  assert not any(name.startswith('tensorflow') and sys.modules[name] is not None
                 for name in sys.modules)
  print('ok', split.num_examples)
""")


def test_device_path_runs_without_tensorflow():
  env = {**os.environ, 'JAX_PLATFORMS': 'cpu', 'XLA_FLAGS': ''}
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  result = subprocess.run([sys.executable, '-c', _NO_TF_SCRIPT], env=env, cwd=root,
                          capture_output=True, text=True, timeout=120)
  assert result.returncode == 0, result.stderr[-2000:]
  assert result.stdout.split() == ['ok', '1000']


def test_unreadable_images_are_left_out_as_by_the_host_sources(tmp_path):
  from PIL import Image

  from simclr_jax.data import sources

  for name in ('a', 'c'):
    Image.fromarray(np.full((6, 6, 3), 9, np.uint8)).save(tmp_path / f'{name}.png')
  (tmp_path / 'b.png').write_bytes(b'not a png')
  split = resident.load_folder(str(tmp_path), 'train')
  source = sources.load('folder', 'train', folder=str(tmp_path))
  assert split.num_examples == source.num_examples == 2
  assert source.skipped_paths == (str(tmp_path / 'b.png'),)
