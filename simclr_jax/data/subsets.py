"""Labelled subsets for fine-tuning: class-balanced, deterministic, the same on every host.

ImageNet uses the official tfds subsets (`imagenet2012_subset/1pct`, `/10pct`: the image IDs of
the SimCLR repo's `imagenet_subsets/*.txt`). Any other dataset gets a subset drawn here from the
labels of the whole split: per class, a permutation from (seed, class) keeps the first
round(fraction * class size) examples (at least 1), or exactly `per_class` of them.
"""

from typing import Callable

import numpy as np

from simclr_jax.data import folders

# TensorFlow only to read a tfds split's labels; the rest also serves device-resident data.
try:
  import tensorflow_datasets as tfds

  from simclr_jax.data import sources
except ImportError:  # pragma: no cover - exercised by the no-TensorFlow test.
  tfds = sources = None


def split_labels(dataset: str, split: str, *, folder: str = '', data_dir: str | None = None):
  """Labels of every example of a split, in source order (index i = example i)."""
  root = folders.local_root(dataset, folder)
  if root is not None:
    labels = folders.list_readable(root, split).labels  # File listing only: no decoding.
    return np.asarray(labels, np.int64)
  # The source's own split order (shard files in order), so that label i is example index i.
  source = sources.load(dataset, split, data_dir=data_dir, decode=False)
  labels = source.dataset.map(lambda example: example['label'])
  return np.fromiter(tfds.as_numpy(labels), np.int64)


def balanced_subset(
  labels: np.ndarray, *, seed: int, fraction: float | None = None, per_class: int = 0
) -> np.ndarray:
  """Sorted indices of a class-balanced subset of `labels` (labels < 0 are never chosen)."""
  if per_class <= 0 and not (fraction is not None and 0 < fraction <= 1):
    raise ValueError(
      f'finetune.label_fraction={fraction} is outside (0, 1] and finetune.examples_per_class='
      f'{per_class}; set one of them'
    )
  chosen = []
  for label in np.unique(labels[labels >= 0]):
    members = np.flatnonzero(labels == label)
    rng = np.random.default_rng([seed, int(label)])
    order = rng.permutation(members)
    count = per_class if per_class > 0 else max(1, int(round(fraction * len(members))))
    chosen.append(order[: min(count, len(members))])
  return np.sort(np.concatenate(chosen)) if chosen else np.zeros([0], np.int64)


def finetune_subset(config, labels: np.ndarray) -> np.ndarray:
  """The labelled subset `config.finetune` asks for, drawn from the labels of the train split."""
  return balanced_subset(labels, seed=config.seed, fraction=config.finetune.label_fraction,
                         per_class=config.finetune.examples_per_class)


def is_official_subset(dataset: str) -> bool:
  return dataset.startswith('imagenet2012_subset')


def stage_dataset(config, stage) -> str:
  """The dataset a stage trains on: `finetune.dataset` (e.g. an official subset), when set, for a
  stage on the labelled examples; `data.dataset` otherwise."""
  if stage.examples == 'labelled' and config.finetune.dataset:
    return config.finetune.dataset
  return config.data.dataset


def stage_subset(
  config, stage, split_labels: Callable[[], np.ndarray]
) -> tuple[np.ndarray | None, np.ndarray | None]:
  """(split indices a stage trains on, split indices whose labels it sees); None = all.

  As its `stages.Stage` declares: examples='labelled' trains on the labelled subset only (an
  official tfds subset is one already); labels='labelled' sees labels in the labelled subset
  only (none when the stage's label weight is 0). `split_labels()`, the train split's labels,
  is called only when a subset is drawn here. The one rule for the host and device-resident data.
  """
  if stage.examples == 'labelled':
    official = is_official_subset(stage_dataset(config, stage))
    return (None if official else finetune_subset(config, split_labels())), None
  if stage.labels != 'labelled':
    return None, None
  if stage.uses_labels(config) and not is_official_subset(config.finetune.dataset):
    return None, finetune_subset(config, split_labels())
  return None, np.zeros([0], np.int64)
