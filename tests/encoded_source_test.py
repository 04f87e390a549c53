"""Sources that keep the stored bytes (decode=False, as subsets.split_labels reads labels) and
folders checked by headers only, whose corrupt files are dropped when decoded."""

import io
import os

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds
from PIL import Image

from simclr_jax.data import pipeline, sources

SIZES = ((37, 53), (120, 91), (64, 64))


def _photo(height: int, width: int, seed: int = 0) -> np.ndarray:
  """A smooth random RGB image (upsampled noise), JPEG-friendly like a photo."""
  noise = np.random.default_rng(seed).integers(0, 256, (8, 8, 3), np.uint8)
  return np.asarray(Image.fromarray(noise).resize((width, height), Image.BICUBIC))


def _encode(image: np.ndarray, fmt: str = 'JPEG', mode: str = 'RGB', **options) -> bytes:
  buffer = io.BytesIO()
  Image.fromarray(image).convert(mode).save(buffer, fmt, **options)
  return buffer.getvalue()


def _decode(encoded: bytes) -> np.ndarray:
  return tf.io.decode_image(encoded, channels=3, expand_animations=False).numpy()


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


def test_undecoded_folder_source_reads_file_bytes(jpeg_folder):
  decoded = sources.load('folder', 'train', folder=jpeg_folder)
  encoded = sources.load('folder', 'train', folder=jpeg_folder, decode=False)
  assert set(encoded.dataset.element_spec) == {'encoded', 'label', 'index'}
  assert encoded.num_examples == decoded.num_examples == 9
  for x, y in zip(encoded.dataset.as_numpy_iterator(), decoded.dataset.as_numpy_iterator()):
    assert (x['label'], x['index']) == (y['label'], y['index'])
    np.testing.assert_array_equal(_decode(x['encoded']), y['image'])


def test_undecoded_tfds_cifar10_with_mock_data():
  with tfds.testing.mock_data(num_examples=8):  # Mock examples are PNG-encoded, as stored.
    decoded = sources.load('cifar10', 'train')
    encoded = sources.load('cifar10', 'train', decode=False)
    assert set(encoded.dataset.element_spec) == {'encoded', 'label', 'index'}
    assert encoded.dataset.element_spec['encoded'].dtype == tf.string
    for x, y in zip(encoded.dataset.as_numpy_iterator(), decoded.dataset.as_numpy_iterator()):
      assert (x['label'], x['index']) == (y['label'], y['index'])
      np.testing.assert_array_equal(_decode(x['encoded']), y['image'])


def test_corrupt_files_are_skipped_when_checked_by_headers_only(tmp_path):
  for i in range(3):
    (tmp_path / f'{i}.jpg').write_bytes(_encode(_photo(20, 20, i), quality=90))
  truncated = _encode(_photo(64, 64, 5), quality=90)
  (tmp_path / '3.jpg').write_bytes(truncated[:len(truncated) // 2])
  source = sources.from_folder(str(tmp_path), 'train', full_check_max_bytes=0)
  assert source.num_examples == 4 and not source.fully_checked  # The truncated file is listed.
  dataset = pipeline.make_train_dataset(
    source, seed=0, host_batch_size=3, canvas_size=64, shuffle_buffer=1, num_epochs=1)
  assert [sorted(b['label']) for b in pipeline.iterate_numpy(dataset)] == [[-1, -1, -1]]
