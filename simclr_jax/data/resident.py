"""Device-resident data (`data.device_resident=True`): a whole split on every device, no TensorFlow.

For small datasets (CIFAR-10: 50,000 x 32 x 32 x 3 uint8 = 154 MB) the host input pipeline is
pure overhead: the split is decoded once (Pillow, or tfds as NumPy) and REPLICATED on every device
as uint8 canvases with their sizes; the host sends only each batch's indices, labels and epochs,
and the step gathers its canvases and builds the views with the device half of the one data path
(views.py). Replicated, not sharded: a global per-epoch permutation sends any example to any
device, which a sharded split would pay for with an all-to-all per step.

Order: epoch e is a permutation drawn from (seed, 'shuffle', e); batches run through the
concatenated epochs, so `batch_indices` is a pure function of (seed, step). Eval batches are the
canvases, sent from the host in split order.
"""

import dataclasses
import functools
import math
from typing import Any, Callable, Iterator

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from simclr_jax import fs
from simclr_jax.data import folders, subsets

_SHUFFLE = 1  # Purpose folded into the root key (as reading.SHUFFLE_PURPOSE).
Batches = Iterator[dict[str, np.ndarray]]


@dataclasses.dataclass(frozen=True)
class HostSplit:
  images: np.ndarray  # uint8 [N, H, W, 3]
  labels: np.ndarray  # int32 [N], -1 = unlabeled
  class_names: tuple[str, ...]

  @property
  def num_examples(self) -> int:
    return int(self.images.shape[0])

  def canvases(self, indices: np.ndarray | slice = slice(None)) -> tuple[np.ndarray, np.ndarray]:
    """(uint8 [n, C, C, 3] canvases, int32 [n, 2] sizes) of some examples; C = max(H, W)."""
    images = self.images[indices]
    height, width = self.images.shape[1:3]
    side = max(height, width)
    canvases = np.pad(images, [(0, 0), (0, side - height), (0, side - width), (0, 0)])
    return canvases, np.tile(np.asarray([height, width], np.int32), (len(images), 1))


def load_folder(root: str, split: str) -> HostSplit:
  """Decodes every readable image of root/<split> (`folders.list_readable`, as the host path)
  with Pillow into uint8 [N, H, W, 3] (equal sizes)."""
  from PIL import Image  # Pillow: decoding without TensorFlow.

  listing = folders.list_readable(root, split)
  paths, labels, class_names = listing.paths, listing.labels, listing.class_names
  images = []
  for path in paths:
    with fs.open(path, 'rb') as file, Image.open(file) as image:
      array = np.asarray(image.convert('RGB'), dtype=np.uint8)  # Gray/RGBA -> RGB, as sources.
    if images and array.shape != images[0].shape:
      raise ValueError(f'{path} is {array.shape[:2]}, not {images[0].shape[:2]} like {paths[0]}; '
                       'a device-resident split needs equal image sizes (use the host pipeline).')
    images.append(array)
  return HostSplit(np.stack(images), np.asarray(labels, np.int32), tuple(class_names))


def load_tfds(name: str, split: str, data_dir: str | None = None) -> HostSplit:
  """A whole tfds split as NumPy."""
  import tensorflow_datasets as tfds  # Deferred: the folder path must work without TensorFlow.

  builder = tfds.builder(name, data_dir=data_dir)
  data = tfds.as_numpy(builder.as_dataset(split=split, batch_size=-1))
  labels = data.get('label', np.full(len(data['image']), -1))
  names = builder.info.features['label'].names if 'label' in builder.info.features else []
  return HostSplit(np.asarray(data['image'], np.uint8), np.asarray(labels, np.int32), tuple(names))


def load_split(
  dataset: str, split: str, folder: str = '', data_dir: str | None = None
) -> HostSplit:
  """As `sources.load` for a whole split: 'demo', 'folder' (Pillow) or a tfds name."""
  root = folders.local_root(dataset, folder)
  return load_folder(root, split) if root is not None else load_tfds(dataset, split, data_dir)


