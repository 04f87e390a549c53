"""Which files of an image folder can be trained on, decided once when the folder is listed.

A bad file (truncated, empty, not an image, a format tf.io.decode_image cannot read) would stop a
tf.data pipeline mid-epoch, hours into a run. Pillow opens each file and, for folders up to
`FULL_CHECK_MAX_BYTES`, decodes it fully (`load()`), which catches truncation and corrupt data;
bad files are dropped from the listing, counted and logged with their path.

Larger folders (ImageNet-sized) get only a header check (Pillow `open`: catches empty, text and
unsupported files at a few microseconds each); their remaining decode errors are skipped by
tf.data (`ignore_errors` in reading.py, logged by TF but not counted here).

Every image Pillow accepts here is decoded by `tf.io.decode_image(channels=3)` to RGB uint8:
measured with TF 2.21 on grayscale (L, 1-bit, LA), palette (with transparency), RGBA, Adobe
CMYK JPEG (TF applies the inversion itself), 16-bit gray and RGB PNG (TF keeps the high byte, as
Pillow does), progressive JPEG, GIF, BMP and WebP. So no Pillow decoding path is needed at
training time. EXIF orientation is ignored, as by TF and tfds ImageFolder.

Verdicts are cached in memory per (path, size, mtime, depth), so the several listings of one
run (train, eval, kNN bank, labelled subset) check each file once.
"""

import concurrent.futures
import os
import time
from collections.abc import Sequence

from absl import logging
from PIL import Image

from simclr_jax import fs

# Container formats (Pillow's names) that tf.io.decode_image reads; TIFF, e.g., it does not.
DECODABLE_FORMATS = ('JPEG', 'PNG', 'GIF', 'BMP', 'WEBP')
# Above this many bytes of images in a split, only headers are checked: a full Pillow decode of
# ImageNet's 140 GB would take hours; up to 1 GiB it takes seconds to a few minutes on 16 cores.
FULL_CHECK_MAX_BYTES = 2**30
# Larger images are skipped: decoding one 144-megapixel PNG takes 430 MB as uint8 and several GB
# once converted for augmentation; 64 MP is over five 12 MP phone photos' worth.
MAX_PIXELS = 2**26
MIN_SIDE = 4  # Smaller images carry no crop to learn from (a 1x1 image is one colour).
# A check of more files than this logs its progress and ETA every PROGRESS_EVERY_S seconds
# (ImageNet's 1.28 M headers: about 90 s on 2 cores, far more on a network file system).
PROGRESS_MIN_FILES = 10_000
PROGRESS_EVERY_S = 10.0

_verdicts: dict[tuple[str, int, int, bool], str] = {}  # Key -> '' (readable) or the reason.


def _problem(path: str, size: int, full: bool) -> str:
  """Why `path` cannot be trained on, or '' if it can."""
  if size == 0:
    return 'empty file'
  try:
    with fs.open(path, 'rb') as file, Image.open(file) as image:
      if image.format not in DECODABLE_FORMATS:
        return f'{image.format} is not decodable by tf.io.decode_image'
      width, height = image.size
      if min(width, height) < MIN_SIDE:
        return f'{width}x{height} is under the {MIN_SIDE} px minimum side (image_check.MIN_SIDE)'
      if width * height > MAX_PIXELS:
        return (f'{width}x{height} = {width * height / 1e6:.0f} MP is over the '
                f'{MAX_PIXELS / 1e6:.0f} MP cap (image_check.MAX_PIXELS); downscale it')
      if full:
        image.load()  # Decodes every pixel: raises on truncated or corrupt data.
  # Pillow's plugins raise many types on malformed input (OSError, SyntaxError, ValueError,
  # struct.error, DecompressionBombError, ...); any of them means the file is unusable.
  except Exception as error:  # noqa: BLE001
    return f'{type(error).__name__}: {error}'
  return ''


def find_unreadable(
  paths: Sequence[str], *, full_check_max_bytes: int = FULL_CHECK_MAX_BYTES
) -> tuple[dict[str, str], bool, list[int]]:
  """({path: reason} of the files that cannot be trained on, whether pixels were decoded, the
  files' sizes in bytes).

  Each newly found bad file is logged (absl warning) with its path and reason.
  """
  # (size, mtime) pairs, not os.stat_result objects: 130 vs 680 bytes a file (ImageNet: 0.7 GB).
  stats = list(map(fs.size_and_mtime, paths))
  total_bytes = sum(size for size, _ in stats)
  full = total_bytes <= full_check_max_bytes
  if not full:
    logging.info('%d image files (%.1f GB) exceed %.1f GB: checking headers only; decode errors '
                 'are skipped by tf.data.', len(paths), total_bytes / 1e9,
                 full_check_max_bytes / 1e9)
  keys = [(path, size, mtime, full) for path, (size, mtime) in zip(paths, stats)]
  todo = [key for key in keys if key not in _verdicts]
  report = len(todo) > PROGRESS_MIN_FILES
  if report:
    logging.info('Checking %d image files (%s).', len(todo), 'full decode' if full else 'headers')
  # Chunks keep the number of futures small for million-file folders; Pillow releases the GIL
  # while decoding, so threads overlap the work.
  chunks = [todo[i:i + 256] for i in range(0, len(todo), 256)]
  start = last_report = time.monotonic()
  done = 0
  with concurrent.futures.ThreadPoolExecutor(min(32, os.cpu_count() or 1)) as pool:
    results = pool.map(lambda chunk: [_problem(path, size, full) for path, size, _, _ in chunk],
                       chunks)
    for chunk, problems in zip(chunks, results):
      for key, problem in zip(chunk, problems):
        _verdicts[key] = problem
        if problem:
          logging.warning('Skipping unreadable image %s (%s).', key[0], problem)
      done += len(chunk)
      now = time.monotonic()
      if report and now - last_report >= PROGRESS_EVERY_S and done < len(todo):
        last_report = now
        eta = (now - start) / done * (len(todo) - done)
        logging.info('Checked %d / %d image files (%.0f %%), ETA %.0f s.', done, len(todo),
                     100 * done / len(todo), eta)
  skipped = {key[0]: _verdicts[key] for key in keys if _verdicts[key]}
  return skipped, full, [size for size, _ in stats]

