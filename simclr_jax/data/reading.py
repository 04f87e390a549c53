"""A host's share of a split (`Source`, built by sources.py) and how it is read.

`Source.ordered` gives the share in split order (evaluation, features, plots); `Source.epochs`
the training stream from `start_example` on, epoch e a permutation drawn from (seed, host, e).
Folders and cached shares are fully permuted (file indices, or references to cached tensors, are
shuffled before decoding; a resume skips them without reading). tfds shard files are visited in
a random order, in windows of ceil(shuffle_buffer / records per shard) files whose records are
fully permuted; a resume skips whole windows by arithmetic and reads at most one.

The cache rule (`cache=True`): the decoded canvases are cached when this host's share of them
fits in `CACHE_RAM_FRACTION` of its RAM, else the encoded bytes when those fit (file sizes, tfds
split bytes), else nothing; the decision is logged once. The stream is the same either way.
"""

import dataclasses
import math
import os
from typing import Callable

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
      with open(limit_file) as f:  # local: a kernel file, not a user path.
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


# ----------------------------------------------------------------------------- the Source


@dataclasses.dataclass(frozen=True)
class Shards:
  """This host's pieces of tfrecord shard files, in split order: records [skip, skip + take)
  of `filenames[i]` are the examples with indices [starts[i], starts[i] + takes[i])."""

  filenames: np.ndarray  # str [F]
  skips: np.ndarray  # int64 [F]
  takes: np.ndarray  # int64 [F]
  starts: np.ndarray  # int64 [F]
  parse: Callable[[tf.Tensor], dict]  # serialized record -> {'encoded', 'label'}

  def read(self, piece: tf.Tensor) -> tf.data.Dataset:
    """{'record', 'index'} of piece `piece` (a tensor index into the arrays)."""
    records = tf.data.TFRecordDataset(tf.gather(self.filenames, piece))
    skip, take = tf.gather(self.skips, piece), tf.gather(self.takes, piece)
    start = tf.gather(self.starts, piece)
    indices = tf.data.Dataset.range(start, start + take)
    return tf.data.Dataset.zip(records.skip(skip).take(take), indices).map(
      lambda record, index: {'record': record, 'index': index})


