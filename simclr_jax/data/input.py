"""Config -> host-batch iterators for the training loop (the only place that reads `config.data`).

Each host builds its own share of every global batch (`global_batch_size / process_count`
images); `sharding.global_batch_from_host` assembles the global array on the mesh.
"""

import dataclasses
import math
from typing import Callable, Iterator

import jax
import ml_collections
import numpy as np

from simclr_jax.data import pipeline, sources


@dataclasses.dataclass(frozen=True)
class TrainData:
  num_examples: int  # In the whole training split (all hosts).
  num_classes: int
  class_names: tuple[str, ...]
  # start_step -> infinite iterator of host batches, continuing exactly where step left off.
  make_iterator: Callable[[int], Iterator[dict[str, np.ndarray]]]

  def batches(self, start_step: int = 0) -> Iterator[dict[str, np.ndarray]]:
    return self.make_iterator(start_step)


@dataclasses.dataclass(frozen=True)
class EvalData:
  num_examples: int
  make_iterator: Callable[[], Iterator[dict[str, np.ndarray]]]

  def batches(self) -> Iterator[dict[str, np.ndarray]]:
    return self.make_iterator()


def _load(config: ml_collections.ConfigDict, split: str) -> sources.Source:
  data = config.data
  return sources.load(
    data.dataset,
    split,
    folder=data.folder,
    data_dir=data.tfds_data_dir,
    process_index=jax.process_index(),
    process_count=jax.process_count(),
  )


def make_pretrain_data(config: ml_collections.ConfigDict) -> TrainData:
  source = _load(config, config.data.train_split)
  host_batch_size = config.train.global_batch_size // jax.process_count()

  def make_iterator(start_step: int) -> Iterator[dict[str, np.ndarray]]:
    dataset = pipeline.make_pretrain_dataset(
      source.dataset,
      seed=config.seed,
      host_batch_size=host_batch_size,
      image_size=config.data.image_size,
      color_jitter_strength=config.data.color_jitter_strength,
      use_blur=config.data.use_blur,
      num_local_devices=jax.local_device_count(),
      shuffle_buffer=config.data.shuffle_buffer_multiplier * host_batch_size,
      cache=config.data.cache,
      start_batch=start_step,
      process_index=jax.process_index(),
    )
    return pipeline.iterate_numpy(dataset)

  return TrainData(source.num_examples, source.num_classes, source.class_names, make_iterator)


def make_eval_data(config: ml_collections.ConfigDict) -> EvalData:
  source = _load(config, config.data.eval_split)
  host_batch_size = config.train.eval_batch_size // jax.process_count()
  # Every host runs the same number of eval steps; hosts that run out feed masked batches.
  largest_host_share = math.ceil(source.num_examples / jax.process_count())
  num_batches = math.ceil(largest_host_share / host_batch_size)

  def make_iterator() -> Iterator[dict[str, np.ndarray]]:
    dataset = pipeline.make_eval_dataset(
      source.dataset,
      batch_size=host_batch_size,
      image_size=config.data.image_size,
      crop_proportion=config.data.eval_crop_proportion,
      num_batches=num_batches,
      cache=config.data.cache,
    )
    return pipeline.iterate_numpy(dataset)

  return EvalData(source.num_examples, make_iterator)
