"""Bad configs fail before anything is built, with one line naming the field."""

import pytest

from configs import default as default_lib
from configs import demo as demo_lib
from simclr_jax import validation


def _demo():
  return demo_lib.get_config()


def _set(config, dotted: str, value):
  *parents, leaf = dotted.split('.')
  node = config
  for name in parents:
    node = node[name]
  node[leaf] = value
  return config


BAD_VALUES = [
  ('train.global_batch_size', 100, 'train.global_batch_size'),  # not divisible by 8 devices
  ('train.global_batch_size', 0, 'train.global_batch_size'),
  ('model.depth', 42, 'model.depth'),
  ('model.width_multiplier', 0.0, 'model.width_multiplier'),
  ('model.width_multiplier', -1.0, 'model.width_multiplier'),
  ('model.sk_ratio', 1.5, 'model.sk_ratio'),
  ('model.compute_dtype', 'float16x', 'model.compute_dtype'),
  ('model.ft_proj_selector', 7, 'model.ft_proj_selector'),
  ('data.dataset', 'no_such_dataset', 'data.dataset'),
  ('data.image_size', 4, 'data.image_size'),
  ('train.temperature', 0.0, 'train.temperature'),
  ('train.temperature', -0.5, 'train.temperature'),
  ('optim.learning_rate', -0.1, 'optim.learning_rate'),
  ('optim.optimizer', 'rmsprop', 'optim.optimizer'),
  ('optim.learning_rate_scaling', 'cubic', 'optim.learning_rate_scaling'),
  ('optim.momentum', 1.0, 'optim.momentum'),
  ('optim.weight_decay', -1e-4, 'optim.weight_decay'),
  ('train.eval_batch_size', 12, 'train.eval_batch_size'),
  ('train.log_every_steps', 0, 'train.log_every_steps'),
  ('data.eval_crop_proportion', 1.5, 'data.eval_crop_proportion'),
]


@pytest.mark.parametrize('field,value,named', BAD_VALUES,
                         ids=[f'{f}={v}' for f, v, _ in BAD_VALUES])
def test_bad_value_names_the_field(field, value, named):
  config = _set(_demo(), field, value)
  with pytest.raises(validation.ConfigError) as excinfo:
    validation.validate_config(config, num_devices=8)
  message = str(excinfo.value)
  assert named in message
  assert '\n' not in message


def test_image_size_below_imagenet_stem_minimum():
  config = _demo()
  config.model.cifar_stem = False
  config.data.image_size = 24
  with pytest.raises(validation.ConfigError, match='data.image_size=24'):
    validation.validate_config(config, num_devices=8)


def test_missing_and_empty_folder(tmp_path):
  config = _demo()
  config.data.dataset = 'folder'
  config.data.folder = str(tmp_path / 'does_not_exist')
  with pytest.raises(validation.ConfigError, match='does not exist'):
    validation.validate_config(config, num_devices=8)
  (tmp_path / 'empty' / 'train' / 'cat').mkdir(parents=True)
  (tmp_path / 'empty' / 'train' / 'cat' / 'notes.txt').write_text('not an image')
  config.data.folder = str(tmp_path / 'empty')
  with pytest.raises(validation.ConfigError, match='holds no image files'):
    validation.validate_config(config, num_devices=8)
  config.data.folder = ''
  with pytest.raises(validation.ConfigError, match='data.folder is empty'):
    validation.validate_config(config, num_devices=8)


def test_shipped_configs_are_valid():
  from configs import cifar10_r18, r50_1x, r152_3x

  for module in (demo_lib, cifar10_r18, r50_1x, r152_3x):
    validation.validate_config(module.get_config(), num_devices=8)


def test_default_config_declares_every_section():
  config = default_lib.get_config()
  assert set(config.keys()) >= {'data', 'model', 'optim', 'train', 'distributed', 'seed', 'name'}


STAGE_ERRORS = [
  (dict(stages=('pretrain', 'finetuning')), 'unknown stage'),
  (dict(stages=('finetune',)), "without 'pretrain' before it"),
  (dict(stages=('pretrain', 'distill')), "without 'finetune' before it"),
  (dict(stages=('finetune', 'pretrain')), "without 'pretrain' before it"),
  (dict(stages=('pretrain', 'pretrain')), 'repeats a stage'),
  (dict(stages=()), 'config.stages is empty'),
]


@pytest.mark.parametrize('overrides,message', STAGE_ERRORS, ids=[m for _, m in STAGE_ERRORS])
def test_bad_stage_order(overrides, message):
  config = _demo()
  for key, value in overrides.items():
    config[key] = value
  with pytest.raises(validation.ConfigError, match=message):
    validation.validate_config(config, num_devices=8)


@pytest.mark.parametrize(
  'field,value',
  [
    ('finetune.label_fraction', 0.0),
    ('finetune.label_fraction', 1.5),
    ('finetune.fine_tune_after_block', 5),
    ('distill.temperature', 0.0),
    ('distill.label_weight', -1.0),
    ('knn.k', 0),
  ],
)
def test_bad_stage_values(field, value):
  config = _set(_demo(), field, value)
  with pytest.raises(validation.ConfigError, match=field.replace('.', r'\.')):
    validation.validate_config(config, num_devices=8)


def test_missing_init_checkpoint_is_rejected(tmp_path):
  config = _demo()
  config.stages = ('finetune',)
  config.finetune.init_from = str(tmp_path / 'nothing_here')
  with pytest.raises(validation.ConfigError, match='finetune.init_from=.*holds no checkpoints'):
    validation.validate_config(config, num_devices=8)
  config.stages = ('distill',)
  config.distill.teacher_workdir = str(tmp_path)
  with pytest.raises(validation.ConfigError, match='distill.teacher_workdir'):
    validation.validate_config(config, num_devices=8)


@pytest.mark.parametrize('stage_value,base_value,named', [
  (36, 128, 'finetune.train.global_batch_size=36'),  # Set in the stage's own section.
  (None, 100, 'train.global_batch_size=100'),  # Inherited from the base section.
])
def test_a_stage_error_names_the_field_the_user_sets(stage_value, base_value, named):
  config = _demo()
  config.finetune.train.global_batch_size = stage_value
  config.train.global_batch_size = base_value
  with pytest.raises(validation.ConfigError) as excinfo:
    validation.validate_stage(config, 'finetune', num_devices=8)
  message = str(excinfo.value)
  assert message.startswith(f'{named} is not divisible by the 8 devices'), message
  assert message.endswith('(stage finetune)') and '\n' not in message
  if stage_value is not None:
    assert 'finetune.finetune' not in message and ' train.global' not in message


@pytest.mark.parametrize('num_devices', [1, 2, 4, 8])
def test_every_demo_stage_runs_on_1_2_4_or_8_devices(num_devices):
  """README's first command must work on a multi-GPU machine or a TPU v3-8 / v4-8 as it is."""
  config = _demo()
  for name in config.stages:
    validation.validate_stage(config, name, num_devices=num_devices)
