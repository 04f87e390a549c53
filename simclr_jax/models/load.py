"""Models build and load themselves: a config -> a model; a stage workdir -> (model, variables).

    build(config, num_classes)  -> SimCLRModel of config.model (the architecture, nothing else)
    load(stage_workdir)         -> Loaded(model, variables, config, num_classes, meta)

Every command that reads a checkpoint (run, embed, export, visualize, the TF2 importer's check)
goes through `load`: the architecture is the one saved with the checkpoint (a distilled student
may differ from the config at hand), the number of classes that of its classifier.
"""

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections

from simclr_jax import checkpoints
from simclr_jax.models import simclr
from simclr_jax.sharding import DATA_AXIS


def build(
  config: ml_collections.ConfigDict, num_classes: int, **overrides: Any
) -> simclr.SimCLRModel:
  """The SimCLR model of `config.model` (and data.image_size for the stem); `overrides` replace
  constructor arguments (e.g. bn_axis_name=None for single-device inference)."""
  model_config = config.model
  cifar_stem = model_config.cifar_stem
  if cifar_stem is None:
    cifar_stem = config.data.image_size <= 32  # Official: CIFAR stem iff image_size <= 32.
  blocks = model_config.blocks_per_stage
  kwargs = dict(
    depth=model_config.depth,
    width_multiplier=model_config.width_multiplier,
    sk_ratio=model_config.sk_ratio,
    cifar_stem=cifar_stem,
    blocks_per_stage=None if blocks is None else tuple(blocks),
    num_proj_layers=model_config.num_proj_layers,
    proj_out_dim=model_config.proj_out_dim,
    num_classes=num_classes,
    ft_proj_selector=model_config.ft_proj_selector,
    supervised_head_stop_gradient=True,
    dtype=jnp.dtype(model_config.compute_dtype),
    bn_axis_name=DATA_AXIS if model_config.global_bn else None,
    bn_momentum=model_config.bn_momentum,
    remat=model_config.remat,
  )
  kwargs.update(overrides)
  return simclr.SimCLRModel(**kwargs)


def abstract_variables(model: simclr.SimCLRModel, image_size: int) -> dict:
  """The variables' shapes and dtypes (no FLOPs, no memory)."""
  images = jax.ShapeDtypeStruct((2, image_size, image_size, 3), jnp.float32)
  return jax.eval_shape(lambda x: model.init(jax.random.key(0), x, train=False), images)


def num_classes_of(params: Any) -> int:
  """The classifier's number of classes, read from its kernel."""
  return int(params['head_supervised']['linear_layer']['dense']['kernel'].shape[-1])


@dataclasses.dataclass(frozen=True)
class Loaded:
  model: simclr.SimCLRModel
  variables: dict[str, Any]  # {'params', 'batch_stats'}: host NumPy arrays.
  config: ml_collections.ConfigDict  # The saved config (the given one if none was saved).
  num_classes: int
  meta: dict[str, Any]  # The checkpoint's metadata (step, stage, ...).


def load(
  stage_workdir: str, config: ml_collections.ConfigDict | None = None, **overrides: Any
) -> Loaded:
  """The newest checkpoint of a stage workdir as a model with its variables.

  The architecture comes from the config saved with the checkpoint, else from `config`;
  `overrides` go to `build`. Raises FileNotFoundError (one line) for a missing checkpoint and
  ValueError when neither config is available.
  """
  params, batch_stats, meta = checkpoints.restore_variables(stage_workdir)
  if 'config' in meta:
    config = ml_collections.ConfigDict(meta['config'])
  elif config is None:
    raise ValueError(f'{stage_workdir}: the checkpoint has no saved config; pass --config=FILE')
  num_classes = num_classes_of(params)
  return Loaded(build(config, num_classes, **overrides),
                {'params': params, 'batch_stats': batch_stats}, config, num_classes, meta)
