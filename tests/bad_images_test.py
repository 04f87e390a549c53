"""Image folders with odd and broken files: decodable ones become RGB uint8, the rest are skipped.

References are Pillow's own decodes (or the arrays the files were written from), independent of
the tf.io.decode_image path under test.
"""

import logging
import os
import pathlib

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from simclr_jax.data import image_check, pipeline, sources, subsets

RNG = np.random.default_rng(0)
RGB = RNG.integers(0, 256, (12, 10, 3), dtype=np.uint8)
GRAY16 = RNG.integers(0, 2**16, (12, 10), dtype=np.uint16)
RGB16 = RNG.integers(0, 2**16, (12, 10, 3), dtype=np.uint16)
GOOD = ('cmyk.jpg', 'gray.png', 'gray16.png', 'palette.png', 'rgb.png', 'rgb16.png', 'rgba.png',
        'tiny.png')
BAD = ('text.jpg', 'tiff.png', 'truncated.jpg', 'zero.jpg')


def _write_images(folder: pathlib.Path) -> None:
  """One file of each kind in `folder`."""
  folder.mkdir(parents=True, exist_ok=True)
  Image.fromarray(RGB).convert('CMYK').save(folder / 'cmyk.jpg', quality=95)
  Image.fromarray(RGB[..., 0]).save(folder / 'gray.png')
  Image.fromarray(GRAY16).save(folder / 'gray16.png')  # Pillow mode I;16: a 16-bit gray PNG.
  Image.fromarray(RGB).convert('P').save(folder / 'palette.png')
  Image.fromarray(RGB).save(folder / 'rgb.png')
  (folder / 'rgb16.png').write_bytes(tf.io.encode_png(RGB16).numpy())  # Pillow cannot write it.
  Image.fromarray(np.dstack([RGB, np.full(RGB.shape[:2], 9, np.uint8)])).save(folder / 'rgba.png')
  Image.fromarray(RGB[:7, :5]).save(folder / 'tiny.png')  # Smaller than any crop.
  (folder / 'text.jpg').write_text('not a JPEG at all')
  Image.fromarray(RGB).save(folder / 'tiff.png', format='TIFF')  # TF cannot decode TIFF.
  # Large enough that the cut falls in the pixel data, after the headers.
  Image.fromarray(np.tile(RGB, (4, 4, 1))).save(folder / 'full.jpg', quality=95)
  data = (folder / 'full.jpg').read_bytes()
  (folder / 'truncated.jpg').write_bytes(data[: len(data) // 2])
  (folder / 'full.jpg').unlink()
  (folder / 'zero.jpg').write_bytes(b'')


def _reference(path: pathlib.Path) -> np.ndarray:
  """What the file should decode to, from Pillow or the written arrays."""
  name = path.name
  if name == 'gray16.png':
    return np.repeat((GRAY16 >> 8).astype(np.uint8)[..., None], 3, axis=-1)  # High byte.
  if name == 'rgb16.png':
    np.testing.assert_array_equal(np.asarray(Image.open(path)), RGB16 >> 8)  # Pillow agrees.
    return (RGB16 >> 8).astype(np.uint8)
  return np.asarray(Image.open(path).convert('RGB'))


def _examples(source: sources.Source) -> list[dict]:
  return list(source.dataset.as_numpy_iterator())


@pytest.fixture
def class_folder(tmp_path) -> pathlib.Path:
  """root/train/{a,b}/ with the odd and broken files split between two classes."""
  _write_images(tmp_path / 'train' / 'a')
  for name in ('cmyk.jpg', 'gray16.png', 'text.jpg', 'zero.jpg'):  # Class b gets these four.
    os.makedirs(tmp_path / 'train' / 'b', exist_ok=True)
    os.rename(tmp_path / 'train' / 'a' / name, tmp_path / 'train' / 'b' / name)
  return tmp_path


def test_good_images_decode_to_rgb_and_bad_ones_are_counted(class_folder, caplog):
  caplog.set_level(logging.WARNING)
  source = sources.load('folder', 'train', folder=str(class_folder))
  train = class_folder / 'train'
  expected_good = [train / 'a' / n for n in sorted(set(GOOD) - {'cmyk.jpg', 'gray16.png'})]
  expected_good += [train / 'b' / 'cmyk.jpg', train / 'b' / 'gray16.png']
  expected_bad = sorted(str(train / c / n) for c, n in
                        (('a', 'tiff.png'), ('a', 'truncated.jpg'), ('b', 'text.jpg'),
                         ('b', 'zero.jpg')))
  assert source.num_skipped == 4 and list(source.skipped_paths) == expected_bad
  assert source.num_examples == source.num_host_examples == len(GOOD)
  assert source.encoded_bytes == sum(os.path.getsize(path) for path in expected_good)
  for path in expected_bad:
    assert any(path in record.getMessage() for record in caplog.records), path

  examples = _examples(source)
  assert [int(x['index']) for x in examples] == list(range(len(GOOD)))
  assert [int(x['label']) for x in examples] == [0] * 6 + [1] * 2
  for path, example in zip(expected_good, examples):
    image, reference = example['image'], _reference(path)
    assert image.dtype == np.uint8 and image.shape == reference.shape, path.name
    if path.name == 'cmyk.jpg':
      # JPEG is lossy and TF's IDCT differs from Pillow's; measured: mean 1.8, max 8.
      difference = np.abs(image.astype(int) - reference)
      assert difference.mean() < 4 and difference.max() <= 16
      assert np.abs(image.astype(int) - RGB).mean() < 4  # Not inverted, channels in order.
    else:
      np.testing.assert_array_equal(image, reference, err_msg=path.name)
  assert examples[-1]['image'].shape == (12, 10, 3)  # gray16.png.
  assert examples[5]['image'].shape == (7, 5, 3)  # tiny.png.

  # The labelled-subset code lists the folder itself; its labels must stay aligned with indices.
  labels = subsets.split_labels('folder', 'train', folder=str(class_folder))
  np.testing.assert_array_equal(labels, [int(x['label']) for x in examples])


def test_pretrain_batches_from_a_folder_with_bad_and_tiny_images(tmp_path):
  _write_images(tmp_path)  # A flat folder: labels -1.
  source = sources.from_folder(str(tmp_path), 'train')
  assert source.num_examples == len(GOOD) and source.num_skipped == len(BAD)
  dataset = pipeline.make_train_dataset(
    source, seed=0, host_batch_size=4, canvas_size=32, shuffle_buffer=8, threadpool_size=2)
  for batch in dataset.take(3).as_numpy_iterator():  # 12 images: more than one epoch.
    assert batch['image'].shape == (4, 32, 32, 3) and batch['image'].dtype == np.uint8
    assert np.all((batch['size'] >= 1) & (batch['size'] <= 32))
    assert list(batch['label']) == [-1] * 4
  evaluation = pipeline.make_eval_dataset(source, batch_size=8, canvas_size=32)
  (batch,) = list(evaluation.as_numpy_iterator())
  assert batch['image'].shape == (8, 32, 32, 3) and batch['mask'].sum() == len(GOOD)


def test_folder_with_no_readable_image_fails_naming_data_folder(tmp_path):
  (tmp_path / 'train' / 'cat').mkdir(parents=True)
  (tmp_path / 'train' / 'cat' / 'a.jpg').write_bytes(b'')
  (tmp_path / 'train' / 'cat' / 'b.png').write_text('hello')
  with pytest.raises(ValueError) as error:
    sources.load('folder', 'train', folder=str(tmp_path))
  message = str(error.value)
  assert message.startswith(f'data.folder={str(tmp_path)!r} split \'train\' has no readable image')
  assert 'all 2 files fail' in message and 'a.jpg: empty file' in message and '\n' not in message


def test_header_only_check_for_large_folders_drops_decode_errors_in_tf_data(tmp_path):
  _write_images(tmp_path)
  source = sources.from_folder(str(tmp_path), 'train', full_check_max_bytes=0)
  # The header check still catches empty, non-image and undecodable-format files ...
  assert source.skipped_paths == tuple(str(tmp_path / n) for n in ('text.jpg', 'tiff.png',
                                                                    'zero.jpg'))
  # ... the truncated JPEG gets past it, fails in tf.io.decode_image and is dropped there.
  assert source.num_examples == len(GOOD) + 1
  examples = _examples(source)
  assert len(examples) == len(GOOD)
  assert [int(x['index']) for x in examples] == list(range(len(GOOD)))  # truncated.jpg is last.


def test_verdicts_are_cached_until_a_file_changes(tmp_path, monkeypatch):
  Image.fromarray(RGB).save(tmp_path / 'a.png')
  (tmp_path / 'b.png').write_bytes(b'')
  assert sources.from_folder(str(tmp_path), 'train').num_skipped == 1
  calls = []
  original = image_check._problem
  monkeypatch.setattr(image_check, '_problem', lambda *args: calls.append(args) or original(*args))
  assert sources.from_folder(str(tmp_path), 'train').num_skipped == 1
  assert not calls  # Nothing re-read.
  Image.fromarray(RGB).save(tmp_path / 'b.png')  # Repaired: new size and mtime.
  source = sources.from_folder(str(tmp_path), 'train')
  assert source.num_skipped == 0 and source.num_examples == 2
  assert [args[0] for args in calls] == [str(tmp_path / 'b.png')]


def test_training_skips_bad_images_and_reports_them_in_results(class_folder, tmp_path):
  from configs import demo as demo_lib
  from simclr_jax import train

  config = demo_lib.get_config()
  config.stages = ('pretrain',)
  config.data.dataset = 'folder'
  config.data.folder = str(class_folder)
  config.data.eval_split = 'train'
  config.model.width_multiplier = 0.125
  config.train.global_batch_size = 8
  config.train.eval_batch_size = 8
  config.train.train_steps = 2
  config.knn.k = 2
  config.train.plots_at_end = False
  results = train.train_and_evaluate(config, str(tmp_path / 'run'))
  expected = len(sources.load('folder', 'train', folder=str(class_folder)).skipped_paths)
  assert expected > 0
  assert results['num_skipped_images'] == expected
  assert len(results['skipped_images']) == expected


def test_images_over_the_pixel_cap_are_skipped_with_the_reason(tmp_path, monkeypatch):
  Image.fromarray(RGB).save(tmp_path / 'ok.png')
  Image.new('RGB', (300, 200)).save(tmp_path / 'huge.png')  # Over a cap lowered for the test.
  monkeypatch.setattr(image_check, 'MAX_PIXELS', 300 * 200 - 1)
  source = sources.from_folder(str(tmp_path), 'train')
  assert source.num_examples == 1 and source.skipped_paths == (str(tmp_path / 'huge.png'),)
  verdict = next(v for k, v in image_check._verdicts.items() if k[0].endswith('huge.png'))
  assert verdict.startswith('300x200 = 0 MP is over the 0 MP cap (image_check.MAX_PIXELS)')


def test_one_pixel_images_are_skipped_with_the_reason(tmp_path):
  Image.fromarray(RGB).save(tmp_path / 'ok.png')
  Image.new('RGB', (1, 1)).save(tmp_path / 'dot.png')
  source = sources.from_folder(str(tmp_path), 'train')
  assert source.num_examples == 1 and source.skipped_paths == (str(tmp_path / 'dot.png'),)
  verdict = next(v for k, v in image_check._verdicts.items() if k[0].endswith('dot.png'))
  assert verdict == '1x1 is under the 4 px minimum side (image_check.MIN_SIDE)'


def test_a_long_check_logs_its_progress_and_eta(tmp_path, monkeypatch, caplog):
  Image.fromarray(RGB).save(tmp_path / 'a.png')
  for i in range(1, 600):
    os.link(tmp_path / 'a.png', tmp_path / f'a{i:03d}.png')
  monkeypatch.setattr(image_check, 'PROGRESS_MIN_FILES', 100)
  monkeypatch.setattr(image_check, 'PROGRESS_EVERY_S', 0.0)  # Report after every chunk of 256.
  caplog.set_level(logging.INFO)
  assert sources.from_folder(str(tmp_path), 'train').num_examples == 600
  progress = [r.getMessage() for r in caplog.records if r.getMessage().startswith('Checked ')]
  assert [m.split(' (')[0] for m in progress] == ['Checked 256 / 600 image files',
                                                  'Checked 512 / 600 image files']
  assert all(', ETA ' in m for m in progress)
