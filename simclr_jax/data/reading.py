"""How a host reads its share of a split (a `sources.Source`): in split order or as training
epochs, decoded, and cached within the cache rule.

  * `ordered(source, cache)`: the share in split order (evaluation, features, plots);
  * `epochs(source, ...)`: the training stream, each epoch a fresh permutation drawn from
    (seed, host, epoch), with an 'epoch' field, from `start_example` on. Image folders and cached
    shares are fully permuted: folders shuffle file paths (a resume skips paths and reads
    nothing), a cached share is shuffled in memory. tfds shard files are visited in a random
    order and read in windows of ceil(shuffle_buffer / records per shard) files whose records
    are fully permuted; a resume skips whole windows by arithmetic and reads at most one window
    (the shuffle buffer plus one shard).

The cache rule (`cache=True` allows a cache): the decoded images are cached when this host's
share of them provably fits in `CACHE_RAM_FRACTION` of the host's RAM (known when the source's
maps end on a fixed-size canvas, as the pipelines' do), else the encoded bytes when those fit
(file sizes, tfds split bytes), else nothing; the decision is logged in one line. The stream is
the same whatever is cached.
"""

import math
import os

import numpy as np
import tensorflow as tf
from absl import logging

CACHE_RAM_FRACTION = 0.25  # A cache may take at most this share of the host's memory.
SHUFFLE_PURPOSE = 1  # Folded into the root seed (views.py folds 2 and 3): no shared bits.
_MAX_EPOCHS = 2**62

_ANNOUNCED: set[tuple] = set()  # Listings and cache decisions already logged by this process.


def log_once(key: tuple, message: str, *args) -> None:
  if key not in _ANNOUNCED:
    _ANNOUNCED.add(key)
    logging.info(message, *args)


def purpose_seed(seed: int, purpose: int, *data) -> tf.Tensor:
  """A [2] int64 stateless seed from the root seed, a purpose and further integers to fold in."""
  derived = tf.random.experimental.stateless_fold_in(
    tf.constant([seed, 0], tf.int64), tf.constant(purpose, tf.int64))
  for value in data:
    derived = tf.random.experimental.stateless_fold_in(derived, tf.cast(value, tf.int64))
  return derived


def _shuffle_seed(seed: int, *data) -> tf.Tensor:
  """A scalar int64 seed for `Dataset.shuffle` from (seed, 'shuffle', *data)."""
  derived = purpose_seed(seed, SHUFFLE_PURPOSE, *data)
  return tf.random.stateless_uniform([], derived, 0, 2**62, dtype=tf.int64)


def host_ram_bytes() -> int:
  """Physical memory of this host, or the container's limit when that is smaller (cgroup v2/v1)."""
  total = os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES')
  for limit_file in ('/sys/fs/cgroup/memory.max', '/sys/fs/cgroup/memory/memory.limit_in_bytes'):
    try:
      with open(limit_file) as f:
        value = f.read().strip()
    except OSError:
      continue
    if value.isdigit():
      total = min(total, int(value))
  return total


def decode_bytes(encoded: tf.Tensor, min_side: int = 0) -> tf.Tensor:
  """uint8 [H, W, 3] (gray tiled, alpha dropped); JPEGs whose shorter side is >= 2 * min_side
  (min_side > 0) are decoded at 1/2, 1/4 or 1/8 scale (libjpeg's DCT scaling), the smallest
  keeping the side >= min_side."""

  def jpeg() -> tf.Tensor:
    shape = tf.image.extract_jpeg_shape(encoded)
    shorter = tf.minimum(shape[0], shape[1])
    branch = tf.reduce_sum(tf.cast(shorter >= min_side * tf.constant([2, 4, 8]), tf.int32))
    return tf.switch_case(branch, [
      lambda ratio=ratio: tf.io.decode_jpeg(encoded, channels=3, ratio=ratio)
      for ratio in (1, 2, 4, 8)])

  whole = lambda: tf.io.decode_image(encoded, channels=3, expand_animations=False)
  image = tf.cond(tf.io.is_jpeg(encoded), jpeg, whole) if min_side > 0 else whole()
  image.set_shape([None, None, 3])
  return image


# ----------------------------------------------------------------------------- reading


