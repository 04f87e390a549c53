"""Host input pipelines: a source's examples -> augmented, batched, numpy-friendly host batches.

    pretrain: shuffle per epoch -> two independent views -> batch -> blur per device group
    finetune: shuffle per epoch -> one crop + flip view -> batch
    eval:     in order -> centre crop -> batch, padded to full batches with a 0/1 `mask`
    raw:      shuffle per epoch -> uint8 at a fixed size -> batch (augmentation on device)

Sources give decoded images ('image': uint8 [H, W, 3]) or encoded bytes ('encoded': tf.string,
`sources.load(..., decode=False)`); every pipeline takes either. With encoded JPEGs a train view
decodes only its crop window (`augment.encoded_train_views`, `tf.image.decode_and_crop_jpeg`) and
eval only the centre crop, which is what large-image sets (ImageNet) want. What `cache=True`
keeps (decoded pixels, encoded bytes or nothing) is decided by the source from sizes known before
reading (sources.py). Decoded images are cropped in uint8 and only the crop becomes float.

Determinism: the stream is a pure function of `seed` (and the host's share of the data).
  * epoch e is a permutation drawn from (seed, 'shuffle', host, e) (`sources.Source.epochs`:
    shuffled paths for folders, shuffled windows of shard files for tfds);
  * an example's two views use seeds split from (seed, 'augment', e, example index), where the
    index is its position in the whole split (sources.py), so a view does not depend on the
    order in which tf.data happens to run the map, nor on the batch it lands in;
  * the blur of batch n uses a seed derived from (seed, 'blur', host, n).
Every random op is stateless (augment.py), and `Options().deterministic` keeps parallel maps in
order. Resuming at `start_batch` reproduces the same batches as an uninterrupted run.
"""

from collections.abc import Iterator

import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from simclr_jax.data import augment, sources

# Purposes folded into the root seed, so streams for different uses never share random bits
# (shuffling is sources.SHUFFLE_PURPOSE = 1).
_AUGMENT, _BLUR = 2, 3
_purpose_seed = sources.purpose_seed


def _options(threadpool_size: int) -> tf.data.Options:
  options = tf.data.Options()
  options.deterministic = True
  # As flax examples/imagenet input_pipeline.py: a private pool so the pipeline does not compete
  # with the JAX host threads, and no intra-op parallelism inside one element.
  options.threading.private_threadpool_size = threadpool_size
  options.threading.max_intra_op_parallelism = 1
  return options


def _shuffled_epochs(source, *, seed: int, shuffle_buffer: int, cache: bool, start_example: int,
                     process_index: int, num_epochs: int | None) -> tf.data.Dataset:
  """The source's training order (`sources.Source.epochs`); a tf.data.Dataset of in-order
  examples is treated as an in-memory source."""
  return sources.as_source(source).epochs(
    seed=seed, shuffle_buffer=shuffle_buffer, cache=cache, start_example=start_example,
    process_index=process_index, num_epochs=num_epochs)


def _view_seeds(seed: int, example: dict, num_views: int) -> tf.Tensor:
  """[num_views, 2] seeds of one example, from (seed, epoch, example index)."""
  example_seed = _purpose_seed(seed, _AUGMENT, example['epoch'], example['index'])
  return tf.random.experimental.stateless_split(example_seed, num=num_views)


def _to_float(image: tf.Tensor) -> tf.Tensor:
  return tf.image.convert_image_dtype(image, tf.float32)  # uint8 -> [0, 1] by /255 (official).


def _train_views(
  example: dict, seeds: tf.Tensor, image_size: int, color_jitter_strength: float
) -> list[tf.Tensor]:
  """One view per seed of seeds [V, 2], from 'encoded' bytes (crop windows only) or 'image'."""
  if 'encoded' in example:
    return augment.encoded_train_views(
      example['encoded'], seeds, image_size, color_jitter_strength)
  # Cropped in uint8, converted after: memory follows the crop, not the photo.
  return augment.decoded_train_views(example['image'], seeds, image_size, color_jitter_strength)


def _map_examples(dataset: tf.data.Dataset, fn, ignore_decode_errors: bool) -> tf.data.Dataset:
  dataset = dataset.map(fn, num_parallel_calls=tf.data.AUTOTUNE)
  if ignore_decode_errors:
    # Encoded images of a folder checked by headers only (image_check.py) are first decoded
    # here: drop a corrupt one (TF logs it) rather than stop training, as sources.py does for
    # decoded folders. Dropped before batching, so batches stay full and deterministic.
    dataset = dataset.ignore_errors(log_warning=True)
  return dataset


def _finish(dataset: tf.data.Dataset, threadpool_size: int) -> tf.data.Dataset:
  return dataset.prefetch(tf.data.AUTOTUNE).with_options(_options(threadpool_size))


