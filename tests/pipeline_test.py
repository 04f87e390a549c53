"""Tests for simclr_jax/data/pipeline.py: canvas batches, determinism, resume, eval padding."""

import functools
import itertools
import os
import tempfile

import jax
import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

import official_augment
from configs import demo as demo_lib
from simclr_jax.data import pipeline, sources, views


def _images(num_examples: int = 10, size: int = 20) -> np.ndarray:
  return np.random.default_rng(0).integers(0, 256, (num_examples, size, size, 3), np.uint8)


@functools.cache
def _source(num_examples: int = 10, size: int = 20) -> sources.Source:
  """Distinct random PNGs, one class folder each: label = index, so batches reveal which
  examples they hold."""
  root = tempfile.mkdtemp(prefix='pipeline_test_')
  for i, image in enumerate(_images(num_examples, size)):
    os.makedirs(os.path.join(root, 'train', f'c{i:03d}'))
    Image.fromarray(image).save(os.path.join(root, 'train', f'c{i:03d}', 'x.png'))
  return sources.from_folder(root, 'train')


def _train(source=None, **overrides) -> tf.data.Dataset:
  kwargs = dict(seed=0, host_batch_size=4, canvas_size=24, shuffle_buffer=16)
  kwargs.update(overrides)
  return pipeline.make_train_dataset(_source() if source is None else source, **kwargs)


def _take(dataset: tf.data.Dataset, num: int) -> list[dict]:
  return list(itertools.islice(pipeline.iterate_numpy(dataset), num))


def _assert_same_batches(first: list[dict], second: list[dict]) -> None:
  assert len(first) == len(second)
  for a, b in zip(first, second):
    assert a.keys() == b.keys()
    for key in a:
      np.testing.assert_array_equal(a[key], b[key])


def test_train_batches_are_canvases_with_sizes_indices_and_epochs():
  batches = _take(_train(), 7)  # 28 examples from a 10-example source: it repeats.
  images = dict(enumerate(_images()))
  for batch in batches:
    assert set(batch) == {'image', 'size', 'label', 'index', 'epoch'}
    assert batch['image'].shape == (4, 24, 24, 3) and batch['image'].dtype == np.uint8
    assert batch['size'].tolist() == [[20, 20]] * 4 and batch['index'].dtype == np.int32
    for canvas, index in zip(batch['image'], batch['index']):
      np.testing.assert_array_equal(canvas[:20, :20], images[int(index)])  # Top left, unscaled.
      assert not canvas[20:].any() and not canvas[:, 20:].any()  # Zero padding.
  epochs = np.concatenate([b['epoch'] for b in batches])
  assert epochs.tolist() == [0] * 10 + [1] * 10 + [2] * 8


def test_larger_images_shrink_to_fit_the_canvas_keeping_their_aspect():
  image = tf.constant(np.random.default_rng(3).integers(0, 256, (30, 60, 3), np.uint8))
  canvas, size = pipeline.to_canvas(image, 24)
  assert size.numpy().tolist() == [12, 24] and canvas.shape == (24, 24, 3)
  expected = tf.image.resize(image, [12, 24], 'bilinear', antialias=True)
  np.testing.assert_array_equal(canvas[:12].numpy(), np.round(expected.numpy()).astype(np.uint8))
  assert not canvas[12:].numpy().any()


def test_train_stream_is_a_function_of_the_seed():
  _assert_same_batches(_take(_train(seed=3), 6), _take(_train(seed=3), 6))
  first, other = _take(_train(seed=3), 3), _take(_train(seed=4), 3)
  assert [b['index'].tolist() for b in first] != [b['index'].tolist() for b in other]


def test_each_epoch_is_a_fresh_permutation():
  labels = np.concatenate([b['label'] for b in _take(_train(_source(8)), 6)]).reshape(3, 8)
  for epoch in labels:
    assert sorted(epoch) == list(range(8))
  assert not np.array_equal(labels[0], labels[1]) and not np.array_equal(labels[1], labels[2])


def test_resume_at_start_batch_continues_the_same_stream():
  full = _take(_train(), 8)  # Crosses three epochs of 10 examples.
  _assert_same_batches(_take(_train(start_batch=5), 3), full[5:])


def test_cache_gives_the_same_stream():
  _assert_same_batches(_take(_train(cache=True), 5), _take(_train(cache=False), 5))


def test_eval_batches_are_canvases_in_order_padded_with_a_mask():
  batches = list(pipeline.iterate_numpy(
    pipeline.make_eval_dataset(_source(10, size=40), batch_size=4, canvas_size=48)
  ))
  assert len(batches) == 3
  assert set(batches[0]) == {'image', 'size', 'label', 'index', 'mask'}
  for batch in batches:
    assert batch['image'].shape == (4, 48, 48, 3) and batch['image'].dtype == np.uint8
    assert batch['mask'].dtype == np.float32
  mask = np.concatenate([b['mask'] for b in batches])
  np.testing.assert_array_equal(mask, [1] * 10 + [0] * 2)
  np.testing.assert_array_equal(np.concatenate([b['label'] for b in batches])[:10], range(10))
  assert not batches[-1]['image'][2:].any() and not batches[-1]['size'][2:].any()
  # The eval view the device builds is the official one of the original image.
  images = _images(10, size=40)
  config = demo_lib.get_config()
  config.data.image_size = 36
  view = np.asarray(jax.jit(views.make_eval_view(config))(batches[2]))
  expected = official_augment.preprocess_for_eval(images[9].astype(np.float32) / 255.0, 36).numpy()
  np.testing.assert_allclose(view[1], expected, atol=2e-3)


def test_eval_pads_to_a_common_number_of_batches():
  dataset = pipeline.make_eval_dataset(_source(5), batch_size=4, canvas_size=20, num_batches=4)
  batches = list(pipeline.iterate_numpy(dataset))
  assert [float(b['mask'].sum()) for b in batches] == [4.0, 1.0, 0.0, 0.0]
  with pytest.raises(ValueError, match='num_batches=1'):
    pipeline.make_eval_dataset(_source(5), batch_size=4, canvas_size=20, num_batches=1)


def test_a_class_sorted_folder_is_fully_permuted_whatever_the_shuffle_buffer():
  """Folders list classes in order: a small shuffle buffer would give single-class batches."""
  source = _source(40)  # One class folder per image, listed in index order.
  stream = list(source.epochs(seed=0, shuffle_buffer=2).take(40).as_numpy_iterator())
  indices = [int(x['index']) for x in stream]
  assert sorted(indices) == list(range(40))
  rank_correlation = np.corrcoef(indices, np.arange(40))[0, 1]
  assert abs(rank_correlation) < 0.5, rank_correlation  # A buffer of 2 gives about 0.99.
  assert max(indices[:10]) >= 20  # The first examples reach the far end of the listing.
  # The buffer holding the whole share holds split indices only, not paths (ImageNet's file
  # count in one folder: peak RSS 2.46 GB instead of 2.67 GB, docs/BENCHMARKS.md).
  assert source.items().element_spec == {'index': tf.TensorSpec([], tf.int64)}
