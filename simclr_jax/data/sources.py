"""Where examples come from: tfds datasets, image folders, the embedded demo set.

Every source is a `Source`: a `tf.data.Dataset` of
`{'image': uint8 [H, W, 3], 'label': int32 (-1 = unlabeled), 'index': int64}` in a fixed order,
holding only this host's share, plus metadata. `index` is the example's position in the whole
split (before host sharding): a stable identity from which augmentation seeds are derived.

With `decode=False` the examples hold the encoded file bytes instead,
`{'encoded': tf.string, 'label', 'index'}`, so the pipelines decode only the crop windows of
JPEGs (pipeline.py); keep decode=True for small sets cached in memory.

Host sharding keeps the examples whose position % process_count == process_index, so the hosts'
shares are disjoint, cover the split and do not depend on timing.
"""

import dataclasses

import tensorflow as tf
import tensorflow_datasets as tfds
from absl import logging

from simclr_jax.data import folders, image_check
from simclr_jax.errors import ConfigError

IMAGE_EXTENSIONS = folders.IMAGE_EXTENSIONS
demo_data_dir = folders.demo_data_dir  # Re-exported: callers use sources.demo_data_dir().
KNOWN_TFDS_EXAMPLES = 'cifar10, cifar100, stl10, imagenet2012, imagenet2012_subset/1pct'

_ANNOUNCED: set[tuple[str, str]] = set()  # (root, split) listings already logged.


@dataclasses.dataclass(frozen=True)
class Source:
  dataset: tf.data.Dataset  # This host's examples, in a fixed order.
  num_examples: int  # In the whole split, all hosts together.
  num_host_examples: int  # In this host's share.
  num_classes: int
  class_names: tuple[str, ...]
  # Image folders: files left out because they cannot be decoded (image_check.py).
  num_skipped: int = 0
  skipped_paths: tuple[str, ...] = ()
  # Undecoded images of a folder checked by headers only: a corrupt file fails when the pipeline
  # decodes it; pass this as the pipelines' `ignore_decode_errors`.
  decode_errors_possible: bool = False


def _host_count(total: int, process_index: int, process_count: int) -> int:
  return len(range(process_index, total, process_count))


def _to_rgb(image: tf.Tensor) -> tf.Tensor:
  """Grayscale -> 3 equal channels, RGBA -> RGB (alpha dropped)."""
  channels = tf.shape(image)[-1]
  image = tf.cond(channels == 1, lambda: tf.tile(image[..., :1], [1, 1, 3]), lambda: image)
  image = image[..., :3]
  image.set_shape([None, None, 3])
  return image


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


def _decode_file(path: tf.Tensor) -> tf.Tensor:
  image = tf.io.decode_image(tf.io.read_file(path), channels=3, expand_animations=False)
  image.set_shape([None, None, 3])
  return image


