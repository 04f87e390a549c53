"""How a host reads its share of a split (a `sources.Source`): in split order, or as training
epochs, decoded, and cached within the cache rule.

Two orders:
  * `ordered(source, cache)`: the share in split order (evaluation, features, plots);
  * `epochs(source, ...)`: the training stream, every epoch a fresh permutation from
    (seed, host, epoch), with an 'epoch' field, starting `start_example` examples in. The work a
    resume does before its first example is bounded:
      - folders: the shuffle runs over the file paths, so skipping reads nothing;
      - tfds shards: an epoch is the host's shard files in a random order, read in windows of
        `ceil(shuffle_buffer / records per shard)` files whose records are fully permuted
        (the window is the shuffle buffer); a resume skips whole windows by arithmetic and reads
        at most one window (the shuffle buffer plus at most one shard);
      - a cached source is shuffled in memory (the cache is filled once, as training would).

What is cached (`cache=True` allows it) is decided from sizes known before reading: the decoded
images when this host's share provably fits in `CACHE_RAM_FRACTION` of the host's RAM (folder
headers, or a tfds feature of static shape), otherwise the encoded bytes when those fit (file
sizes, tfds split bytes), otherwise nothing. The decision is logged in one line.
"""

import math
import os

import numpy as np
import tensorflow as tf
from absl import logging

CACHE_RAM_FRACTION = 0.25  # A cache may take at most this share of the host's memory.
# Purposes folded into the root seed (shared with pipeline.py), so streams never share bits.
SHUFFLE_PURPOSE = 1
_MAX_EPOCHS = 2**62

_ANNOUNCED: set[tuple] = set()  # Listings and cache decisions already logged by this process.


def log_once(key: tuple, message: str, *args) -> None:
  if key not in _ANNOUNCED:
    _ANNOUNCED.add(key)
    logging.info(message, *args)


def purpose_seed(seed: int, purpose: int, *data) -> tf.Tensor:
  """A [2] int64 stateless seed from the root seed, a purpose and further integers to fold in."""
  derived = tf.random.experimental.stateless_fold_in(
    tf.constant([seed, 0], tf.int64), tf.constant(purpose, tf.int64)
  )
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


def _without(example: dict, key: str) -> dict:
  return {name: value for name, value in example.items() if name != key}


def _to_rgb(image: tf.Tensor) -> tf.Tensor:
  """Grayscale -> 3 equal channels, RGBA -> RGB (alpha dropped)."""
  channels = tf.shape(image)[-1]
  image = tf.cond(channels == 1, lambda: tf.tile(image[..., :1], [1, 1, 3]), lambda: image)
  image = image[..., :3]
  image.set_shape([None, None, 3])
  return image


def decode_bytes(encoded: tf.Tensor, min_side: int = 0) -> tf.Tensor:
  """uint8 [H, W, 3]; JPEGs whose shorter side is >= 2 * min_side (min_side > 0) are decoded at
  1/2, 1/4 or 1/8 scale (libjpeg's DCT scaling), the smallest keeping the side >= min_side."""

  def whole() -> tf.Tensor:
    return tf.io.decode_image(encoded, channels=3, expand_animations=False)

  if min_side <= 0:
    image = whole()
  else:

    def jpeg() -> tf.Tensor:
      shape = tf.image.extract_jpeg_shape(encoded)
      shorter = tf.minimum(shape[0], shape[1])
      branch = tf.reduce_sum(tf.cast(shorter >= min_side * tf.constant([2, 4, 8]), tf.int32))
      return tf.switch_case(branch, [
        lambda ratio=ratio: tf.io.decode_jpeg(encoded, channels=3, ratio=ratio)
        for ratio in (1, 2, 4, 8)])

    image = tf.cond(tf.io.is_jpeg(encoded), jpeg, whole)
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


