"""Tests for simclr_jax/data/sources.py: image folders (real CIFAR-10 photos), tfds, sharding."""

import os
import types

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds
from PIL import Image

import shared_paths
from simclr_jax.data import folders, sources

SHARED_CIFAR10 = str(shared_paths.CIFAR10)
CLASSES = ('airplane', 'automobile', 'bird', 'cat', 'deer', 'dog', 'frog', 'horse', 'ship', 'truck')


def _examples(source: sources.Source) -> list[dict]:
  return list(source.dataset.as_numpy_iterator())


def _expected_listing(split_dir: str) -> tuple[list[str], list[int]]:
  """Independent listing: sorted class folders, sorted file names."""
  paths, labels = [], []
  for label, name in enumerate(sorted(os.listdir(split_dir))):
    files = sorted(os.listdir(os.path.join(split_dir, name)))
    paths += [os.path.join(split_dir, name, f) for f in files]
    labels += [label] * len(files)
  return paths, labels


def test_demo_data_is_embedded_and_class_balanced():
  root = sources.demo_data_dir()
  for split, per_class in (('train', 100), ('test', 20)):
    assert sorted(os.listdir(os.path.join(root, split))) == list(CLASSES)
    for name in CLASSES:
      assert len(os.listdir(os.path.join(root, split, name))) == per_class


def test_demo_folder_labels_order_and_pixels():
  source = sources.load('demo', 'test')
  assert source.num_examples == source.num_host_examples == 200
  assert source.class_names == CLASSES and source.num_classes == 10
  examples = _examples(source)
  paths, labels = _expected_listing(os.path.join(sources.demo_data_dir(), 'test'))
  assert [int(x['label']) for x in examples] == labels
  assert [int(x['index']) for x in examples] == list(range(200))
  for i in (0, 57, 199):
    assert examples[i]['image'].dtype == np.uint8 and examples[i]['image'].shape == (32, 32, 3)
    np.testing.assert_array_equal(examples[i]['image'], np.asarray(Image.open(paths[i])))


@pytest.mark.skipif(not os.path.isdir(SHARED_CIFAR10), reason='shared CIFAR-10 photos absent')
def test_image_folder_on_real_cifar10_photos():
  train = sources.from_folder(SHARED_CIFAR10, 'train')
  assert train.num_examples == 4660 and train.class_names == CLASSES
  test = sources.from_folder(SHARED_CIFAR10, 'test')
  _, labels = _expected_listing(os.path.join(SHARED_CIFAR10, 'test'))
  assert test.num_examples == len(labels) == 932
  labels_read = test.dataset.map(lambda x: x['label']).as_numpy_iterator()
  assert [int(label) for label in labels_read] == labels


def test_host_sharding_is_disjoint_covering_and_strided():
  count = 3
  whole = {int(x['index']): x for x in _examples(sources.load('demo', 'test'))}
  paths = folders.list_readable(sources.demo_data_dir(), 'test').paths
  seen = []
  for index in range(count):
    source = sources.load('demo', 'test', process_index=index, process_count=count)
    examples = _examples(source)
    indices = [int(x['index']) for x in examples]
    assert len(indices) == source.num_host_examples
    assert all(i % count == index for i in indices)
    assert source.encoded_bytes == sum(os.path.getsize(paths[i]) for i in indices)
    for example in examples:  # Each host reads the file and label of the index it names.
      expected = whole[int(example['index'])]
      assert example['label'] == expected['label']
      np.testing.assert_array_equal(example['image'], expected['image'])
    seen += indices
  assert sorted(seen) == list(range(200))


def test_flat_folder_is_unlabeled_and_converts_to_rgb(tmp_path):
  rgb = np.random.default_rng(0).integers(0, 256, (6, 5, 3), dtype=np.uint8)
  Image.fromarray(rgb[..., 0], 'L').save(tmp_path / 'a_gray.png')
  Image.fromarray(np.dstack([rgb, np.full((6, 5), 7, np.uint8)]), 'RGBA').save(tmp_path / 'b.png')
  Image.fromarray(rgb).save(tmp_path / 'c.JPG', quality=95)
  (tmp_path / 'notes.txt').write_text('not an image')
  source = sources.from_folder(str(tmp_path), 'train')  # No split folder: a flat folder.
  assert source.num_examples == 3 and source.num_classes == 0
  examples = _examples(source)
  assert [int(x['label']) for x in examples] == [-1, -1, -1]
  assert [int(x['index']) for x in examples] == [0, 1, 2]
  assert all(x['image'].shape == (6, 5, 3) for x in examples)
  np.testing.assert_array_equal(examples[0]['image'], np.repeat(rgb[..., :1], 3, axis=-1))
  np.testing.assert_array_equal(examples[1]['image'], rgb)  # Alpha dropped.


