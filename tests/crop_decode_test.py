"""Tests for crop-window decoding of encoded images (augment.decode_crop / encoded_train_views,
undecoded sources, the pipelines on 'encoded' examples) and pipeline.make_raw_dataset."""

import io
import itertools
import os

import jax
import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds
from PIL import Image

from simclr_jax.data import augment, pipeline, sources

SIZES = ((37, 53), (120, 91), (64, 64))


def _photo(height: int, width: int, seed: int = 0) -> np.ndarray:
  """A smooth random RGB image (upsampled noise), JPEG-friendly like a photo."""
  noise = np.random.default_rng(seed).integers(0, 256, (8, 8, 3), np.uint8)
  return np.asarray(Image.fromarray(noise).resize((width, height), Image.BICUBIC))


def _encode(image: np.ndarray, fmt: str = 'JPEG', mode: str = 'RGB', **options) -> bytes:
  buffer = io.BytesIO()
  Image.fromarray(image).convert(mode).save(buffer, fmt, **options)
  return buffer.getvalue()


def _boxes(height: int, width: int, num: int) -> list[tuple[int, int, int, int]]:
  rng = np.random.default_rng(height * width)
  boxes = []
  for _ in range(num):
    y, x = int(rng.integers(0, height // 2)), int(rng.integers(0, width // 2))
    boxes.append((y, x, int(rng.integers(1, height - y + 1)), int(rng.integers(1, width - x + 1))))
  return boxes


def _decode(encoded: bytes) -> np.ndarray:
  return tf.io.decode_image(encoded, channels=3, expand_animations=False).numpy()


@pytest.mark.parametrize('mode, options', [
  ('RGB', {'subsampling': 0}), ('L', {}), ('CMYK', {}),
  ('RGB', {'subsampling': 0, 'progressive': True}),
])
def test_decode_crop_is_bit_identical_to_decode_then_slice(mode, options):
  """Baseline 4:4:4, grayscale, CMYK and progressive JPEGs: every pixel of every window equal."""
  for height, width in SIZES:
    encoded = _encode(_photo(height, width), mode=mode, quality=90, **options)
    full = _decode(encoded)
    for box in _boxes(height, width, 10):
      window, shape = augment.decode_crop(tf.constant(encoded), lambda _, b=box: tf.constant(b))
      y, x, h, w = box
      np.testing.assert_array_equal(window.numpy(), full[y:y + h, x:x + w])
      assert tuple(shape.numpy()[:2]) == (height, width)


def test_decode_crop_of_chroma_subsampled_jpeg_differs_at_most_in_the_edge_columns():
  """4:2:0 JPEG: libjpeg-turbo upsamples chroma at the window's edges from inside the window."""
  for height, width in SIZES:
    encoded = _encode(_photo(height, width), quality=90)  # Pillow default: 4:2:0.
    full = _decode(encoded).astype(int)
    for y, x, h, w in _boxes(height, width, 10):
      window, _ = augment.decode_crop(tf.constant(encoded), lambda _: tf.constant([y, x, h, w]))
      difference = np.abs(window.numpy().astype(int) - full[y:y + h, x:x + w])
      assert not difference[:, 1:-1].any()
      assert difference.max() <= 32


def test_png_falls_back_to_decode_and_slice():
  image = _photo(30, 41)
  window, shape = augment.decode_crop(tf.constant(_encode(image, 'PNG')),
                                      lambda _: tf.constant([3, 5, 20, 30]))
  np.testing.assert_array_equal(window.numpy(), image[3:23, 5:35])
  assert list(shape.numpy()) == [30, 41, 3]


def test_crop_box_ignores_the_channel_count_of_the_header():
  """extract_jpeg_shape gives 1 (gray) or 4 (CMYK) channels: the box must not depend on it."""
  seeds = tf.random.experimental.stateless_split(tf.constant([1, 2], tf.int64), 200)
  for channels in (1, 4):
    for seed in seeds[:200]:
      np.testing.assert_array_equal(
        augment.distorted_crop_box(tf.constant([120, 91, channels]), seed).numpy(),
        augment.distorted_crop_box(tf.constant([120, 91, 3]), seed).numpy())


@pytest.mark.parametrize('fmt, mode, options', [
  ('JPEG', 'RGB', {'subsampling': 0}), ('JPEG', 'L', {}), ('PNG', 'RGB', {}),
])
def test_encoded_views_equal_decoded_views(fmt, mode, options):
  """Same seeds, same views: the crop boxes come from the encoded shape with the same seeds."""
  seeds = tf.random.experimental.stateless_split(tf.constant([7, 8], tf.int64), 12)
  for height, width in SIZES:
    encoded = _encode(_photo(height, width), fmt, mode, quality=90, **options)
    image = _decode(encoded).astype(np.float32) / 255.0
    for pair in (seeds[0:2], seeds[2:4], seeds[4:6]):
      views = augment.encoded_train_views(tf.constant(encoded), pair, 24, 1.0)
      for i, view in enumerate(views):
        expected = augment.preprocess_for_train(image, pair[i], 24, 1.0)
        np.testing.assert_allclose(view.numpy(), expected.numpy(), atol=1e-6)


def test_encoded_views_of_subsampled_jpeg_are_close():
  encoded = _encode(_photo(120, 91), quality=90)
  image = _decode(encoded).astype(np.float32) / 255.0
  seeds = tf.random.experimental.stateless_split(tf.constant([3, 4], tf.int64), 8)
  for i, view in enumerate(augment.encoded_train_views(tf.constant(encoded), seeds, 32, 0.0)):
    expected = augment.preprocess_for_train(image, seeds[i], 32, 0.0).numpy()
    assert np.abs(view.numpy() - expected).mean() < 2e-3


# ----------------------------------------------------------------------------- sources, pipelines


@pytest.fixture(scope='module')
def jpeg_folder(tmp_path_factory):
  """root/train/{a,b}/ with 4:4:4 RGB and grayscale JPEGs of a few sizes, and one PNG."""
  root = tmp_path_factory.mktemp('jpegs')
  for i in range(8):
    height, width = SIZES[i % len(SIZES)]
    folder = root / 'train' / 'ab'[i % 2]
    os.makedirs(folder, exist_ok=True)
    mode = 'L' if i == 3 else 'RGB'
    (folder / f'{i}.jpg').write_bytes(_encode(_photo(height, width, i), mode=mode, quality=90,
                                              subsampling=0))
  (root / 'train' / 'a' / 'z.png').write_bytes(_encode(_photo(40, 30, 9), 'PNG'))
  return str(root)


def _take(dataset: tf.data.Dataset, num: int) -> list[dict]:
  return list(itertools.islice(pipeline.iterate_numpy(dataset), num))


def _assert_same(first: list[dict], second: list[dict], atol: float = 1e-6) -> None:
  for a, b in zip(first, second, strict=True):
    assert a.keys() == b.keys()
    for key in a:
      np.testing.assert_allclose(a[key], b[key], atol=atol)


def test_undecoded_folder_source_reads_file_bytes(jpeg_folder):
  decoded = sources.load('folder', 'train', folder=jpeg_folder)
  encoded = sources.load('folder', 'train', folder=jpeg_folder, decode=False)
  assert set(encoded.dataset.element_spec) == {'encoded', 'label', 'index'}
  assert encoded.num_examples == decoded.num_examples == 9
  assert not encoded.decode_errors_possible
  for x, y in zip(encoded.dataset.as_numpy_iterator(), decoded.dataset.as_numpy_iterator()):
    assert (x['label'], x['index']) == (y['label'], y['index'])
    np.testing.assert_array_equal(_decode(x['encoded']), y['image'])


def test_pipelines_on_encoded_folder_equal_the_decoded_pipelines(jpeg_folder):
  decoded = sources.load('folder', 'train', folder=jpeg_folder).dataset
  encoded = sources.load('folder', 'train', folder=jpeg_folder, decode=False).dataset
  common = dict(seed=3, host_batch_size=4, image_size=24, shuffle_buffer=9)
  pretrain = dict(color_jitter_strength=1.0, use_blur=True, num_local_devices=2, **common)
  _assert_same(_take(pipeline.make_pretrain_dataset(decoded, **pretrain), 3),
               _take(pipeline.make_pretrain_dataset(encoded, **pretrain), 3))
  _assert_same(_take(pipeline.make_finetune_dataset(decoded, **common), 3),
               _take(pipeline.make_finetune_dataset(encoded, **common), 3))
  for image_size in (24, 40):  # No eval crop at <= 32 px, centre crop above.
    evaluate = dict(batch_size=4, image_size=image_size)
    _assert_same(list(pipeline.iterate_numpy(pipeline.make_eval_dataset(decoded, **evaluate))),
                 list(pipeline.iterate_numpy(pipeline.make_eval_dataset(encoded, **evaluate))))


def test_undecoded_tfds_cifar10_with_mock_data():
  with tfds.testing.mock_data(num_examples=8):  # Mock examples are PNG-encoded, as stored.
    decoded = sources.load('cifar10', 'train')
    encoded = sources.load('cifar10', 'train', decode=False)
    assert set(encoded.dataset.element_spec) == {'encoded', 'label', 'index'}
    assert encoded.dataset.element_spec['encoded'].dtype == tf.string
    common = dict(seed=1, host_batch_size=4, shuffle_buffer=8)
    for make, size in ((pipeline.make_finetune_dataset, 'image_size'),
                       (pipeline.make_raw_dataset, 'raw_size')):
      _assert_same(_take(make(decoded.dataset, **{size: 32}, **common), 2),
                   _take(make(encoded.dataset, **{size: 32}, **common), 2))


def test_corrupt_undecoded_files_are_skipped_when_checked_by_headers_only(tmp_path):
  for i in range(3):
    (tmp_path / f'{i}.jpg').write_bytes(_encode(_photo(20, 20, i), quality=90))
  truncated = _encode(_photo(64, 64, 5), quality=90)
  (tmp_path / '3.jpg').write_bytes(truncated[:len(truncated) // 2])
  source = sources.from_folder(str(tmp_path), 'train', full_check_max_bytes=0, decode=False)
  assert source.num_examples == 4 and source.decode_errors_possible
  dataset = pipeline.make_finetune_dataset(
    source.dataset, seed=0, host_batch_size=3, image_size=16, shuffle_buffer=1, num_epochs=1,
    ignore_decode_errors=True)
  assert [sorted(b['label']) for b in pipeline.iterate_numpy(dataset)] == [[-1, -1, -1]]


# ----------------------------------------------------------------------------- raw batches


def _raw(source: tf.data.Dataset, **overrides) -> tf.data.Dataset:
  kwargs = dict(seed=0, host_batch_size=4, raw_size=32, shuffle_buffer=10)
  return pipeline.make_raw_dataset(source, **{**kwargs, **overrides})


def _image_source(images: list[np.ndarray]) -> tf.data.Dataset:
  return tf.data.Dataset.from_generator(
    lambda: ({'image': x, 'label': np.int32(i), 'index': np.int64(i)} for i, x in
             enumerate(images)),
    output_signature={'image': tf.TensorSpec([None, None, 3], tf.uint8),
                      'label': tf.TensorSpec([], tf.int32), 'index': tf.TensorSpec([], tf.int64)},
  ).apply(tf.data.experimental.assert_cardinality(len(images)))


def test_raw_batches_shapes_determinism_and_resume():
  images = [_photo(32, 32, i) for i in range(10)]
  batches = _take(_raw(_image_source(images)), 6)  # 24 examples of 10: crosses epochs.
  for batch in batches:
    assert set(batch) == {'image', 'label', 'index'}
    assert batch['image'].shape == (4, 32, 32, 3) and batch['image'].dtype == np.uint8
    assert batch['label'].dtype == np.int32 and batch['index'].dtype == np.int32
    for image, index in zip(batch['image'], batch['index']):
      np.testing.assert_array_equal(image, images[index])  # Exactly raw_size: unchanged.
  first_epoch = np.concatenate([b['index'] for b in batches])[:10]
  assert sorted(first_epoch) == list(range(10)) and list(first_epoch) != list(range(10))
  _assert_same(batches, _take(_raw(_image_source(images)), 6), atol=0)
  _assert_same(batches[4:], _take(_raw(_image_source(images), start_batch=4), 2), atol=0)
  other_seed = _take(_raw(_image_source(images), seed=1), 1)[0]['index']
  assert list(other_seed) != list(batches[0]['index'])


def test_raw_size_is_centre_square_then_antialiased_bilinear_resize(jpeg_folder):
  images = [_photo(50, 70, 0), _photo(90, 40, 1), _photo(16, 24, 2), _photo(32, 45, 3)]
  batch = _take(_raw(_image_source(images), shuffle_buffer=1), 1)[0]
  for image, raw in zip(images, batch['image']):
    height, width = image.shape[:2]
    side = min(height, width)
    y, x = (height - side + 1) // 2, (width - side + 1) // 2
    square = image[y:y + side, x:x + side].astype(np.float32)
    # Independent reference: JAX's antialiased (triangle-kernel) bilinear resize.
    expected = jax.image.resize(square, (32, 32, 3), 'bilinear', antialias=True)
    assert np.abs(raw.astype(int) - np.round(np.asarray(expected))).max() <= 1
  np.testing.assert_array_equal(batch['image'][3], images[3][:, 7:39])  # Shorter side = 32.
  # Encoded JPEGs decode only the centre square; same result as decoded images.
  decoded = sources.load('folder', 'train', folder=jpeg_folder).dataset
  encoded = sources.load('folder', 'train', folder=jpeg_folder, decode=False).dataset
  _assert_same(_take(_raw(decoded, raw_size=48), 2), _take(_raw(encoded, raw_size=48), 2), atol=0)
