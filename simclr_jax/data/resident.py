"""Device-resident training data (`data.device_resident=True`): the source that lives on device.

The whole train split sits on every device as uint8 canvases with their sizes
(`device_data.put_on_mesh`). Each step the host sends only the batch's example indices, labels
and epochs, drawn from (seed, epoch) exactly as `device_data.batch_indices`; the jitted step
gathers the canvases and builds the views with the same device half as the host path
(views.py). Needs only JAX: TensorFlow is never imported.
"""

import math
from typing import Any, Callable, Iterator

import jax
import ml_collections
import numpy as np

from simclr_jax.data import device_data, subsets



def _split(config: ml_collections.ConfigDict, split: str) -> device_data.HostSplit:
  data = config.data
  return device_data.load_split(data.dataset, split, data.folder, data.tfds_data_dir)


def labelled_positions(config: ml_collections.ConfigDict, labels: np.ndarray) -> np.ndarray:
  return subsets.balanced_subset(
    labels, seed=config.seed, fraction=config.finetune.label_fraction,
    per_class=config.finetune.examples_per_class,
  )


def make_train_data(config: ml_collections.ConfigDict, stage: str, mesh):
  """(num_examples, class_names, host-batch iterator factory, replicated dataset) of a stage."""
  split = _split(config, config.data.train_split)
  labels = split.labels.astype(np.int32)
  if stage in ('finetune', 'supervised'):
    pool = labelled_positions(config, labels)  # Train on the labelled subset only.
  else:
    pool = np.arange(len(labels))
    if stage == 'distill':  # Labels only where the labelled subset has them.
      keep = np.zeros(len(labels), bool)
      if config.distill.label_weight > 0:
        keep[labelled_positions(config, labels)] = True
      labels = np.where(keep, labels, -1).astype(np.int32)
  dataset = device_data.put_on_mesh(mesh, split)
  global_batch = config.train.global_batch_size
  host_batch = global_batch // jax.process_count()
  first = jax.process_index() * host_batch

  def make_iterator(start_step: int) -> Iterator[dict[str, np.ndarray]]:
    step = start_step
    while True:
      order = np.asarray(device_data.batch_indices(config.seed, step, global_batch, len(pool)))
      mine = slice(first, first + host_batch)
      index = pool[order[mine]].astype(np.int32)
      positions = step * global_batch + np.arange(global_batch)[mine]
      epoch = (positions // len(pool)).astype(np.int32)
      yield {'index': index, 'label': labels[index], 'epoch': epoch}
      step += 1

  return (len(pool), split.class_names, make_iterator,
          {'images': dataset.images, 'sizes': dataset.sizes})


def eval_preprocess(images: np.ndarray, image_size: int, crop_proportion: float) -> np.ndarray:
  """Official eval view on uint8 [B, H, W, 3]: centre crop (none at <= 32 px), bicubic resize."""
  images = images.astype(np.float32) / 255.0
  height, width = images.shape[1:3]
  if image_size > 32:
    side = int(np.rint(crop_proportion * min(height, width)))
    top, left = (height - side + 1) // 2, (width - side + 1) // 2
    images = images[:, top : top + side, left : left + side]
  if images.shape[1:3] != (image_size, image_size):
    images = np.asarray(jax.image.resize(
      images, (len(images), image_size, image_size, 3), 'bicubic', antialias=False))
  return np.clip(images, 0.0, 1.0)


def make_eval_iterator(
  config: ml_collections.ConfigDict, split: str, max_examples: int = 0
) -> tuple[int, int, Callable[[], Iterator[dict[str, np.ndarray]]]]:
  """(num_examples, num_classes, factory) of padded, masked eval batches of this host."""
  host_split = _split(config, split)
  count = len(host_split.labels)
  if 0 < max_examples < count:
    count = max_examples
  mine = np.arange(jax.process_index(), count, jax.process_count())
  host_batch = config.train.eval_batch_size // jax.process_count()
  num_batches = math.ceil(math.ceil(count / jax.process_count()) / host_batch)

  def make_iterator() -> Iterator[dict[str, Any]]:
    for b in range(num_batches):
      index = mine[b * host_batch : (b + 1) * host_batch]
      real = len(index)
      padded = np.zeros(host_batch, np.int32)
      padded[:real] = index
      mask = (np.arange(host_batch) < real).astype(np.float32)
      images = eval_preprocess(host_split.images[padded], config.data.image_size,
                               config.data.eval_crop_proportion)
      yield {'image': images, 'label': host_split.labels[padded].astype(np.int32),
             'index': padded, 'mask': mask}

  return count, len(host_split.class_names), make_iterator
