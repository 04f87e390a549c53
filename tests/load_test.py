"""simclr_jax/models/load.py: a config -> a model; a stage workdir -> (model, variables, config)."""

import jax
import numpy as np
import pytest
from flax import traverse_util

from configs import demo as demo_lib
from simclr_jax import checkpoints
from simclr_jax.models import load


def _tiny_config():
  config = demo_lib.get_config()
  config.model.width_multiplier = 0.125
  return config


def _saved(tmp_path, config, num_classes=7, with_config=True):
  model = load.build(config, num_classes, bn_axis_name=None)
  variables = jax.jit(lambda: model.init(jax.random.key(0), np.zeros((2, 32, 32, 3)),
                                         train=False))()
  meta = checkpoints.run_meta(config, 0, stage='pretrain') if with_config else {'step': 0}
  checkpoints.save_variables(str(tmp_path), variables['params'], variables['batch_stats'], meta)
  return jax.device_get(variables)


def test_load_builds_the_saved_architecture_with_its_variables(tmp_path):
  saved_config = _tiny_config()
  saved_config.model.depth = 18
  variables = _saved(tmp_path, saved_config)
  other = demo_lib.get_config()  # A different architecture at hand: the saved one wins.
  loaded = load.load(str(tmp_path), other)
  assert loaded.num_classes == 7 and loaded.config.model.depth == 18
  assert loaded.model.depth == 18 and loaded.model.num_classes == 7
  flat = traverse_util.flatten_dict(loaded.variables['params'], sep='/')
  for key, value in traverse_util.flatten_dict(variables['params'], sep='/').items():
    np.testing.assert_array_equal(flat[key], value)
  out = loaded.model.apply(loaded.variables, np.zeros((1, 32, 32, 3), np.float32), train=False)
  assert out['logits_sup'].shape == (1, 7)


def test_load_needs_a_saved_or_given_config(tmp_path):
  _saved(tmp_path, _tiny_config(), with_config=False)
  with pytest.raises(ValueError, match='no saved config'):
    load.load(str(tmp_path))
  assert load.load(str(tmp_path), _tiny_config()).num_classes == 7


def test_load_of_a_missing_or_run_workdir_is_one_line(tmp_path):
  with pytest.raises(FileNotFoundError, match='checkpoints'):
    load.load(str(tmp_path / 'nothing'))
  _saved(tmp_path / 'run' / 'pretrain', _tiny_config())
  with pytest.raises(FileNotFoundError, match='run workdir'):
    load.load(str(tmp_path / 'run'))
