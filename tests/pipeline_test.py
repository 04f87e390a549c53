"""Tests for simclr_jax/data/pipeline.py: batch structure, determinism, resume, eval padding."""

import itertools

import numpy as np
import pytest
import tensorflow as tf

from simclr_jax.data import augment, pipeline


def _source(num_examples: int = 10, size: int = 20) -> tf.data.Dataset:
  """Distinct random images; label = index so batches reveal which examples they hold."""
  images = np.random.default_rng(0).integers(0, 256, (num_examples, size, size, 3), np.uint8)
  return tf.data.Dataset.from_tensor_slices({
    'image': images,
    'label': np.arange(num_examples, dtype=np.int32),
    'index': np.arange(num_examples, dtype=np.int64),
  })


def _pretrain(source=None, **overrides) -> tf.data.Dataset:
  kwargs = dict(
    seed=0, host_batch_size=4, image_size=32, color_jitter_strength=0.5, use_blur=True,
    num_local_devices=2, shuffle_buffer=16,
  )
  kwargs.update(overrides)
  return pipeline.make_pretrain_dataset(_source() if source is None else source, **kwargs)


def _take(dataset: tf.data.Dataset, num: int) -> list[dict]:
  return list(itertools.islice(pipeline.iterate_numpy(dataset), num))


def _assert_same_batches(first: list[dict], second: list[dict]) -> None:
  assert len(first) == len(second)
  for a, b in zip(first, second):
    assert a.keys() == b.keys()
    for key in a:
      np.testing.assert_array_equal(a[key], b[key])


def test_pretrain_batches_shapes_dtypes_range_and_infinite():
  batches = _take(_pretrain(), 7)  # 28 examples from a 10-example source: it repeats.
  assert len(batches) == 7
  for batch in batches:
    assert set(batch) == {'view_a', 'view_b', 'label'}
    for key in ('view_a', 'view_b'):
      assert batch[key].shape == (4, 32, 32, 3) and batch[key].dtype == np.float32
      assert batch[key].min() >= 0.0 and batch[key].max() <= 1.0
    assert batch['label'].shape == (4,) and batch['label'].dtype == np.int32
    assert not np.allclose(batch['view_a'], batch['view_b'])  # Two independent views.


def test_pretrain_stream_is_a_function_of_the_seed():
  _assert_same_batches(_take(_pretrain(seed=3), 6), _take(_pretrain(seed=3), 6))
  first, other = _take(_pretrain(seed=3), 2), _take(_pretrain(seed=4), 2)
  assert not np.array_equal(first[0]['view_a'], other[0]['view_a'])


def test_each_epoch_is_a_fresh_permutation():
  labels = np.concatenate([b['label'] for b in _take(_pretrain(_source(8)), 6)]).reshape(3, 8)
  for epoch in labels:
    assert sorted(epoch) == list(range(8))
  assert not np.array_equal(labels[0], labels[1]) and not np.array_equal(labels[1], labels[2])


def test_views_depend_on_example_not_on_shuffle_order():
  """A view is a function of (seed, epoch, index): the shuffle order and batch do not matter."""
  common = dict(use_blur=False, host_batch_size=2)
  ordered = _take(_pretrain(_source(6), shuffle_buffer=1, **common), 3)  # No shuffling.
  shuffled = _take(_pretrain(_source(6), shuffle_buffer=6, **common), 3)
  by_label = {}
  for batch in ordered:
    for label, view in zip(batch['label'], batch['view_a']):
      by_label[int(label)] = view
  assert [int(x) for b in ordered for x in b['label']] == list(range(6))
  for batch in shuffled:
    for label, view in zip(batch['label'], batch['view_a']):
      np.testing.assert_array_equal(view, by_label[int(label)])


def test_resume_at_start_batch_continues_the_same_stream():
  full = _take(_pretrain(), 8)  # Crosses three epochs of 10 examples.
  _assert_same_batches(_take(_pretrain(start_batch=5), 3), full[5:])


