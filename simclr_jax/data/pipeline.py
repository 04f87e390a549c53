"""The host half of the one data path: a source's examples -> batches of uint8 canvases.

    train: the source's epochs (reading.py) -> decode -> canvas -> batch
           {'image': uint8 [B, C, C, 3], 'size': int32 [B, 2], 'label', 'index', 'epoch': int32 [B]}
    eval:  in split order -> decode -> canvas -> batch, padded, with a 0/1 'mask'

No augmentation here: every random op runs on the device inside the step (views.py), keyed by
(seed, epoch, index), so the stream is a pure function of the seed and a resume at
`start_batch` reproduces an uninterrupted run.
"""

import math
from collections.abc import Iterator

import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from simclr_jax.data import sources


def _options(threadpool_size: int) -> tf.data.Options:
  options = tf.data.Options()
  options.deterministic = True
  # As flax examples/imagenet input_pipeline.py: a private pool so the pipeline does not compete
  # with the JAX host threads, and no intra-op parallelism inside one element.
  options.threading.private_threadpool_size = threadpool_size
  options.threading.max_intra_op_parallelism = 1
  return options


def place(canvas_size: int):
  """example -> the same with its image on a canvas (`to_canvas`), 'size', int32 label/index."""

  def place_one(example: dict) -> dict:
    canvas, size = to_canvas(example['image'], canvas_size)
    ids = {key: tf.cast(example[key], tf.int32) for key in ('label', 'index')}
    return {**example, 'image': canvas, 'size': size, **ids}

  return place_one


def _finish(dataset: tf.data.Dataset, threadpool_size: int) -> tf.data.Dataset:
  return dataset.prefetch(tf.data.AUTOTUNE).with_options(_options(threadpool_size))


def make_eval_dataset(
  source: sources.Source,
  *,
  batch_size: int,
  canvas_size: int,
  num_batches: int | None = None,
  cache: bool = False,
  threadpool_size: int = 48,
) -> tf.data.Dataset:
  """Finite, in-order batches of canvases {'image', 'size', 'label', 'index', 'mask'}.

  The device builds the eval view (views.make_eval_view). The last batch is padded to
  `batch_size` with empty canvases, size 0, label 0 and mask 0 (official TF1 eval padding), so a
  masked sum over all batches is exact. `num_batches` pads further with all-masked batches so
  that every host runs the same number of eval steps.
  """
  dataset = source.map(place(canvas_size)).ordered(cache)
  dataset = dataset.map(lambda example: {**example, 'mask': tf.constant(1.0)})
  needed = math.ceil(source.num_host_examples / batch_size)
  if num_batches is not None and needed > num_batches:
    raise ValueError(f'eval needs {needed} batches on this host but num_batches={num_batches}.')
  empty = tf.data.Dataset.from_tensors(tf.nest.map_structure(
    lambda spec: tf.zeros(spec.shape, spec.dtype), dataset.element_spec))
  dataset = dataset.concatenate(empty.repeat()).take(batch_size * (num_batches or needed))
  dataset = dataset.batch(batch_size, drop_remainder=True)
  return _finish(dataset, threadpool_size)


def to_canvas(image: tf.Tensor, canvas_size: int) -> tuple[tf.Tensor, tf.Tensor]:
  """(uint8 [C, C, 3] canvas, int32 [2] size): the image at the top left, zeros elsewhere.

  An image with a side over canvas_size is first scaled by canvas_size / its longer side (sides
  rounded, >= 1; bilinear, antialiased, rounded to uint8), so nothing is cut off.
  """
  height, width = tf.unstack(tf.shape(image)[:2])

  def shrink() -> tf.Tensor:
    scale = canvas_size / tf.cast(tf.maximum(height, width), tf.float32)
    new = tf.maximum(1, tf.cast(tf.round(tf.cast(tf.stack([height, width]), tf.float32) * scale),
                                tf.int32))
    resized = tf.image.resize(image, new, 'bilinear', antialias=True)
    return tf.cast(tf.clip_by_value(tf.round(resized), 0.0, 255.0), tf.uint8)

  fits = tf.logical_and(height <= canvas_size, width <= canvas_size)
  image = tf.cond(fits, lambda: tf.cast(image, tf.uint8), shrink)
  size = tf.shape(image)[:2]
  canvas = tf.pad(image, [[0, canvas_size - size[0]], [0, canvas_size - size[1]], [0, 0]])
  return tf.reshape(canvas, [canvas_size, canvas_size, 3]), tf.cast(size, tf.int32)


def make_train_dataset(
  source: sources.Source,
  *,
  seed: int,
  host_batch_size: int,
  canvas_size: int,
  shuffle_buffer: int,
  cache: bool = False,
  start_batch: int = 0,
  process_index: int = 0,
  num_epochs: int | None = None,
  threadpool_size: int = 48,
) -> tf.data.Dataset:
  """Infinite host batches of canvases (module docstring), every stage alike.

  Batches do not respect epoch boundaries (drop_remainder only at the end of a finite run).
  """
  dataset = source.map(place(canvas_size)).epochs(
    seed=seed, shuffle_buffer=shuffle_buffer, cache=cache,
    start_example=start_batch * host_batch_size, process_index=process_index,
    num_epochs=num_epochs,
  )
  return _finish(dataset.batch(host_batch_size, drop_remainder=True), threadpool_size)


def iterate_numpy(dataset: tf.data.Dataset) -> Iterator[dict[str, np.ndarray]]:
  """Batches as dicts of NumPy arrays (zero-copy where tf allows)."""
  return iter(tfds.as_numpy(dataset))