def select(source, dataset: tf.data.Dataset, whole_share: bool = True) -> tf.data.Dataset:
  """Only the examples of `keep`; `whole_share`: the dataset is this host's whole share."""
  if source.keep is None:
    return dataset
  keep_table = tf.constant(source.keep)
  dataset = dataset.filter(lambda item: tf.gather(keep_table, item['index']))
  if not whole_share:
    return dataset
  # Known cardinality lets shuffles and skips reason about the epoch without reading it.
  return dataset.apply(tf.data.experimental.assert_cardinality(source.num_host_examples))


def read_items(source, items: tf.data.Dataset) -> tf.data.Dataset:
  """Items (file paths, ...) -> the examples they name, through the source's `read`."""
  if source.read is None:
    return items
  read = lambda item: {**{k: v for k, v in item.items() if k != 'path'}, **source.read(item)}
  return items.map(read, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)


def decoded(source, dataset: tf.data.Dataset) -> tf.data.Dataset:
  """Encoded examples decoded (when the source decodes), labels hidden outside `labelled`, then
  the source's maps applied."""
  parallel = dict(num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
  if source.decode and 'encoded' in dataset.element_spec:
    decode = lambda x: {**{k: v for k, v in x.items() if k != 'encoded'},
                        'image': decode_bytes(x['encoded'], source.min_decoded_side)}
    dataset = dataset.map(decode, **parallel)
    if not source.fully_checked:
      # Headers only were checked: a corrupt file fails here and is dropped (TF logs it)
      # rather than stopping training. The counts are then upper bounds.
      dataset = dataset.ignore_errors(log_warning=True)
  if source.labelled is not None:
    labelled = tf.constant(source.labelled)
    dataset = dataset.map(lambda x: {**x, 'label': tf.where(
      tf.gather(labelled, x['index']), tf.cast(x['label'], tf.int32), -1)}, **parallel)
  for fn in source.maps:
    dataset = dataset.map(fn, **parallel)
  return dataset


def _parse(source, records: tf.data.Dataset, whole_share: bool = True) -> tf.data.Dataset:
  """Shard records -> {'encoded', 'label', 'index'}, only the examples the source keeps."""
  one = lambda item: {**source.shards.parse(item['record']), 'index': item['index']}
  parsed = records.map(one, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
  return select(source, parsed, whole_share)


def _encoded(source) -> tf.data.Dataset:
  """This host's examples in split order, before decoding."""
  if source.shards is not None:
    pieces = tf.data.Dataset.range(len(source.shards.filenames))
    return _parse(source, pieces.flat_map(source.shards.read))
  return read_items(source, select(source, source.items()))


def cache_kind(source, cache: bool) -> str:
  """'decoded', 'encoded' or '' (nothing): what may be cached, logged once (module docstring)."""
  if not cache:
    return ''
  budget = CACHE_RAM_FRACTION * host_ram_bytes()
  decoded_bytes = 0
  if source.decode:
    shape = decoded(source, _encoded(source)).element_spec['image'].shape
    if shape.is_fully_defined():  # uint8 canvases of a fixed size.
      decoded_bytes = source.num_host_examples * shape.num_elements()
  if 0 < decoded_bytes <= budget:
    kind, size = 'decoded', decoded_bytes
  elif 0 < source.encoded_bytes <= budget:
    kind, size = 'encoded', source.encoded_bytes
  else:
    kind, size = '', decoded_bytes if source.decode else source.encoded_bytes
  amount = f'{size / 1e6:,.0f} MB' if size else 'size unknown'
  what = f'the {kind} images of this host ({amount}' if kind else f'nothing ({amount}'
  log_once(('cache', source.name, kind), 'data.cache for %s: caching %s; limit %.0f%% of %.0f GB '
           'RAM).', source.name, what, 100 * CACHE_RAM_FRACTION, host_ram_bytes() / 1e9)
  return kind


def ordered(source, cache: bool = False) -> tf.data.Dataset:
  """This host's examples in split order; `cache` caches what the cache rule allows."""
  kind = cache_kind(source, cache)
  dataset = _encoded(source)
  if kind == 'encoded':
    dataset = dataset.cache()
  dataset = decoded(source, dataset)
  return dataset.cache() if kind == 'decoded' else dataset


# ----------------------------------------------------------------------------- training order


def _with_epoch(epoch: tf.Tensor):
  return lambda example: {**example, 'epoch': tf.cast(epoch, tf.int32)}


def epochs(
  source,
  *,
  seed: int,
  shuffle_buffer: int,
  cache: bool = False,
  start_example: int = 0,
  process_index: int = 0,
  num_epochs: int | None = None,
) -> tf.data.Dataset:
  """The training stream: examples with an int32 'epoch' field, from `start_example` on.

  Epoch e is a permutation drawn from (seed, host, e): see the module docstring for how each
  kind of source draws it and what a resume reads.
  """
  epoch_size = source.num_host_examples
  if epoch_size == 0:
    raise ValueError('The input has no examples on this host; check the dataset and split.')
  first_epoch, skip = divmod(start_example, epoch_size)
  stop = _MAX_EPOCHS if num_epochs is None else num_epochs
  kind = cache_kind(source, cache)
  if source.shards is not None and not kind:
    return _shard_epochs(source, seed, shuffle_buffer, first_epoch, skip, stop, process_index)
  if kind:
    items, after = ordered(source, cache=True), lambda dataset: dataset
  else:  # Shuffle before reading and decoding: file paths, or encoded examples read through tfds.
    items = select(source, source.items())
    after = lambda dataset: decoded(source, read_items(source, dataset))

  def one_epoch(epoch: tf.Tensor) -> tf.data.Dataset:
    # A buffer of the whole share: a full permutation (image folders list classes in order).
    shuffled = items.shuffle(epoch_size, seed=_shuffle_seed(seed, process_index, epoch),
                             reshuffle_each_iteration=False)
    return shuffled.map(_with_epoch(epoch))

  return after(tf.data.Dataset.range(first_epoch, stop).flat_map(one_epoch).skip(skip))


def _shard_epochs(
  source, seed: int, shuffle_buffer: int, first_epoch: int, skip: int, stop: int,
  process_index: int,
) -> tf.data.Dataset:
  """Shard files in a random order per epoch, read in fully shuffled windows (docstring)."""
  shards = source.shards
  num_pieces = len(shards.filenames)
  per_window = max(1, min(num_pieces, math.ceil(shuffle_buffer / max(shards.takes.max(), 1))))
  kept = shards.takes
  if source.keep is not None:
    cumulative = np.concatenate([[0], np.cumsum(source.keep)])
    kept = cumulative[shards.starts + shards.takes] - cumulative[shards.starts]

  def piece_order(epoch) -> tf.Tensor:
    noise = tf.random.stateless_uniform([num_pieces], purpose_seed(
      seed, SHUFFLE_PURPOSE, process_index, epoch, -1))
    return tf.argsort(noise)

  def read_window(epoch: tf.Tensor, window: tf.Tensor, pieces: tf.Tensor) -> tf.data.Dataset:
    records = tf.data.Dataset.from_tensor_slices(pieces).interleave(
      shards.read, cycle_length=per_window, block_length=1,
      num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    shuffled = _parse(source, records, whole_share=False).shuffle(
      int(per_window * shards.takes.max()), seed=_shuffle_seed(seed, process_index, epoch, window),
      reshuffle_each_iteration=False)
    return shuffled.map(_with_epoch(epoch))

  def one_epoch(epoch: tf.Tensor, skip_windows=0) -> tf.data.Dataset:
    windows = tf.data.Dataset.from_tensor_slices(piece_order(epoch)).batch(per_window)
    windows = windows.enumerate().skip(skip_windows)
    return windows.flat_map(lambda window, pieces: read_window(epoch, window, pieces))

  # The resumed epoch: whole windows before `skip` are skipped without reading any of them.
  order = piece_order(first_epoch).numpy()
  window_sizes = [int(kept[order[i:i + per_window]].sum())
                  for i in range(0, num_pieces, per_window)]
  before = np.concatenate([[0], np.cumsum(window_sizes)])
  window = int(np.searchsorted(before, skip, side='right') - 1)
  first = one_epoch(tf.constant(first_epoch, tf.int64), window).skip(skip - int(before[window]))
  rest = tf.data.Dataset.range(first_epoch + 1, stop).flat_map(one_epoch)
  return decoded(source, first.concatenate(rest))
