"""Where examples come from (tfds datasets, image folders, the embedded demo set) and in what order.

A `Source` is one host's share of a split. It yields examples
`{'image': uint8 [H, W, 3], 'label': int32 (-1 = unlabeled), 'index': int64}`, or with
`decode=False` the stored bytes as `{'encoded': tf.string, 'label', 'index'}` so that the
pipelines decode only crop windows (pipeline.py). `index` is the example's position in the whole
split: a stable identity from which augmentation seeds are derived, whatever the host count.

Each host opens only its own files:
  * image folders: every host lists the paths, keeps those whose position % process_count ==
    process_index and reads only those files;
  * tfds (tfrecord shards): each host takes a contiguous 1/process_count of the split, as
    `tfds.even_splits` does, and reads only the shard files that hold it (one shard at each end
    may be shared with a neighbour; the records before the host's part are skipped there).

Two orders:
  * `ordered(cache)`: the share in split order (evaluation, features, plots);
  * `epochs(...)`: the training stream, every epoch a fresh permutation from
    (seed, host, epoch), with an 'epoch' field, starting `start_example` examples in. The work a
    resume does before its first example is bounded:
      - folders: the shuffle runs over the file paths, so skipping reads nothing;
      - tfds shards: an epoch is the host's shard files in a random order, read in windows of
        `ceil(shuffle_buffer / records per shard)` files whose records are fully permuted
        (the window is the shuffle buffer); a resume skips whole windows by arithmetic and reads
        at most one window (the shuffle buffer plus at most one shard);
      - a cached source is shuffled in memory (the cache is filled once, as training would).

What is cached (`cache=True` allows it) is decided here, from sizes known before reading: the
decoded images when this host's share provably fits in `CACHE_RAM_FRACTION` of the host's RAM
(folder headers, or a tfds feature of static shape), otherwise the encoded bytes when those fit
(file sizes, tfds split bytes), otherwise nothing. The decision is logged in one line.
"""

import dataclasses
import math
import os
from typing import Callable

import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds
from absl import logging

from simclr_jax.data import folders, image_check
from simclr_jax.errors import ConfigError

demo_data_dir = folders.demo_data_dir  # Re-exported: callers use sources.demo_data_dir().
KNOWN_TFDS_EXAMPLES = 'cifar10, cifar100, stl10, imagenet2012, imagenet2012_subset/1pct'
CACHE_RAM_FRACTION = 0.25  # A cache may take at most this share of the host's memory.
# Purposes folded into the root seed (shared with pipeline.py), so streams never share bits.
SHUFFLE_PURPOSE = 1
_MAX_EPOCHS = 2**62

_ANNOUNCED: set[tuple] = set()  # Listings and cache decisions already logged by this process.


def _log_once(key: tuple, message: str, *args) -> None:
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


def _decode_bytes(encoded: tf.Tensor, min_side: int = 0) -> tf.Tensor:
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


# ----------------------------------------------------------------------------- the Source