def put_on_mesh(mesh: Mesh, split: HostSplit) -> dict[str, jax.Array]:
  """{'images': canvases, 'sizes'} of the split, replicated on every device (module docstring)."""
  canvases, sizes = split.canvases()
  return jax.device_put({'images': canvases, 'sizes': sizes}, NamedSharding(mesh, P()))


@functools.lru_cache(maxsize=4)  # Every step of an epoch reads the same one or two orders.
def epoch_permutation(seed: int, epoch: int, num_examples: int) -> np.ndarray:
  """int32 [num_examples], read-only: the order of epoch `epoch`, from (seed, 'shuffle', epoch)."""
  key = jax.random.fold_in(jax.random.fold_in(jax.random.key(seed), _SHUFFLE), epoch)
  order = np.asarray(jax.random.permutation(key, num_examples).astype(jnp.int32))
  order.setflags(write=False)
  return order


def batch_indices(seed: int, step: int, global_batch_size: int, num_examples: int) -> np.ndarray:
  """int32 [global_batch_size]: split indices of batch `step` (0-based).

  Position p = step * B + j of the endless stream is example perm(p // N)[p % N]; a batch spans
  at most two epochs (B <= N).
  """
  if global_batch_size > num_examples:
    raise ValueError(f'global_batch_size={global_batch_size} > {num_examples} examples; a '
                     'device-resident batch must not span more than two epochs.')
  epoch, offset = divmod(step * global_batch_size, num_examples)
  position = offset + np.arange(global_batch_size)  # < 2N
  first, second = (epoch_permutation(seed, e, num_examples) for e in (epoch, epoch + 1))
  index = position % num_examples
  return np.where(position >= num_examples, second[index], first[index])


def _split(config: ml_collections.ConfigDict, split: str) -> HostSplit:
  data = config.data
  return load_split(data.dataset, split, data.folder, data.tfds_data_dir)


def make_train_data(config: ml_collections.ConfigDict, stage, mesh):
  """(num_examples, class_names, host-batch iterator factory, replicated dataset) of a stage
  (`stage`: a stages.Stage; its `examples` and `labels` say which examples and labels)."""
  split = _split(config, config.data.train_split)
  labels = split.labels.astype(np.int32)
  examples, labelled = subsets.stage_subset(config, stage, lambda: labels)
  pool = np.arange(len(labels)) if examples is None else examples
  if labelled is not None:
    labels = np.where(np.isin(np.arange(len(labels)), labelled), labels, -1).astype(np.int32)
  global_batch = config.train.global_batch_size
  host_batch = global_batch // jax.process_count()
  first = jax.process_index() * host_batch

  def make_iterator(start_step: int) -> Batches:
    step = start_step
    while True:
      order = batch_indices(config.seed, step, global_batch, len(pool))
      mine = slice(first, first + host_batch)
      index = pool[order[mine]].astype(np.int32)
      positions = step * global_batch + np.arange(global_batch)[mine]
      epoch = (positions // len(pool)).astype(np.int32)
      yield {'index': index, 'label': labels[index], 'epoch': epoch}
      step += 1

  return len(pool), split.class_names, make_iterator, put_on_mesh(mesh, split)


def make_eval_iterator(
  config: ml_collections.ConfigDict, split: str, max_examples: int = 0
) -> tuple[int, int, Callable[[], Batches]]:
  """(num_examples, num_classes, factory) of this host's padded, masked batches of canvases."""
  host_split = _split(config, split)
  count = host_split.num_examples
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
      canvases, sizes = host_split.canvases(padded)
      yield {'image': canvases, 'size': sizes,
             'label': host_split.labels[padded].astype(np.int32), 'index': padded, 'mask': mask}

  return count, len(host_split.class_names), make_iterator