def from_folder(
  root: str,
  split: str,
  *,
  process_index: int = 0,
  process_count: int = 1,
  full_check_max_bytes: int = image_check.FULL_CHECK_MAX_BYTES,
  decode: bool = True,
) -> Source:
  """Images from root/<split>/<class>/*.{jpg,jpeg,png}, or a flat folder (labels -1).

  Order: classes sorted by name, files sorted by name within a class. Files that cannot be
  decoded are left out (indices count readable images only) and reported in `skipped_paths`.
  decode=False yields the file bytes as 'encoded' (the listing has already checked them).
  """
  listing = _listing(root, split, full_check_max_bytes)
  paths, labels, class_names = listing.paths, listing.labels, listing.class_names
  if (root, split) not in _ANNOUNCED:  # Once per process: stages and kNN list it again.
    _ANNOUNCED.add((root, split))
    logging.info('%s/%s: %d images in %d classes.', root, split, len(paths), len(class_names))
  if listing.skipped:
    logging.warning('%s/%s: skipped %d unreadable image files (paths logged above).', root, split,
                    len(listing.skipped))
  positions = tf.data.Dataset.from_tensor_slices({
    'path': paths,
    'label': tf.constant(labels, tf.int32),
    'index': tf.range(len(paths), dtype=tf.int64),
  })
  if decode:
    read = lambda x: {'image': _decode_file(x['path']), 'label': x['label'], 'index': x['index']}
  else:
    read = lambda x: {'encoded': tf.io.read_file(x['path']), 'label': x['label'],
                      'index': x['index']}
  dataset = positions.shard(process_count, process_index).map(
    read, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True
  )
  if not listing.fully_checked:
    # Headers only were checked: a corrupt file fails here, and is dropped (TF logs the error)
    # rather than stopping training. The counts above are then upper bounds.
    dataset = dataset.ignore_errors(log_warning=True)
  return Source(
    dataset=dataset,
    num_examples=len(paths),
    num_host_examples=_host_count(len(paths), process_index, process_count),
    num_classes=len(class_names),
    class_names=class_names,
    num_skipped=len(listing.skipped),
    skipped_paths=tuple(sorted(listing.skipped)),
    decode_errors_possible=not decode and not listing.fully_checked,
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


def from_tfds(
  name: str,
  split: str,
  *,
  data_dir: str | None = None,
  process_index: int = 0,
  process_count: int = 1,
  decode: bool = True,
) -> Source:
  """A prepared tfds dataset (`tfds.builder(name, data_dir).as_dataset(split)`).

  Examples without a 'label' feature (e.g. STL-10 'unlabelled' has label -1 already) get -1.
  Images are read undecoded, sharded by position, then decoded, so each host decodes only its
  share (every host still reads the records; for pod-scale ImageNet prefer file-level sharding).
  decode=False keeps the stored bytes (PNG for CIFAR, JPEG for ImageNet) as 'encoded'.
  """
  builder = _tfds_builder(name, data_dir)
  splits = builder.info.splits  # Empty until prepared (and under tfds.testing.mock_data).
  if splits:
    try:
      num_examples = splits[split].num_examples
    except (KeyError, ValueError) as error:
      raise ConfigError(
        f'tfds dataset {name!r} has no split {split!r} (has: {", ".join(sorted(splits))}); set '
        'data.train_split / data.eval_split to one of them.'
      ) from error
  features = builder.info.features
  label_feature = features['label'] if 'label' in features else None
  class_names = tuple(getattr(label_feature, 'names', None) or ())
  num_classes = getattr(label_feature, 'num_classes', 0)
  try:
    dataset = builder.as_dataset(
      split=split, shuffle_files=False, decoders={'image': tfds.decode.SkipDecoding()}
    )
  except AssertionError as error:  # tfds asserts when the dataset was never prepared.
    raise ConfigError(
      f'data.dataset={name!r} is not prepared in data.tfds_data_dir={data_dir!r}; build it first '
      f'(`tfds build {name} --data_dir=...`; ImageNet needs a manual download).'
    ) from error
  if not splits:
    num_examples = int(dataset.cardinality())
  image_feature = builder.info.features['image']

  def to_example(index: tf.Tensor, example: dict) -> dict:
    label = example['label'] if 'label' in example else tf.constant(-1)
    if not decode:
      return {'encoded': example['image'], 'label': tf.cast(label, tf.int32), 'index': index}
    return {
      'image': _to_rgb(image_feature.decode_example(example['image'])),
      'label': tf.cast(label, tf.int32),
      'index': index,
    }

  dataset = dataset.enumerate().shard(process_count, process_index)
  dataset = dataset.map(to_example, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
  return Source(
    dataset=dataset,
    num_examples=num_examples,
    num_host_examples=_host_count(num_examples, process_index, process_count),
    num_classes=num_classes,
    class_names=class_names,
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
) -> Source:
  """The `data.dataset` config value -> Source: 'demo', 'folder' (with `folder`) or a tfds name.

  decode=False: examples hold the encoded bytes ('encoded') for crop-window decoding in the
  pipelines; best for large JPEG sets. decode=True: decoded 'image', best with cache=True.
  """
  sharding = dict(process_index=process_index, process_count=process_count, decode=decode)
  if dataset == 'demo':
    return from_folder(demo_data_dir(), split, **sharding)
  if dataset == 'folder':
    if not folder:
      raise ConfigError("data.dataset='folder' needs data.folder=PATH (root/<split>/<class>/*).")
    return from_folder(folder, split, **sharding)
  return from_tfds(dataset, split, data_dir=data_dir, **sharding)