@dataclasses.dataclass(frozen=True)
class _Shards:
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
  """One host's share of a split (see the module docstring); build with `load`."""

  num_classes: int
  class_names: tuple[str, ...]
  host_indices: np.ndarray  # Indices (in the split) of this host's share, in split order.
  split_size: int  # Examples in the whole split.
  # Items of the share in split order before reading: file paths of a folder, records of a tfds
  # split read through tfds, or the examples themselves (`as_source`).
  items: Callable[[], tf.data.Dataset]
  read: Callable[[dict], dict] | None = None  # item -> {'encoded', 'label', 'index'}
  decode: bool = True  # 'encoded' -> 'image' after reading.
  # Decode big JPEGs at reduced scale, keeping their shorter side >= this (0 = full size).
  min_decoded_side: int = 0
  shards: _Shards | None = None  # tfds shard files: read directly, in windows (epochs).
  keep: np.ndarray | None = None  # bool [split_size]: the subset trained on; None = all.
  maps: tuple[Callable[[dict], dict], ...] = ()  # Applied to every example after decoding.
  # Sizes of this host's share for the cache rule (0 = unknown).
  decoded_bytes: int = 0
  encoded_bytes: int = 0
  name: str = ''  # For log lines.
  # Image folders: files left out because they cannot be decoded (image_check.py).
  num_skipped: int = 0
  skipped_paths: tuple[str, ...] = ()
  # False for folders checked by headers only: a corrupt file then fails when decoded and is
  # dropped (TF logs it).
  fully_checked: bool = True

  @property
  def num_examples(self) -> int:
    """Examples in the (sub)set, all hosts together."""
    return self.split_size if self.keep is None else int(self.keep.sum())

  @property
  def num_host_examples(self) -> int:
    if self.keep is None:
      return len(self.host_indices)
    return int(self.keep[self.host_indices].sum())

  @property
  def dataset(self) -> tf.data.Dataset:
    """This host's examples in split order, nothing cached."""
    return self.ordered(cache=False)

  def restrict(self, indices: np.ndarray) -> 'Source':
    """Only the examples whose split index is in `indices` (each host keeps its own of them)."""
    keep = np.zeros([self.split_size], bool)
    keep[indices] = True
    if self.keep is not None:
      keep &= self.keep
    return dataclasses.replace(self, keep=keep)

  def map(self, fn: Callable[[dict], dict]) -> 'Source':
    """The same source with `fn` applied to every (decoded) example; order is unchanged."""
    return dataclasses.replace(self, maps=self.maps + (fn,))

  # --------------------------------------------------------------------------- reading

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

  def _decoded(self, dataset: tf.data.Dataset) -> tf.data.Dataset:
    if self.decode and 'encoded' in dataset.element_spec:

      def decode(example: dict) -> dict:
        image = _to_rgb(_decode_bytes(example['encoded'], self.min_decoded_side))
        return {**_without(example, 'encoded'), 'image': image}

      dataset = dataset.map(decode, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
      if not self.fully_checked:
        # Headers only were checked: a corrupt file fails here and is dropped (TF logs it)
        # rather than stopping training. The counts are then upper bounds.
        dataset = dataset.ignore_errors(log_warning=True)
    for fn in self.maps:
      dataset = dataset.map(fn, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    return dataset

  def _read_items(self, items: tf.data.Dataset) -> tf.data.Dataset:
    if self.read is None:
      return items
    read = lambda item: {**_without(item, 'path'), **self.read(item)}  # Keeps 'epoch'.
    return items.map(read, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)

  def _cache_kind(self, cache: bool) -> str:
    """'decoded', 'encoded' or '' (nothing): what may be cached, logged once (module docstring)."""
    if not cache:
      return ''
    if self.read is None and self.shards is None:  # Examples given in memory (as_source).
      return 'decoded'
    budget = CACHE_RAM_FRACTION * host_ram_bytes()
    wants_decoded = self.decode
    if wants_decoded and 0 < self.decoded_bytes <= budget:
      kind, size = 'decoded', self.decoded_bytes
    elif 0 < self.encoded_bytes <= budget:
      kind, size = 'encoded', self.encoded_bytes
    else:
      kind, size = '', self.decoded_bytes if wants_decoded else self.encoded_bytes
    amount = f'{size / 1e6:,.0f} MB' if size else 'size unknown'
    what = f'the {kind} images of this host ({amount}' if kind else f'nothing ({amount}'
    _log_once(('cache', self.name, kind), 'data.cache for %s: caching %s; limit %.0f%% of %.0f GB '
              'RAM).', self.name, what, 100 * CACHE_RAM_FRACTION, host_ram_bytes() / 1e9)
    return kind

  def ordered(self, cache: bool = False) -> tf.data.Dataset:
    """This host's examples in split order; `cache` caches what the cache rule allows."""
    kind = self._cache_kind(cache)
    if self.shards is not None:
      pieces = tf.data.Dataset.range(len(self.shards.filenames))
      dataset = self._parse(pieces.flat_map(self.shards.read))
    else:
      dataset = self._read_items(self._select(self.items()))
    if kind == 'encoded':
      dataset = dataset.cache()
    dataset = self._decoded(dataset)
    if kind == 'decoded':
      dataset = dataset.cache()
    return dataset

  def _parse(self, records: tf.data.Dataset, whole_share: bool = True) -> tf.data.Dataset:
    def parse(item: dict) -> dict:
      return {**self.shards.parse(item['record']), 'index': item['index']}

    parsed = records.map(parse, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    return self._select(parsed, whole_share)

  # --------------------------------------------------------------------------- training order

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
    """The training stream: examples with an 'epoch' field, epochs from `start_example` on.

    Epoch e is a permutation drawn from (seed, host, epoch); see the module docstring for how
    each kind of source draws it and what a resume reads.
    """
    epoch_size = self.num_host_examples
    if epoch_size == 0:
      raise ValueError('The input has no examples on this host; check the dataset and split.')
    first_epoch, skip = divmod(start_example, epoch_size)
    stop = _MAX_EPOCHS if num_epochs is None else num_epochs
    kind = self._cache_kind(cache)
    if self.shards is not None and not kind:
      return self._shard_epochs(seed, shuffle_buffer, first_epoch, skip, stop, process_index)
    if kind:
      items, after = self.ordered(cache=True), lambda dataset: dataset
    else:  # Shuffle what is cheap to hold (paths, or in-memory examples), then read.
      items = self._select(self.items())
      after = lambda dataset: self._decoded(self._read_items(dataset))

    def one_epoch(epoch: tf.Tensor) -> tf.data.Dataset:
      shuffle_seed = _shuffle_seed(seed, process_index, epoch)
      shuffled = items.shuffle(shuffle_buffer, seed=shuffle_seed, reshuffle_each_iteration=False)
      return shuffled.map(lambda item: {**item, 'epoch': epoch})

    return after(tf.data.Dataset.range(first_epoch, stop).flat_map(one_epoch).skip(skip))

  def _shard_epochs(
    self, seed: int, shuffle_buffer: int, first_epoch: int, skip: int, stop: int,
    process_index: int,
  ) -> tf.data.Dataset:
    """Shard files in a random order per epoch, read in fully shuffled windows (docstring)."""
    shards = self.shards
    num_pieces = len(shards.filenames)
    per_window = max(1, min(num_pieces, math.ceil(shuffle_buffer / max(shards.takes.max(), 1))))
    window_capacity = int(per_window * shards.takes.max())
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
      examples = self._parse(records, whole_share=False)
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
    return self._decoded(first.concatenate(rest))


def as_source(examples: 'tf.data.Dataset | Source') -> Source:
  """A Source over in-memory examples ({'image' or 'encoded', 'label', 'index'} in order)."""
  if isinstance(examples, Source):
    return examples
  size = int(examples.cardinality())
  if size < 0:
    size = sum(1 for _ in examples)
  return Source(num_classes=0, class_names=(), host_indices=np.arange(size), split_size=size,
                items=lambda: examples, decode=False)


def _even_share(total: int, process_index: int, process_count: int) -> tuple[int, int]:
  """[start, end) of host `process_index` in `total` examples, as tfds.even_splits (first hosts
  take one more when the split does not divide)."""
  base, extra = divmod(total, process_count)
  start = process_index * base + min(process_index, extra)
  return start, start + base + (process_index < extra)


# ----------------------------------------------------------------------------- image folders


@dataclasses.dataclass(frozen=True)
class _Listing:
  paths: list[str]  # Readable images only, sorted: classes by name, then files by name.
  labels: list[int]
  class_names: tuple[str, ...]
  skipped: dict[str, str]  # Unreadable image files -> why.
  fully_checked: bool  # Pixels decoded at listing (else headers only, see image_check.py).


def _list_folder(root: str, split: str) -> tuple[list[str], list[int], tuple[str, ...]]:
  """Sorted (paths, labels, class_names) of the readable images of a split."""
  listing = _listing(root, split)
  return listing.paths, listing.labels, listing.class_names


def _listing(
  root: str, split: str, full_check_max_bytes: int = image_check.FULL_CHECK_MAX_BYTES
) -> _Listing:
  """The images of root/<split>/<class>/* or of a flat folder, unreadable ones set aside."""
  paths, labels, class_names = folders.list_image_folder(root, split)
  skipped, fully_checked = image_check.find_unreadable(
    paths, full_check_max_bytes=full_check_max_bytes)
  if len(skipped) == len(paths):
    example, reason = next(iter(skipped.items()))
    raise ConfigError(
      f'data.folder={root!r} split {split!r} has no readable image: all {len(paths)} files fail '
      f'to decode (e.g. {example}: {reason}); fix the files or point data.folder elsewhere.'
    )
  if skipped:
    labels = [label for path, label in zip(paths, labels) if path not in skipped]
    paths = [path for path in paths if path not in skipped]
  return _Listing(paths, labels, tuple(class_names), skipped, fully_checked)


def from_folder(
  root: str,
  split: str,
  *,
  process_index: int = 0,
  process_count: int = 1,
  full_check_max_bytes: int = image_check.FULL_CHECK_MAX_BYTES,
  decode: bool = True,
  max_examples: int = 0,
  min_decoded_side: int = 0,
) -> Source:
  """Images from root/<split>/<class>/*.{jpg,jpeg,png}, or a flat folder (labels -1).

  Order: classes sorted by name, files sorted by name within a class. Files that cannot be
  decoded are left out (indices count readable images only) and reported in `skipped_paths`.
  max_examples > 0 keeps the first max_examples images of the split.
  """
  listing = _listing(root, split, full_check_max_bytes)
  paths, labels, class_names = listing.paths, listing.labels, listing.class_names
  if 0 < max_examples < len(paths):
    paths, labels = paths[:max_examples], labels[:max_examples]
  _log_once((root, split), '%s/%s: %d images in %d classes.', root, split, len(paths),
            len(class_names))
  if listing.skipped:
    logging.warning('%s/%s: skipped %d unreadable image files (paths logged above).', root, split,
                    len(listing.skipped))
  host_indices = np.arange(process_index, len(paths), process_count)
  host_paths = [paths[i] for i in host_indices]
  positions = {
    'path': tf.constant(host_paths, tf.string),
    'label': tf.constant([labels[i] for i in host_indices], tf.int32),
    'index': tf.constant(host_indices, tf.int64),
  }
  read = lambda x: {'encoded': tf.io.read_file(x['path']), 'label': x['label'],
                    'index': x['index']}
  return Source(
    num_classes=len(class_names),
    class_names=class_names,
    host_indices=host_indices,
    split_size=len(paths),
    items=lambda: tf.data.Dataset.from_tensor_slices(positions),
    read=read,
    decode=decode,
    min_decoded_side=min_decoded_side,
    decoded_bytes=image_check.decoded_bytes(host_paths, min_decoded_side if decode else 0),
    encoded_bytes=sum(os.path.getsize(path) for path in host_paths),
    name=f'{root}/{split}',
    num_skipped=len(listing.skipped),
    skipped_paths=tuple(sorted(listing.skipped)),
    fully_checked=listing.fully_checked,
  )


# ----------------------------------------------------------------------------- tfds


def _tfds_builder(name: str, data_dir: str | None):
  try:
    return tfds.builder(name, data_dir=data_dir)
  except tfds.core.registered.DatasetNotFoundError as error:
    raise ConfigError(
      f'data.dataset={name!r} is not a known tfds dataset; use e.g. {KNOWN_TFDS_EXAMPLES}, '
      "or data.dataset='folder' with data.folder=PATH."
    ) from error


def _host_shards(split_info, start: int, end: int, parse) -> _Shards | None:
  """The pieces of shard files holding examples [start, end) of a split, or None when the split
  is not stored as tfrecord files on disk (e.g. under tfds.testing.mock_data)."""
  try:
    instructions = split_info.file_instructions
  except Exception:  # noqa: BLE001 - any tfds layout we cannot read directly.
    return None
  if not instructions or not tf.io.gfile.exists(instructions[0].filename):
    return None
  filenames, skips, takes, starts = [], [], [], []
  position = 0
  for instruction in instructions:  # In split order; `position` = index of its first record.
    low, high = max(start, position), min(end, position + instruction.take)
    if low < high:
      filenames.append(instruction.filename)
      skips.append(instruction.skip + low - position)
      takes.append(high - low)
      starts.append(low)
    position += instruction.take
  as_int = lambda values: np.asarray(values, np.int64)
  return _Shards(np.asarray(filenames), as_int(skips), as_int(takes), as_int(starts), parse)


def from_tfds(
  name: str,
  split: str,
  *,
  data_dir: str | None = None,
  process_index: int = 0,
  process_count: int = 1,
  decode: bool = True,
  max_examples: int = 0,
  min_decoded_side: int = 0,
) -> Source:
  """A prepared tfds dataset; this host reads only the shard files of its contiguous share.

  Examples without a 'label' feature (e.g. STL-10 'unlabelled' has label -1 already) get -1.
  decode=False keeps the stored bytes (PNG for CIFAR, JPEG for ImageNet) as 'encoded'.
  max_examples > 0 keeps the first max_examples examples of the split.
  """
  builder = _tfds_builder(name, data_dir)
  splits = builder.info.splits  # Empty until prepared (and under tfds.testing.mock_data).
  split_info = None
  if splits:
    try:
      split_info = splits[split]
    except (KeyError, ValueError) as error:
      raise ConfigError(
        f'tfds dataset {name!r} has no split {split!r} (has: {", ".join(sorted(splits))}); set '
        'data.train_split / data.eval_split to one of them.'
      ) from error
  features = builder.info.features
  label_feature = features['label'] if 'label' in features else None
  class_names = tuple(getattr(label_feature, 'names', None) or ())
  num_classes = getattr(label_feature, 'num_classes', 0)
  skip_decoding = {'image': tfds.decode.SkipDecoding()}
  try:
    records = builder.as_dataset(split=split, shuffle_files=False, decoders=skip_decoding)
  except AssertionError as error:  # tfds asserts when the dataset was never prepared.
    raise ConfigError(
      f'data.dataset={name!r} is not prepared in data.tfds_data_dir={data_dir!r}; build it first '
      f'(`tfds build {name} --data_dir=...`; ImageNet needs a manual download).'
    ) from error
  split_size = split_info.num_examples if split_info else int(records.cardinality())
  if 0 < max_examples < split_size:
    split_size = max_examples
  start, end = _even_share(split_size, process_index, process_count)

  def example(parsed: dict) -> dict:
    label = parsed['label'] if 'label' in parsed else tf.constant(-1)
    return {'encoded': parsed['image'], 'label': tf.cast(label, tf.int32)}

  parse = lambda record: example(features.deserialize_example(record, decoders=skip_decoding))
  shards = _host_shards(split_info, start, end, parse) if split_info else None
  share = end - start
  image_shape = features['image'].shape
  decoded_bytes = share * math.prod(image_shape) if None not in image_shape else 0
  encoded_bytes = 0
  if split_info and split_info.num_bytes:
    encoded_bytes = int(split_info.num_bytes * share / max(split_info.num_examples, 1))

  def items() -> tf.data.Dataset:  # Through tfds (mock data, other file formats).
    enumerated = tf.data.Dataset.zip(tf.data.Dataset.range(split_size), records)
    host = enumerated.skip(start).take(share)
    return host.map(lambda index, record: {**example(record), 'index': index})

  return Source(
    num_classes=num_classes,
    class_names=class_names,
    host_indices=np.arange(start, end),
    split_size=split_size,
    items=items,
    decode=decode,
    min_decoded_side=min_decoded_side,
    shards=shards,
    decoded_bytes=decoded_bytes,
    encoded_bytes=encoded_bytes,
    name=f'{name}/{split}',
  )


def load(
  dataset: str,
  split: str,
  *,
  folder: str = '',
  data_dir: str | None = None,
  process_index: int = 0,
  process_count: int = 1,
  decode: bool = True,
  max_examples: int = 0,
  min_decoded_side: int = 0,
) -> Source:
  """The `data.dataset` config value -> Source: 'demo', 'folder' (with `folder`) or a tfds name.

  decode=False: examples hold the stored bytes ('encoded'), e.g. to read labels without
  decoding. min_decoded_side > 0: JPEGs far larger than that are decoded at 1/2-1/8 scale
  (`_decode_bytes`).
  """
  options = dict(process_index=process_index, process_count=process_count, decode=decode,
                 max_examples=max_examples, min_decoded_side=min_decoded_side)
  root = folders.local_root(dataset, folder)
  if root is not None:
    return from_folder(root, split, **options)
  return from_tfds(dataset, split, data_dir=data_dir, **options)
