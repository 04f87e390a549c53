"""Tests for window decoding of encoded images (eval_view.decode_crop), undecoded sources and
the pipelines on 'encoded' examples."""

import io
import itertools
import os

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds
from PIL import Image

from simclr_jax.data import eval_view, pipeline, sources

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
      window, shape = eval_view.decode_crop(tf.constant(encoded), lambda _, b=box: tf.constant(b))
      y, x, h, w = box
      np.testing.assert_array_equal(window.numpy(), full[y:y + h, x:x + w])
      assert tuple(shape.numpy()[:2]) == (height, width)


def test_decode_crop_of_chroma_subsampled_jpeg_differs_at_most_in_the_edge_columns():
  """4:2:0 JPEG: libjpeg-turbo upsamples chroma at the window's edges from inside the window."""
  for height, width in SIZES:
    encoded = _encode(_photo(height, width), quality=90)  # Pillow default: 4:2:0.
    full = _decode(encoded).astype(int)
    for y, x, h, w in _boxes(height, width, 10):
      window, _ = eval_view.decode_crop(tf.constant(encoded), lambda _: tf.constant([y, x, h, w]))
      difference = np.abs(window.numpy().astype(int) - full[y:y + h, x:x + w])
      assert not difference[:, 1:-1].any()
      assert difference.max() <= 32


def test_png_falls_back_to_decode_and_slice():
  image = _photo(30, 41)
  window, shape = eval_view.decode_crop(tf.constant(_encode(image, 'PNG')),
                                      lambda _: tf.constant([3, 5, 20, 30]))
  np.testing.assert_array_equal(window.numpy(), image[3:23, 5:35])
  assert list(shape.numpy()) == [30, 41, 3]


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
  common = dict(seed=3, host_batch_size=4, canvas_size=128, shuffle_buffer=9)
  _assert_same(_take(pipeline.make_train_dataset(decoded, **common), 3),
               _take(pipeline.make_train_dataset(encoded, **common), 3))
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
    common = dict(seed=1, host_batch_size=4, shuffle_buffer=8, canvas_size=32)
    _assert_same(_take(pipeline.make_train_dataset(decoded.dataset, **common), 2),
                 _take(pipeline.make_train_dataset(encoded.dataset, **common), 2))


def test_corrupt_undecoded_files_are_skipped_when_checked_by_headers_only(tmp_path):
  for i in range(3):
    (tmp_path / f'{i}.jpg').write_bytes(_encode(_photo(20, 20, i), quality=90))
  truncated = _encode(_photo(64, 64, 5), quality=90)
  (tmp_path / '3.jpg').write_bytes(truncated[:len(truncated) // 2])
  source = sources.from_folder(str(tmp_path), 'train', full_check_max_bytes=0, decode=False)
  assert source.num_examples == 4 and source.decode_errors_possible
  dataset = pipeline.make_train_dataset(
    source.dataset, seed=0, host_batch_size=3, canvas_size=64, shuffle_buffer=1, num_epochs=1,
    ignore_decode_errors=True)
  assert [sorted(b['label']) for b in pipeline.iterate_numpy(dataset)] == [[-1, -1, -1]]