def make_pretrain_dataset(
  source_ds: tf.data.Dataset,
  *,
  seed: int,
  host_batch_size: int,
  image_size: int,
  color_jitter_strength: float,
  use_blur: bool,
  num_local_devices: int,
  shuffle_buffer: int,
  cache: bool = False,
  start_batch: int = 0,
  process_index: int = 0,
  num_epochs: int | None = None,
  threadpool_size: int = 48,
  ignore_decode_errors: bool = False,
) -> tf.data.Dataset:
  """Infinite host batches {'view_a', 'view_b': float32 [B, S, S, 3], 'label': int32 [B]}.

  Two independent views per image (REFERENCE §5). With use_blur, each view's batch is blurred
  as `augment.batch_random_blur` with one group per local device (official: per replica batch).
  Batches do not respect epoch boundaries (drop_remainder only at the end of a finite run).
  `ignore_decode_errors`: skip examples whose encoded image fails to decode (for undecoded
  sources of folders checked by headers only, `Source.decode_errors_possible`).
  """
  if host_batch_size % num_local_devices:
    raise ValueError(
      f'host batch {host_batch_size} is not divisible by {num_local_devices} local devices; '
      'change train.global_batch_size.'
    )

  def two_views(example: dict) -> dict:
    views = _train_views(example, _view_seeds(seed, example, 2), image_size, color_jitter_strength)
    return {'view_a': views[0], 'view_b': views[1], 'label': example['label']}

  def blur(batch_number: tf.Tensor, batch: dict) -> dict:
    seeds = tf.random.experimental.stateless_split(
      _purpose_seed(seed, _BLUR, process_index, batch_number), num=2
    )
    for i, key in enumerate(('view_a', 'view_b')):
      batch[key] = augment.batch_random_blur(batch[key], seeds[i], num_local_devices)
    return batch

  dataset = _shuffled_epochs(
    source_ds, seed=seed, shuffle_buffer=shuffle_buffer, cache=cache,
    start_example=start_batch * host_batch_size, process_index=process_index,
    num_epochs=num_epochs,
  )
  dataset = _map_examples(dataset, two_views, ignore_decode_errors)
  dataset = dataset.batch(host_batch_size, drop_remainder=True)
  if use_blur:
    dataset = dataset.enumerate(start=start_batch).map(blur, num_parallel_calls=tf.data.AUTOTUNE)
  return _finish(dataset, threadpool_size)


def make_finetune_dataset(
  source_ds: tf.data.Dataset,
  *,
  seed: int,
  host_batch_size: int,
  image_size: int,
  shuffle_buffer: int,
  cache: bool = False,
  start_batch: int = 0,
  process_index: int = 0,
  num_epochs: int | None = None,
  threadpool_size: int = 48,
  ignore_decode_errors: bool = False,
) -> tf.data.Dataset:
  """Infinite host batches {'image': float32 [B, S, S, 3], 'label': int32 [B]}.

  Official fine-tuning / linear-eval view: random resized crop + flip, no colour, no blur.
  """

  def one_view(example: dict) -> dict:
    view = _train_views(example, _view_seeds(seed, example, 1), image_size, 0.0)[0]
    return {'image': view, 'label': example['label']}

  dataset = _shuffled_epochs(
    source_ds, seed=seed, shuffle_buffer=shuffle_buffer, cache=cache,
    start_example=start_batch * host_batch_size, process_index=process_index,
    num_epochs=num_epochs,
  )
  dataset = _map_examples(dataset, one_view, ignore_decode_errors)
  return _finish(dataset.batch(host_batch_size, drop_remainder=True), threadpool_size)