@dataclasses.dataclass(frozen=True, eq=False)
class Source:
  """One host's share of a split; build with `sources.load`.

  Yields examples {'image': uint8 [H, W, 3], 'label': int32 (-1 = unlabeled), 'index': int64},
  or with `decode=False` the stored bytes as 'encoded' instead of 'image'. `index` is the
  example's position in the whole split: the stable identity augmentation keys derive from,
  whatever the host count.
  """

  num_classes: int
  class_names: tuple[str, ...]
  host_indices: np.ndarray  # Indices (in the split) of this host's share, in split order.
  split_size: int  # Examples in the whole split.
  # Items of the share in split order before reading: {'index'} of a folder's files (`read`
  # reads them), or examples of a tfds split read through tfds (mock data).
  items: Callable[[], tf.data.Dataset]
  read: Callable[[dict], dict] | None = None  # item -> its 'encoded' bytes and 'label' (files)
  decode: bool = True  # 'encoded' -> 'image' after reading.
  # Decode big JPEGs at reduced scale, keeping their shorter side >= this (0 = full size).
  min_decoded_side: int = 0
  shards: Shards | None = None  # tfds shard files: read directly, in windows (epochs).
  keep: np.ndarray | None = None  # bool [split_size]: the subset trained on; None = all.
  labelled: np.ndarray | None = None  # bool [split_size]: labels kept here, -1 elsewhere.
  maps: tuple[Callable[[dict], dict], ...] = ()  # Applied to every example after decoding.
  encoded_bytes: int = 0  # This host's share as stored, for the cache rule (0 = unknown).
  name: str = ''  # For log lines.
  # Image folders: files left out because they cannot be decoded (image_check.py).
  skipped_paths: tuple[str, ...] = ()
  # False for folders checked by headers only: a corrupt file then fails when decoded and is
  # dropped (TF logs it).
  fully_checked: bool = True

  @property
  def num_examples(self) -> int:
    """Examples in the (sub)set, all hosts together."""
    return self.split_size if self.keep is None else int(self.keep.sum())

  @property
  def num_skipped(self) -> int:
    return len(self.skipped_paths)

  @property
  def num_host_examples(self) -> int:
    if self.keep is None:
      return len(self.host_indices)
    return int(self.keep[self.host_indices].sum())

  @property
  def dataset(self) -> tf.data.Dataset:
    """This host's examples in split order, nothing cached."""
    return self.ordered(cache=False)

  def _split_mask(self, indices: np.ndarray) -> np.ndarray:
    """bool [split_size], True at `indices`."""
    mask = np.zeros([self.split_size], bool)
    mask[indices] = True
    return mask

  def restrict(self, indices: np.ndarray) -> 'Source':
    """Only the examples whose split index is in `indices` (each host keeps its own of them)."""
    keep = self._split_mask(indices)
    return dataclasses.replace(self, keep=keep if self.keep is None else keep & self.keep)

  def hide_labels_outside(self, indices: np.ndarray) -> 'Source':
    """All examples, with label -1 except those whose split index is in `indices`."""
    return dataclasses.replace(self, labelled=self._split_mask(indices))

  def map(self, fn: Callable[[dict], dict]) -> 'Source':
    """The same source with `fn` applied to every (decoded) example; order is unchanged."""
    return dataclasses.replace(self, maps=self.maps + (fn,))

  def cache_kind(self, cache: bool) -> str:
    """'decoded', 'encoded' or '' (nothing): what `cache=True` may cache, logged once (module
    docstring)."""
    if not cache:
      return ''
    ram = host_ram_bytes()
    budget = CACHE_RAM_FRACTION * ram
    decoded_bytes = 0
    if self.decode:
      shape = self._decoded(self._encoded()).element_spec['image'].shape
      if shape.is_fully_defined():  # uint8 canvases of a fixed size.
        decoded_bytes = self.num_host_examples * shape.num_elements()
    if 0 < decoded_bytes <= budget:
      kind, size = 'decoded', decoded_bytes
    elif 0 < self.encoded_bytes <= budget:
      kind, size = 'encoded', self.encoded_bytes
    else:
      kind, size = '', decoded_bytes if self.decode else self.encoded_bytes
    amount = f'{size / 1e6:,.0f} MB' if size else 'size unknown'
    what = f'the {kind} images of this host ({amount}' if kind else f'nothing ({amount}'
    log_once(('cache', self.name, kind), 'data.cache for %s: caching %s; limit %.0f%% of %.0f GB '
             'RAM).', self.name, what, 100 * CACHE_RAM_FRACTION, ram / 1e9)
    return kind

  def ordered(self, cache: bool = False) -> tf.data.Dataset:
    """This host's examples in split order; `cache` caches what the cache rule allows."""
    return self._ordered(self.cache_kind(cache))

  def _ordered(self, kind: str) -> tf.data.Dataset:
    """`ordered` with the cache kind already decided."""
    dataset = self._encoded()
    if kind == 'encoded':
      dataset = dataset.cache()
    dataset = self._decoded(dataset)
    return dataset.cache() if kind == 'decoded' else dataset

  def epochs(
    self,
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
    epoch_size = self.num_host_examples
    if epoch_size == 0:
      raise ValueError('The input has no examples on this host; check the dataset and split.')
    first_epoch, skip = divmod(start_example, epoch_size)
    stop = _MAX_EPOCHS if num_epochs is None else num_epochs
    kind = self.cache_kind(cache)
    if self.shards is not None and not kind:
      return self._shard_epochs(seed, shuffle_buffer, first_epoch, skip, stop, process_index)
    # Shuffled before decoding unless the decoded canvases are cached. Files' indices and cached
    # tensors (referenced, not copied) are cheap: the buffer holds the whole share, a full
    # permutation (image folders list classes in order). Examples read through tfds (mock data)
    # are not: a buffer of `shuffle_buffer`.
    buffer = epoch_size
    if kind == 'decoded':
      items, after = self._ordered(kind), lambda dataset: dataset
    elif kind == 'encoded':
      items, after = self._encoded().cache(), self._decoded
    else:
      items = self._select(self.items())
      after = lambda dataset: self._decoded(self._read(dataset))
      buffer = epoch_size if self.read is not None else shuffle_buffer

    def one_epoch(epoch: tf.Tensor) -> tf.data.Dataset:
      shuffled = items.shuffle(buffer, seed=_shuffle_seed(seed, process_index, epoch),
                               reshuffle_each_iteration=False)
      return shuffled.map(_with_epoch(epoch))

    return after(tf.data.Dataset.range(first_epoch, stop).flat_map(one_epoch).skip(skip))

  # --------------------------------------------------------------------------- the steps

  def _select(self, dataset: tf.data.Dataset, whole_share: bool = True) -> tf.data.Dataset:
    """Only the examples of `keep`; `whole_share`: the dataset is this host's whole share."""
    if self.keep is None:
      return dataset
    keep_table = tf.constant(self.keep)
    dataset = dataset.filter(lambda item: tf.gather(keep_table, item['index']))
    if not whole_share:
      return dataset
    # Known cardinality lets shuffles and skips reason about the epoch without reading it.
    return dataset.apply(tf.data.experimental.assert_cardinality(self.num_host_examples))

  def _read(self, items: tf.data.Dataset) -> tf.data.Dataset:
    """Items (split indices of files) -> the examples they name, through `read`."""
    if self.read is None:
      return items
    read = lambda item: {**item, **self.read(item)}
    return items.map(read, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)

  def _parse(self, records: tf.data.Dataset, whole_share: bool = True) -> tf.data.Dataset:
    """Shard records -> {'encoded', 'label', 'index'}, only the examples kept."""
    one = lambda item: {**self.shards.parse(item['record']), 'index': item['index']}
    parsed = records.map(one, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    return self._select(parsed, whole_share)

  def _encoded(self) -> tf.data.Dataset:
    """This host's examples in split order, before decoding."""
    if self.shards is not None:
      pieces = tf.data.Dataset.range(len(self.shards.filenames))
      return self._parse(pieces.flat_map(self.shards.read))
    return self._read(self._select(self.items()))

  def _decoded(self, dataset: tf.data.Dataset) -> tf.data.Dataset:
    """Encoded examples decoded (when the source decodes), labels hidden outside `labelled`,
    then the maps applied."""
    parallel = dict(num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    if self.decode and 'encoded' in dataset.element_spec:
      decode = lambda x: {**{k: v for k, v in x.items() if k != 'encoded'},
                          'image': decode_bytes(x['encoded'], self.min_decoded_side)}
      dataset = dataset.map(decode, **parallel)
      if not self.fully_checked:
        # Headers only were checked: a corrupt file fails here and is dropped (TF logs it)
        # rather than stopping training. The counts are then upper bounds.
        dataset = dataset.ignore_errors(log_warning=True)
    if self.labelled is not None:
      labelled = tf.constant(self.labelled)
      dataset = dataset.map(lambda x: {**x, 'label': tf.where(
        tf.gather(labelled, x['index']), tf.cast(x['label'], tf.int32), -1)}, **parallel)
    for fn in self.maps:
      dataset = dataset.map(fn, **parallel)
    return dataset

  def _shard_epochs(
    self, seed: int, shuffle_buffer: int, first_epoch: int, skip: int, stop: int,
    process_index: int,
  ) -> tf.data.Dataset:
    """Shard files in a random order per epoch, read in fully shuffled windows (docstring)."""
    shards = self.shards
    num_pieces = len(shards.filenames)
    per_window = max(1, min(num_pieces, math.ceil(shuffle_buffer / max(shards.takes.max(), 1))))
    kept = shards.takes
    if self.keep is not None:
      cumulative = np.concatenate([[0], np.cumsum(self.keep)])
      kept = cumulative[shards.starts + shards.takes] - cumulative[shards.starts]

    def piece_order(epoch) -> tf.Tensor:
      noise = tf.random.stateless_uniform([num_pieces], purpose_seed(
        seed, SHUFFLE_PURPOSE, process_index, epoch, -1))
      return tf.argsort(noise)

    def read_window(epoch: tf.Tensor, window: tf.Tensor, pieces: tf.Tensor) -> tf.data.Dataset:
      records = tf.data.Dataset.from_tensor_slices(pieces).interleave(
        shards.read, cycle_length=per_window, block_length=1,
        num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
      shuffled = self._parse(records, whole_share=False).shuffle(
        int(per_window * shards.takes.max()),
        seed=_shuffle_seed(seed, process_index, epoch, window), reshuffle_each_iteration=False)
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
    return self._decoded(first.concatenate(rest))


def _with_epoch(epoch: tf.Tensor):
  return lambda example: {**example, 'epoch': tf.cast(epoch, tf.int32)}