def decoded(source, dataset: tf.data.Dataset) -> tf.data.Dataset:
  """Encoded examples decoded (when the source decodes), then the source's maps applied."""
  if source.decode and 'encoded' in dataset.element_spec:

    def decode(example: dict) -> dict:
      image = _to_rgb(decode_bytes(example['encoded'], source.min_decoded_side))
      return {**_without(example, 'encoded'), 'image': image}

    dataset = dataset.map(decode, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    if not source.fully_checked:
      # Headers only were checked: a corrupt file fails here and is dropped (TF logs it)
      # rather than stopping training. The counts are then upper bounds.
      dataset = dataset.ignore_errors(log_warning=True)
  for fn in source.maps:
    dataset = dataset.map(fn, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
  return dataset


def read_items(source, items: tf.data.Dataset) -> tf.data.Dataset:
  """Items (file paths, ...) -> the examples they name, through the source's `read`."""
  if source.read is None:
    return items
  read = lambda item: {**_without(item, 'path'), **source.read(item)}  # Keeps 'epoch'.
  return items.map(read, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)


def cache_kind(source, cache: bool) -> str:
  """'decoded', 'encoded' or '' (nothing): what may be cached, logged once (module docstring)."""
  if not cache:
    return ''
  budget = CACHE_RAM_FRACTION * host_ram_bytes()
  wants_decoded = source.decode
  if wants_decoded and 0 < source.decoded_bytes <= budget:
    kind, size = 'decoded', source.decoded_bytes
  elif 0 < source.encoded_bytes <= budget:
    kind, size = 'encoded', source.encoded_bytes
  else:
    kind, size = '', source.decoded_bytes if wants_decoded else source.encoded_bytes
  amount = f'{size / 1e6:,.0f} MB' if size else 'size unknown'
  what = f'the {kind} images of this host ({amount}' if kind else f'nothing ({amount}'
  log_once(('cache', source.name, kind), 'data.cache for %s: caching %s; limit %.0f%% of %.0f GB '
            'RAM).', source.name, what, 100 * CACHE_RAM_FRACTION, host_ram_bytes() / 1e9)
  return kind


def ordered(source, cache: bool = False) -> tf.data.Dataset:
  """This host's examples in split order; `cache` caches what the cache rule allows."""
  kind = cache_kind(source, cache)
  if source.shards is not None:
    pieces = tf.data.Dataset.range(len(source.shards.filenames))
    dataset = parse(source, pieces.flat_map(source.shards.read))
  else:
    dataset = read_items(source, select(source, source.items()))
  if kind == 'encoded':
    dataset = dataset.cache()
  dataset = decoded(source, dataset)
  if kind == 'decoded':
    dataset = dataset.cache()
  return dataset


def parse(source, records: tf.data.Dataset, whole_share: bool = True) -> tf.data.Dataset:
  """Shard records -> {'encoded', 'label', 'index'}, only the examples the source keeps."""

  def one(item: dict) -> dict:
    return {**source.shards.parse(item['record']), 'index': item['index']}

  parsed = records.map(one, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
  return select(source, parsed, whole_share)


# ----------------------------------------------------------------------------- training order


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
  """The training stream: examples with an 'epoch' field, epochs from `start_example` on.

  Epoch e is a permutation drawn from (seed, host, epoch); see the module docstring for how
  each kind of source draws it and what a resume reads.
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
    shuffle_seed = _shuffle_seed(seed, process_index, epoch)
    shuffled = items.shuffle(shuffle_buffer, seed=shuffle_seed, reshuffle_each_iteration=False)
    return shuffled.map(lambda item: {**item, 'epoch': epoch})

  return after(tf.data.Dataset.range(first_epoch, stop).flat_map(one_epoch).skip(skip))


def _shard_epochs(
  source, seed: int, shuffle_buffer: int, first_epoch: int, skip: int, stop: int,
  process_index: int,
) -> tf.data.Dataset:
  """Shard files in a random order per epoch, read in fully shuffled windows (docstring)."""
  shards = source.shards
  num_pieces = len(shards.filenames)
  per_window = max(1, min(num_pieces, math.ceil(shuffle_buffer / max(shards.takes.max(), 1))))
  window_capacity = int(per_window * shards.takes.max())
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
    examples = parse(source, records, whole_share=False)
    shuffled = examples.shuffle(window_capacity, seed=_shuffle_seed(
      seed, process_index, epoch, window), reshuffle_each_iteration=False)
    return shuffled.map(lambda example: {**example, 'epoch': epoch})

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
