"""Config -> host-batch iterators for the training loop (the only place that reads `config.data`).

Each host builds its own share of every global batch (`global_batch_size / process_count`
images); `sharding.global_batch_from_host` assembles the global array on the mesh.

What a stage trains on is declared by its `stages.Stage` (passed in; data/ never imports the
registry): `views` ('simclr': two SimCLR views, 'crop_flip': one), `examples` (every train image
or the labelled subset) and `labels` (all, or -1 outside the labelled subset).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable, Iterator

import jax
import ml_collections
import numpy as np

from simclr_jax.data import resident, views
from simclr_jax.sharding import DATA_AXIS

try:  # TensorFlow powers the host pipelines; device-resident data needs only JAX.
  from simclr_jax.data import pipeline, sources, subsets
except ImportError:  # pragma: no cover - exercised by the no-TensorFlow test.
  pipeline = sources = subsets = None

Batches = Iterator[dict[str, np.ndarray]]
# JPEGs are decoded at 1/2-1/8 scale while their shorter side stays >= this x data.image_size: a
# smallest random crop (8 % of the area, ~0.28 of the side) then still has >= 1.1 x image_size
# pixels across. ImageNet at 224 px (shorter side ~350) is always decoded whole, as officially;
# a 12 MP photo trained at 32 px is decoded at 1/8 (36 MB -> 0.6 MB).
MIN_SIDE_FACTOR = 4


@dataclasses.dataclass(frozen=True)
class TrainData:
  num_examples: int  # In the (sub)set trained on, all hosts.
  num_classes: int
  class_names: tuple[str, ...]
  batches: Callable[[int], Batches]  # start_step -> infinite host batches from that step.
  # Device-resident mode: the replicated split the jitted step gathers canvases from (else None).
  resident: Any = None
  prepare: Callable | None = None  # In-step: host batch -> the stage's views (views.py).
  skipped_paths: tuple[str, ...] = ()  # Unreadable images left out (image folders).


@dataclasses.dataclass(frozen=True)
class EvalData:
  num_examples: int
  num_classes: int
  batches: Callable[[], Batches]  # Finite, in order, padded; 'mask' marks real examples.


def _hosts() -> dict[str, int]:
  return {'process_index': jax.process_index(), 'process_count': jax.process_count()}


def load_source(
  config: ml_collections.ConfigDict, split: str, dataset: str = '', decode: bool = True,
  max_examples: int = 0,
) -> sources.Source:
  """Examples of a split; `decode=False` keeps them encoded."""
  data = config.data
  return sources.load(
    dataset or data.dataset, split, folder=data.folder, data_dir=data.tfds_data_dir,
    decode=decode, max_examples=max_examples, min_decoded_side=MIN_SIDE_FACTOR * data.image_size,
    **_hosts()
  )


def train_source(config: ml_collections.ConfigDict, stage) -> sources.Source:
  """The examples a stage trains on, labels hidden (-1) where it must not see them
  (`subsets.stage_subset`)."""
  data = config.data
  source = load_source(config, data.train_split, subsets.stage_dataset(config, stage))
  split_labels = lambda: subsets.split_labels(
    data.dataset, data.train_split, folder=data.folder, data_dir=data.tfds_data_dir)
  examples, labelled = subsets.stage_subset(config, stage, split_labels)
  if examples is not None:
    source = source.restrict(examples)
  return source if labelled is None else source.hide_labels_outside(labelled)


def _host_batch(global_batch_size: int) -> int:
  return global_batch_size // jax.process_count()


def canvas_size(config: ml_collections.ConfigDict) -> int:
  """The host's fixed uint8 canvas (pipeline.py): data.canvas_size, or data.image_size."""
  return config.data.canvas_size or config.data.image_size


def make_train_data(config: ml_collections.ConfigDict, stage, mesh) -> TrainData:
  """A stage's training data (`stage`: a stages.Stage): canvases from the host (or the
  device-resident split), the stage's views built on the device (views.py)."""
  prepare = views.make_prepare(config, stage.views, DATA_AXIS)
  if config.data.device_resident:
    num_examples, class_names, make_iterator, resident_split = resident.make_train_data(
      config, stage, mesh)
    return TrainData(num_examples, len(class_names), class_names, make_iterator, resident_split,
                     prepare)
  source = train_source(config, stage)
  host_batch_size = _host_batch(config.train.global_batch_size)

  def make_iterator(start_step: int) -> Batches:
    dataset = pipeline.make_train_dataset(
      source,
      seed=config.seed,
      host_batch_size=host_batch_size,
      canvas_size=canvas_size(config),
      shuffle_buffer=config.data.shuffle_buffer_multiplier * host_batch_size,
      cache=config.data.cache,
      start_batch=start_step,
      process_index=jax.process_index(),
    )
    return pipeline.iterate_numpy(dataset)

  return TrainData(source.num_examples, source.num_classes, source.class_names, make_iterator,
                   prepare=prepare, skipped_paths=source.skipped_paths)


def make_eval_data(
  config: ml_collections.ConfigDict, split: str | None = None, max_examples: int = 0
) -> EvalData:
  """Eval batches of canvases of a split (default: data.eval_split), optionally its first N; the
  eval and feature steps build the eval view on the device (views.make_eval_view)."""
  split = split or config.data.eval_split
  if config.data.device_resident:
    return EvalData(*resident.make_eval_iterator(config, split, max_examples))
  source = load_source(config, split, max_examples=max_examples)
  # Every host runs the same number of eval steps; hosts that run out feed masked batches.
  host_batch_size = _host_batch(config.train.eval_batch_size)
  largest_host_share = math.ceil(source.num_examples / jax.process_count())
  return eval_data(config, source, host_batch_size, math.ceil(largest_host_share / host_batch_size))


def eval_data(
  config: ml_collections.ConfigDict, source, batch_size: int, num_batches: int | None = None
) -> EvalData:
  """Eval batches of canvases of a source (this host's examples of it)."""

  def make_iterator() -> Batches:
    dataset = pipeline.make_eval_dataset(
      source, batch_size=batch_size, canvas_size=canvas_size(config), num_batches=num_batches,
      cache=config.data.cache)
    return pipeline.iterate_numpy(dataset)

  return EvalData(source.num_examples, source.num_classes, make_iterator)