def test_pretrain_views_are_the_augmentation_ops_with_per_example_seeds():
  """Without blur, view_a/view_b are augment.preprocess_for_train of uint8 / 255 with the two
  seeds split from (seed, epoch, index)."""
  source = _source(4)
  batch = _take(_pretrain(source, use_blur=False, shuffle_buffer=1, seed=5), 1)[0]
  assert batch['label'][0] == 0
  image = next(source.as_numpy_iterator())['image'].astype(np.float32) / 255.0
  seeds = pipeline._view_seeds(5, {'epoch': tf.constant(0, tf.int64), 'index': 0}, 2)
  for i, key in enumerate(('view_a', 'view_b')):
    expected = augment.preprocess_for_train(image, seeds[i], 32, 0.5).numpy()
    np.testing.assert_allclose(batch[key][0], expected, atol=1e-6)


def test_blur_is_applied_per_batch():
  no_blur = _take(_pretrain(use_blur=False, host_batch_size=8), 3)
  blurred = _take(_pretrain(use_blur=True, host_batch_size=8), 3)
  changed = sum(
    int(not np.array_equal(a, b))
    for x, y in zip(no_blur, blurred) for key in ('view_a', 'view_b')
    for a, b in zip(x[key], y[key])
  )
  assert 0 < changed < 48  # About half of the 48 views are blurred (p=0.5).


def test_batch_must_divide_over_local_devices():
  with pytest.raises(ValueError, match='not divisible by 3 local devices'):
    _pretrain(num_local_devices=3)


def test_finetune_batches_are_one_deterministic_view():
  def make(seed):
    return pipeline.make_finetune_dataset(
      _source(), seed=seed, host_batch_size=4, image_size=16, shuffle_buffer=10
    )

  batches = _take(make(1), 4)
  for batch in batches:
    assert set(batch) == {'image', 'label'}
    assert batch['image'].shape == (4, 16, 16, 3) and batch['image'].dtype == np.float32
  _assert_same_batches(batches, _take(make(1), 4))
  assert not np.array_equal(batches[0]['image'], _take(make(2), 1)[0]['image'])


def test_eval_batches_are_in_order_and_padded_with_a_mask():
  source = _source(10, size=40)
  batches = list(pipeline.iterate_numpy(
    pipeline.make_eval_dataset(source, batch_size=4, image_size=36)
  ))
  assert len(batches) == 3
  assert set(batches[0]) == {'image', 'label', 'index', 'mask'}
  for batch in batches:
    assert batch['image'].shape == (4, 36, 36, 3) and batch['mask'].dtype == np.float32
  mask = np.concatenate([b['mask'] for b in batches])
  np.testing.assert_array_equal(mask, [1] * 10 + [0] * 2)
  np.testing.assert_array_equal(np.concatenate([b['label'] for b in batches])[:10], range(10))
  assert not batches[-1]['image'][2:].any()
  images = [x['image'] for x in source.as_numpy_iterator()]
  expected = augment.preprocess_for_eval(images[9].astype(np.float32) / 255.0, 36).numpy()
  np.testing.assert_allclose(batches[2]['image'][1], expected, atol=1e-6)


def test_eval_pads_to_a_common_number_of_batches():
  dataset = pipeline.make_eval_dataset(_source(5), batch_size=4, image_size=20, num_batches=4)
  batches = list(pipeline.iterate_numpy(dataset))
  assert [float(b['mask'].sum()) for b in batches] == [4.0, 1.0, 0.0, 0.0]
  with pytest.raises(ValueError, match='num_batches=1'):
    pipeline.make_eval_dataset(_source(5), batch_size=4, image_size=20, num_batches=1)


def test_cache_gives_the_same_stream():
  _assert_same_batches(_take(_pretrain(cache=True), 5), _take(_pretrain(cache=False), 5))