def test_class_ids_come_from_all_splits(tmp_path):
  image = Image.fromarray(np.zeros((4, 4, 3), np.uint8))
  for split, name in (('train', 'a'), ('train', 'b'), ('test', 'b')):
    os.makedirs(tmp_path / split / name, exist_ok=True)
    image.save(tmp_path / split / name / 'x.png')
  test = sources.load('folder', 'test', folder=str(tmp_path))
  assert test.class_names == ('a', 'b')
  assert [int(x['label']) for x in _examples(test)] == [1]


def test_folder_errors_name_the_field(tmp_path):
  with pytest.raises(ValueError, match=r"data.folder='.*missing' does not exist"):
    sources.load('folder', 'train', folder=str(tmp_path / 'missing'))
  with pytest.raises(ValueError, match='needs data.folder'):
    sources.load('folder', 'train')
  os.makedirs(tmp_path / 'train' / 'cat')
  (tmp_path / 'train' / 'cat' / 'readme.txt').write_text('x')
  with pytest.raises(ValueError, match='contains no .jpg/.jpeg/.png images'):
    sources.load('folder', 'train', folder=str(tmp_path))
  with pytest.raises(ValueError, match="no split folder 'test' \\(found: train\\)"):
    sources.load('folder', 'test', folder=str(tmp_path))


def test_unknown_tfds_name_is_one_line_value_error():
  with pytest.raises(ValueError) as error:
    sources.load('foo', 'train')
  message = str(error.value)
  assert message.startswith("data.dataset='foo' is not a known tfds dataset; use e.g. cifar10")
  assert "data.dataset='folder' with data.folder=PATH" in message and '\n' not in message


def test_tfds_cifar10_with_mock_data():
  with tfds.testing.mock_data(num_examples=6):
    source = sources.load('cifar10', 'train')
    examples = _examples(source)
    shard = _examples(sources.load('cifar10', 'train', process_index=1, process_count=2))
  assert source.num_examples == 6 and source.num_classes == 10
  assert len(source.class_names) == 10  # Names need the prepared metadata; mock data has ids.
  assert [int(x['index']) for x in examples] == list(range(6))
  for x in examples:
    assert x['image'].dtype == np.uint8 and x['image'].shape == (32, 32, 3)
    assert x['label'].dtype == np.int32 and 0 <= x['label'] < 10
  assert [int(x['index']) for x in shard] == [3, 4, 5]  # Contiguous shares, as tfds.even_splits.
  np.testing.assert_array_equal(shard[0]['image'], examples[3]['image'])


def test_tfds_grayscale_images_become_rgb():
  with tfds.testing.mock_data(num_examples=2):
    examples = _examples(sources.load('mnist', 'train'))
  image = examples[0]['image']
  assert image.shape == (28, 28, 3)
  np.testing.assert_array_equal(image[..., 0], image[..., 2])


def test_tfds_missing_split_and_unprepared_dataset(monkeypatch, tmp_path):
  with pytest.raises(ValueError, match=r"data.dataset='cifar10' is not prepared"):
    sources.load('cifar10', 'train', data_dir=str(tmp_path))
  prepared = types.SimpleNamespace(
    info=types.SimpleNamespace(splits={'train': types.SimpleNamespace(num_examples=3)})
  )
  monkeypatch.setattr(sources, '_tfds_builder', lambda name, data_dir: prepared)
  with pytest.raises(ValueError, match="has no split 'validation' \\(has: train\\)"):
    sources.load('cifar10', 'validation')


def test_big_jpegs_are_decoded_at_reduced_scale_small_ones_whole(tmp_path):
  rng = np.random.default_rng(0)
  for name, (height, width) in {'big.jpg': (1600, 2000), 'small.jpg': (300, 400)}.items():
    Image.fromarray(rng.integers(0, 256, (height, width, 3), np.uint8)).save(tmp_path / name)
  # Training at 32 px keeps the shorter side >= 4 x 32 = 128: 1600 px -> 1/8 (200), 300 -> 1/2.
  source = sources.load('folder', 'train', folder=str(tmp_path), min_decoded_side=128)
  big, small = [x['image'] for x in _examples(source)]
  encoded = (tmp_path / 'big.jpg').read_bytes()
  np.testing.assert_array_equal(big, tf.io.decode_jpeg(encoded, channels=3, ratio=8).numpy())
  assert big.shape == (200, 250, 3) and small.shape == (150, 200, 3)
  # At 224 px (min side 896) neither is reduced: ImageNet-sized photos decode whole, as officially.
  whole = sources.load('folder', 'train', folder=str(tmp_path), min_decoded_side=896)
  assert [x['image'].shape for x in _examples(whole)] == [(1600, 2000, 3), (300, 400, 3)]