def make_eval_dataset(
  source_ds: tf.data.Dataset,
  *,
  batch_size: int,
  image_size: int,
  crop_proportion: float = augment.CROP_PROPORTION,
  num_batches: int | None = None,
  cache: bool = False,
  threadpool_size: int = 48,
) -> tf.data.Dataset:
  """Finite, in-order batches {'image': float32 [B,S,S,3], 'label', 'index': int32 [B], 'mask'}.

  The last batch is padded to `batch_size` with zero images, label 0 and mask 0 (official TF1
  eval padding), so a masked sum over all batches is exact. `num_batches` pads further with
  all-masked batches so that every host runs the same number of eval steps.
  """
  source_ds = sources.as_source(source_ds).ordered(cache)

  def preprocess(example: dict) -> dict:
    if 'encoded' not in example and image_size > 32:  # Centre crop in uint8, then float.
      window, _ = augment.slice_crop(
        example['image'], lambda shape: augment.center_crop_box(shape, crop_proportion))
      image = augment.preprocess_for_eval(_to_float(window), image_size, crop_proportion=1.0)
    elif 'encoded' not in example:
      image = augment.preprocess_for_eval(_to_float(example['image']), image_size, crop_proportion)
    elif image_size > 32:
      # Decode only the centre square; cropping that square again with proportion 1 is a no-op.
      window, _ = augment.decode_crop(
        example['encoded'], lambda shape: augment.center_crop_box(shape, crop_proportion))
      image = augment.preprocess_for_eval(_to_float(window), image_size, crop_proportion=1.0)
    else:
      window, _ = augment.decode_crop(example['encoded'], _whole_box)
      image = augment.preprocess_for_eval(_to_float(window), image_size, crop_proportion)
    return {
      'image': image,
      'label': example['label'],
      'index': tf.cast(example['index'], tf.int32),  # Position in the split (for ordering).
      'mask': tf.constant(1.0),
    }

  def pad(batch: dict) -> dict:
    missing = batch_size - tf.shape(batch['mask'])[0]
    padded = {}
    for key, value in batch.items():
      paddings = [[0, missing]] + [[0, 0]] * (value.shape.rank - 1)
      padded[key] = tf.pad(value, paddings)
      padded[key].set_shape([batch_size] + value.shape.as_list()[1:])
    return padded

  dataset = source_ds.map(preprocess, num_parallel_calls=tf.data.AUTOTUNE)
  dataset = dataset.batch(batch_size).map(pad)
  if num_batches is not None:
    have = int(dataset.cardinality())
    if have > num_batches:
      raise ValueError(f'eval needs {have} batches on this host but num_batches={num_batches}.')
    empty = tf.data.Dataset.from_tensors({
      'image': tf.zeros([batch_size, image_size, image_size, 3]),
      'label': tf.zeros([batch_size], tf.int32),
      'index': tf.zeros([batch_size], tf.int32),
      'mask': tf.zeros([batch_size]),
    })
    dataset = dataset.concatenate(empty.repeat()).take(num_batches)
  return _finish(dataset, threadpool_size)


def _whole_box(shape: tf.Tensor) -> tf.Tensor:
  return tf.stack([0, 0, shape[0], shape[1]])


def to_raw_size(example: dict, raw_size: int) -> tf.Tensor:
  """uint8 [raw_size, raw_size, 3] of an example's 'image' or 'encoded' image.

  An image of exactly raw_size passes unchanged; any other is cropped to the central square of
  its shorter side (decoding only that square for JPEGs), then resized (bilinear, antialiased)
  to raw_size and rounded. The device's random resized crop then samples from that square.
  """
  square = lambda shape: augment.center_crop_box(shape, crop_proportion=1.0)
  if 'encoded' in example:
    image, _ = augment.decode_crop(example['encoded'], square)
  else:
    image = example['image']
    box = square(tf.shape(image))
    image = image[box[0]:box[0] + box[2], box[1]:box[1] + box[3]]

  def resize() -> tf.Tensor:
    resized = tf.image.resize(image, [raw_size, raw_size], 'bilinear', antialias=True)
    return tf.cast(tf.clip_by_value(tf.round(resized), 0.0, 255.0), tf.uint8)

  height, width = tf.unstack(tf.shape(image)[:2])
  fits = tf.logical_and(tf.equal(height, raw_size), tf.equal(width, raw_size))
  image = tf.cond(fits, lambda: image, resize)
  return tf.reshape(image, [raw_size, raw_size, 3])


def make_raw_dataset(
  source_ds: tf.data.Dataset,
  *,
  seed: int,
  host_batch_size: int,
  raw_size: int,
  shuffle_buffer: int,
  cache: bool = False,
  start_batch: int = 0,
  process_index: int = 0,
  num_epochs: int | None = None,
  threadpool_size: int = 48,
  ignore_decode_errors: bool = False,
) -> tf.data.Dataset:
  """Infinite host batches {'image': uint8 [B, R, R, 3], 'label', 'index': int32 [B]} (R=raw_size).

  For augmentation on the device (`device_augment`): the host only decodes and brings each image
  to a fixed size (`to_raw_size`), so the random crop, flip, colour and blur run in the step.
  Same per-epoch (seed, host, epoch) shuffle and `start_batch` resume as the other pipelines;
  'index' (position in the split) lets the device derive per-example keys.
  """

  def fixed_size(example: dict) -> dict:
    return {
      'image': to_raw_size(example, raw_size),
      'label': tf.cast(example['label'], tf.int32),
      'index': tf.cast(example['index'], tf.int32),
    }

  dataset = _shuffled_epochs(
    source_ds, seed=seed, shuffle_buffer=shuffle_buffer, cache=cache,
    start_example=start_batch * host_batch_size, process_index=process_index,
    num_epochs=num_epochs,
  )
  dataset = _map_examples(dataset, fixed_size, ignore_decode_errors)
  return _finish(dataset.batch(host_batch_size, drop_remainder=True), threadpool_size)


def iterate_numpy(dataset: tf.data.Dataset) -> Iterator[dict[str, np.ndarray]]:
  """Batches as dicts of NumPy arrays (zero-copy where tf allows)."""
  return iter(tfds.as_numpy(dataset))
