"""Where examples come from: tfds datasets, image folders, the embedded demo set, each as a
`reading.Source` (one host's share of a split; reading.py says how it is read and cached).

Each host opens only its own files:
  * image folders: every host lists the paths, keeps those whose position % process_count ==
    process_index and reads only those files;
  * tfds (tfrecord shards): each host takes a contiguous 1/process_count of the split, as
    `tfds.even_splits` does, and reads only the shard files that hold it (one shard at each end
    may be shared with a neighbour; the records before the host's part are skipped there).
"""


import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds
from absl import logging

from simclr_jax import fs
from simclr_jax.data import folders, image_check, reading
from simclr_jax.errors import ConfigError

demo_data_dir = folders.demo_data_dir  # Re-exported: callers use sources.demo_data_dir().
KNOWN_TFDS_EXAMPLES = 'cifar10, cifar100, stl10, imagenet2012, imagenet2012_subset/1pct'
Source = reading.Source  # Re-exported: built here, defined (and read) in reading.py.


def _even_share(total: int, process_index: int, process_count: int) -> tuple[int, int]:
  """[start, end) of host `process_index` in `total` examples, as tfds.even_splits (first hosts
  take one more when the split does not divide)."""
  base, extra = divmod(total, process_count)
  start = process_index * base + min(process_index, extra)
  return start, start + base + (process_index < extra)


# ----------------------------------------------------------------------------- image folders


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
  listing = folders.list_readable(root, split, full_check_max_bytes)
  paths, labels, class_names = listing.paths, listing.labels, listing.class_names
  if 0 < max_examples < len(paths):
    paths, labels = paths[:max_examples], labels[:max_examples]
  reading.log_once((root, split), '%s/%s: %d images in %d classes.', root, split, len(paths),
                   len(class_names))
  if listing.skipped:
    logging.warning('%s/%s: skipped %d unreadable image files (paths logged above).', root, split,
                    len(listing.skipped))
  host_indices = np.arange(process_index, len(paths), process_count)
  host_paths = [paths[i] for i in host_indices]
  path_table = tf.constant(host_paths, tf.string)
  label_table = tf.constant([labels[i] for i in host_indices], tf.int32)

  def read(item: dict) -> dict:  # Items are split indices only: a shuffle buffer holds ints.
    position = (item['index'] - process_index) // process_count  # In this host's share.
    return {'encoded': tf.io.read_file(tf.gather(path_table, position)),
            'label': tf.gather(label_table, position)}

  return Source(
    num_classes=len(class_names),
    class_names=class_names,
    host_indices=host_indices,
    split_size=len(paths),
    items=lambda: tf.data.Dataset.from_tensor_slices({'index': tf.constant(host_indices)}),
    read=read,
    decode=decode,
    min_decoded_side=min_decoded_side,
    encoded_bytes=sum(listing.sizes[i] for i in host_indices),
    name=f'{root}/{split}',
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


def _host_shards(split_info, start: int, end: int, parse) -> reading.Shards | None:
  """The pieces of shard files holding examples [start, end) of a split, or None when the split
  is not stored as tfrecord files on disk (e.g. under tfds.testing.mock_data)."""
  try:
    instructions = split_info.file_instructions
  except Exception:  # noqa: BLE001 - any tfds layout we cannot read directly.
    return None
  if not instructions or not fs.exists(instructions[0].filename):
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
  return reading.Shards(np.asarray(filenames), as_int(skips), as_int(takes), as_int(starts), parse)


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
  file_format = builder.info.file_format
  # tfds's as_dataset (tf.data) reads tfrecord only; ArrayRecord, e.g., only as_data_source.
  if file_format not in (None, tfds.core.FileFormat.TFRECORD):
    raise ConfigError(
      f'data.dataset={name!r} is stored as {file_format.value} files, which tf.data cannot read; '
      f'rebuild it as tfrecord (`tfds build {name} --file_format=tfrecord --data_dir=...`).')
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
    encoded_bytes=encoded_bytes,
    name=f'{name}/{split}',
  )


def load(dataset: str, split: str, *, folder: str = '', data_dir: str | None = None,
         **options) -> Source:
  """The `data.dataset` config value -> Source: 'demo', 'folder' (with `folder`) or a tfds name.

  options (as `from_folder` / `from_tfds`): process_index, process_count; decode=False keeps
  the stored bytes ('encoded'), e.g. to read labels without decoding; max_examples > 0 keeps the
  first examples of the split; min_decoded_side > 0 decodes JPEGs far larger than that at
  1/2-1/8 scale (`reading.decode_bytes`).
  """
  root = folders.local_root(dataset, folder)
  if root is not None:
    return from_folder(root, split, **options)
  return from_tfds(dataset, split, data_dir=data_dir, **options)
