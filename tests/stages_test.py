"""The stage registry (simclr_jax/stages.py): derived configs, sources of variables, what a stage
reads, and a new stage that is nothing but one more registry entry."""

import dataclasses
import os

import jax
import numpy as np
import pytest

from configs import demo as demo_lib
from simclr_jax import checkpoints, run, stages, validation


def test_registry_order_and_names():
  assert stages.STAGES == ('pretrain', 'finetune', 'distill', 'supervised')
  assert all(stages.get(name).name == name for name in stages.STAGES)
  assert [stages.get(name).num_views for name in stages.STAGES] == [2, 1, 1, 1]


def test_derive_applies_each_override_with_one_rule():
  config = demo_lib.get_config()
  config.distill.student.depth = 34  # A section: its non-None fields replace model's.
  config.finetune.ft_proj_selector = 2  # A field: replaces model.ft_proj_selector.
  distill = stages.get('distill').derive(config)
  assert distill.model.depth == 34 and distill.model.ft_proj_selector == 2
  assert distill.model.width_multiplier == config.model.width_multiplier  # None kept the model's.
  assert distill.optim.learning_rate == config.distill.optim.learning_rate
  assert distill.train.global_batch_size == config.distill.train.global_batch_size
  pretrain = stages.get('pretrain').derive(config)
  assert pretrain.to_dict() == config.to_dict()
  with pytest.raises(AttributeError):  # Derived configs are locked.
    pretrain.model.new_field = 1


def test_restore_source_names_a_run_stage_or_a_workdir():
  config = demo_lib.get_config()
  init = stages.get('finetune').init  # finetune.init_from, default: this run's pretrain.
  assert init.source(config, '/run') == os.path.join('/run', 'pretrain')
  config.finetune.init_from = '/elsewhere/pretrain'
  assert init.source(config, '/run') == '/elsewhere/pretrain' and init.run_stage(config) is None
  student = stages.get('distill').init  # No default: '' is a fresh init.
  config.distill.student_init_from = ''
  assert student.source(config, '/run') == ''
  config.distill.student_init_from = 'pretrain'
  assert student.source(config, '/run') == os.path.join('/run', 'pretrain')


def test_sections_and_labels_a_stage_reads():
  config = demo_lib.get_config()
  assert stages.get('pretrain').sections() == set()
  assert stages.get('finetune').sections() == {'finetune'}
  assert stages.get('distill').sections() == {'distill', 'finetune'}
  assert stages.get('supervised').sections() == {'supervised', 'finetune'}
  config.distill.label_weight = 0.0
  assert not stages.get('distill').uses_labels(config)
  config.distill.label_weight = 0.5
  assert stages.get('distill').uses_labels(config) and stages.get('finetune').uses_labels(config)
  assert not stages.get('pretrain').uses_labels(config)


def _linear_eval_stage() -> stages.Stage:
  """A plain linear-eval stage: the classifier alone on the pretrained, frozen encoder, with the
  fine-tuning section's data and schedule. Declared here only: nothing else knows its name."""
  finetune = stages.get('finetune')
  return dataclasses.replace(finetune, name='linear_eval', top1_note='')


@pytest.mark.slow
def test_a_new_stage_is_one_registry_entry(tmp_path, monkeypatch):
  stage = _linear_eval_stage()
  monkeypatch.setitem(stages.REGISTRY, stage.name, stage)
  monkeypatch.setattr(stages, 'STAGES', tuple(stages.REGISTRY))
  config = demo_lib.get_config()
  config.stages = ('pretrain', 'linear_eval')
  config.model.width_multiplier = 0.125
  config.train.train_steps = 3
  config.train.global_batch_size = 32
  config.train.eval_batch_size = 64
  config.train.plots_at_end = False
  config.knn.enabled = False
  config.finetune.fine_tune_after_block = 4  # Linear evaluation: only the classifier trains.
  config.finetune.train.train_steps = 2
  config.finetune.train.global_batch_size = 16
  validation.validate_config(config, num_devices=jax.device_count())
  results = run.run_stages(config, str(tmp_path))
  assert list(results) == ['pretrain', 'linear_eval']
  assert results['linear_eval']['num_labelled_examples'] == 100
  assert results['linear_eval']['restored_from'] == os.path.join(str(tmp_path), 'pretrain')
  pretrained, _, _ = checkpoints.restore_variables(os.path.join(str(tmp_path), 'pretrain'))
  evaluated, _, _ = checkpoints.restore_variables(os.path.join(str(tmp_path), 'linear_eval'))
  for a, b in zip(jax.tree.leaves(pretrained['encoder']), jax.tree.leaves(evaluated['encoder'])):
    np.testing.assert_array_equal(a, b)  # The encoder is frozen ...
  classifier = evaluated['head_supervised']['linear_layer']['dense']['kernel']
  assert np.any(classifier != 0)  # ... not the zero-initialised classifier.
