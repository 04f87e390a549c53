"""Device-resident datasets: a whole split as one uint8 array on the mesh, batches by index.

For small datasets (CIFAR-10: 50,000 x 32 x 32 x 3 uint8 = 154 MB) the host input pipeline is
pure overhead: the split fits on every device, and with `device_augment` the step can gather and
augment its own batch. The host then ships nothing per step but the step number.

    load_split -> HostSplit (NumPy)  -> put_on_mesh -> DeviceSplit (jax.Array, replicated)
    batch_indices(seed, step, global_batch_size, num_examples) -> int32 [global_batch_size]

Placement: the split is REPLICATED on every device (`P()`), not sharded along `data`. A global
per-epoch permutation sends any example to any device, so a sharded split would need an
all-to-all gather per step; replication costs N x image bytes per device, which is the point of
this path (small datasets). Large datasets (ImageNet) stay on the host tf.data pipeline.

Data order: epoch e is a permutation of the split drawn on device from (seed, 'shuffle', e);
batches run through the concatenated epochs (they cross epoch boundaries, like the host
pipeline's repeat-then-batch), so `batch_indices` is a pure function of (seed, step).

No TensorFlow: folders are decoded with Pillow; TF/tfds is imported lazily only for tfds names.
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from simclr_jax.data import folders

_SHUFFLE = 1  # Purpose folded into the root key (as pipeline._SHUFFLE).


@dataclasses.dataclass(frozen=True)
class HostSplit:
  images: np.ndarray  # uint8 [N, H, W, 3]
  labels: np.ndarray  # int32 [N], -1 = unlabeled
  class_names: tuple[str, ...]

  @property
  def num_examples(self) -> int:
    return int(self.images.shape[0])


@dataclasses.dataclass(frozen=True)
class DeviceSplit:
  images: jax.Array  # uint8 canvases [N, C, C, 3] (C = max(H, W), image at the top left), replicated
  sizes: jax.Array  # int32 [N, 2]: (H, W) of every image, replicated
  labels: jax.Array  # int32 [N], replicated
  num_examples: int
  class_names: tuple[str, ...]


demo_data_dir = folders.demo_data_dir
list_folder = folders.list_image_folder  # The listing of sources.from_folder, without TF.


def load_folder(root: str, split: str) -> HostSplit:
  """Decodes every image of root/<split> with Pillow into uint8 [N, H, W, 3] (equal sizes)."""
  from PIL import Image  # Pillow: decoding without TensorFlow.

  paths, labels, class_names = list_folder(root, split)
  first = None
  images = []
  for path in paths:
    with Image.open(path) as image:
      array = np.asarray(image.convert('RGB'), dtype=np.uint8)  # Gray/RGBA -> RGB, as sources.
    if first is None:
      first = array.shape
    elif array.shape != first:
      raise ValueError(f'{path} is {array.shape[:2]}, not {first[:2]} like {paths[0]}; a '
                       'device-resident split needs equal image sizes (use the host pipeline).')
    images.append(array)
  return HostSplit(np.stack(images), np.asarray(labels, np.int32), tuple(class_names))


def load_tfds(name: str, split: str, data_dir: str | None = None) -> HostSplit:
  """A whole tfds split as NumPy (imports tensorflow_datasets only here)."""
  import tensorflow_datasets as tfds  # Lazy: the folder path must work without TensorFlow.

  builder = tfds.builder(name, data_dir=data_dir)
  data = tfds.as_numpy(builder.as_dataset(split=split, batch_size=-1))
  labels = data.get('label', np.full(len(data['image']), -1))
  names = builder.info.features['label'].names if 'label' in builder.info.features else []
  return HostSplit(np.asarray(data['image'], np.uint8), np.asarray(labels, np.int32), tuple(names))


def load_split(dataset: str, split: str, folder: str = '', data_dir: str | None = None) -> HostSplit:
  """As `sources.load` for a whole split: 'demo', 'folder' (Pillow) or a tfds name."""
  if dataset == 'demo':
    return load_folder(demo_data_dir(), split)
  if dataset == 'folder':
    return load_folder(folder, split)
  return load_tfds(dataset, split, data_dir)


def put_on_mesh(mesh: Mesh, split: HostSplit) -> DeviceSplit:
  """Places the split replicated on every device of the mesh (see the module docstring)."""
  replicated = NamedSharding(mesh, P())
  height, width = split.images.shape[1:3]
  side = max(height, width)
  canvases = np.pad(split.images, [(0, 0), (0, side - height), (0, side - width), (0, 0)])
  sizes = np.tile(np.asarray([height, width], np.int32), (split.num_examples, 1))
  return DeviceSplit(
    images=jax.device_put(canvases, replicated),
    sizes=jax.device_put(sizes, replicated),
    labels=jax.device_put(split.labels, replicated),
    num_examples=split.num_examples,
    class_names=split.class_names,
  )


def epoch_permutation(seed: int | jax.Array, epoch: int | jax.Array, num_examples: int) -> jax.Array:
  """int32 [num_examples]: the order of epoch `epoch`, from (seed, 'shuffle', epoch). Jittable."""
  key = jax.random.fold_in(jax.random.fold_in(jax.random.key(seed), _SHUFFLE), epoch)
  return jax.random.permutation(key, num_examples).astype(jnp.int32)


def batch_indices(
  seed: int | jax.Array, step: int | jax.Array, global_batch_size: int, num_examples: int
) -> jax.Array:
  """int32 [global_batch_size]: split indices of batch `step` (0-based). Jittable in `step`.

  Position p = step * B + j of the endless stream is example perm(p // N)[p % N]. A batch spans
  at most two epochs (B <= N). With a traced `step`, p is int32: valid while step * B < 2**31
  (about 520k steps at batch 4096); a Python int step is exact for any step.
  """
  if global_batch_size > num_examples:
    raise ValueError(f'global_batch_size={global_batch_size} > {num_examples} examples; a '
                     'device-resident batch must not span more than two epochs.')
  if isinstance(step, int):
    epoch, offset = divmod(step * global_batch_size, num_examples)
  else:
    start = jnp.asarray(step, jnp.int32) * global_batch_size
    epoch, offset = start // num_examples, start % num_examples
  position = offset + jnp.arange(global_batch_size, dtype=jnp.int32)  # < 2N
  first = epoch_permutation(seed, epoch, num_examples)
  second = epoch_permutation(seed, epoch + 1, num_examples)
  index = position % num_examples
  return jnp.where(position >= num_examples, second[index], first[index])
