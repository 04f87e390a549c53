"""Listing image folders: root/<split>/<class>/*.{jpg,jpeg,png} or a flat folder of images.

The one listing, unreadable files set aside (image_check.py), shared by the tf.data sources
(`sources.py`), the labelled subsets and the TensorFlow-free device-resident data
(`resident.py`); no TensorFlow here.
"""

import dataclasses
import pathlib

from absl import logging

from simclr_jax import fs
from simclr_jax.data import image_check
from simclr_jax.errors import ConfigError

IMAGE_EXTENSIONS = ('.jpg', '.jpeg', '.png')


def demo_data_dir() -> str:
  """The embedded CIFAR-10 demo folder (`train/` and `test/` of 10 class folders)."""
  return str(pathlib.Path(__file__).resolve().parent.parent / 'demo_data' / 'cifar10')


def local_root(dataset: str, folder: str = '') -> str | None:
  """The folder a `data.dataset` value names: the demo data for 'demo', `folder` for 'folder'
  (data.folder), None for a tfds dataset name."""
  if dataset == 'demo':
    return demo_data_dir()
  if dataset == 'folder':
    if not folder:
      raise ConfigError("data.dataset='folder' needs data.folder=PATH (root/<split>/<class>/*).")
    return folder
  return None


def images_in(folder: str) -> list[str]:
  return [name for name in fs.scan(folder)[1] if name.lower().endswith(IMAGE_EXTENSIONS)]


def subfolders(folder: str) -> list[str]:
  return fs.scan(folder)[0]


def list_image_folder(root: str, split: str) -> tuple[list[str], list[int], list[str]]:
  """Sorted (paths, labels, class_names) of a split; labels -1 for a flat folder.

  Order: classes sorted by name, files sorted by name within a class.
  """
  if not fs.isdir(root):
    raise ConfigError(
      f'data.folder={root!r} does not exist; set data.folder to a folder of images '
      '(root/<split>/<class>/*.png|jpg, or a flat folder of unlabeled images).'
    )
  split_dir = fs.join(root, split)
  if not fs.isdir(split_dir):
    if images_in(root) and not subfolders(root):
      logging.info('data.folder=%r is a flat folder of unlabeled images; split %r ignored.', root,
                   split)
      split_dir = root
    else:
      raise ConfigError(
        f'data.folder={root!r} has no split folder {split!r} (found: '
        f'{", ".join(subfolders(root)) or "none"}); set the split (data.train_split / '
        'data.eval_split) to one of them.'
      )
  # Class ids come from the sorted union of class folders over all splits, so that a class
  # missing from one split does not shift the ids of the others.
  class_names = subfolders(split_dir)
  if class_names and split_dir != root:
    every_split = [fs.join(root, s) for s in subfolders(root)]
    class_names = sorted({c for s in every_split for c in subfolders(s)})
  paths: list[str] = []
  labels: list[int] = []
  if class_names:
    for label, name in enumerate(class_names):
      class_dir = fs.join(split_dir, name)
      if fs.isdir(class_dir):
        files = images_in(class_dir)
        paths += [fs.join(class_dir, f) for f in files]
        labels += [label] * len(files)
  else:
    paths = [fs.join(split_dir, f) for f in images_in(split_dir)]
    labels = [-1] * len(paths)
  if not paths:
    raise ConfigError(
      f'data.folder={root!r} split {split!r} contains no {"/".join(IMAGE_EXTENSIONS)} images '
      f'in {split_dir}; put images in <split>/<class>/ folders or point data.folder elsewhere.'
    )
  return paths, labels, class_names


@dataclasses.dataclass(frozen=True)
class Listing:
  paths: list[str]  # Readable images only, sorted: classes by name, then files by name.
  labels: list[int]
  sizes: list[int]  # Bytes per file, as stat'ed by the check (no second stat per file).
  class_names: tuple[str, ...]
  skipped: dict[str, str]  # Unreadable image files -> why.
  fully_checked: bool  # Pixels decoded at listing (else headers only, see image_check.py).


def list_readable(
  root: str, split: str, full_check_max_bytes: int = image_check.FULL_CHECK_MAX_BYTES
) -> Listing:
  """The images of root/<split>/<class>/* or of a flat folder, unreadable ones set aside."""
  paths, labels, class_names = list_image_folder(root, split)
  skipped, fully_checked, sizes = image_check.find_unreadable(
    paths, full_check_max_bytes=full_check_max_bytes)
  if len(skipped) == len(paths):
    example, reason = next(iter(skipped.items()))
    raise ConfigError(
      f'data.folder={root!r} split {split!r} has no readable image: all {len(paths)} files fail '
      f'to decode (e.g. {example}: {reason}); fix the files or point data.folder elsewhere.'
    )
  if skipped:
    readable = [i for i, path in enumerate(paths) if path not in skipped]
    paths, labels, sizes = ([values[i] for i in readable] for values in (paths, labels, sizes))
  return Listing(paths, labels, sizes, tuple(class_names), skipped, fully_checked)
