"""The SimCLRv2 chain on the demo photos: pretrain -> finetune -> distill (+ supervised)."""

import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from configs import demo as demo_lib
from simclr_jax import checkpoints, embed, run, stages, validation

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _tiny_chain(fine_tune_after_block=-1):
  config = demo_lib.get_config()
  config.model.width_multiplier = 0.125
  config.train.train_steps = 3
  config.train.global_batch_size = 32
  config.train.eval_batch_size = 64
  config.train.log_every_steps = 1
  config.knn.k = 20
  config.finetune.train.train_steps = 2
  config.finetune.train.global_batch_size = 16
  config.finetune.fine_tune_after_block = fine_tune_after_block
  config.supervised.train.train_steps = 2
  config.supervised.train.global_batch_size = 16
  config.distill.train.train_steps = 2
  config.distill.train.global_batch_size = 16
  config.distill.label_weight = 0.5
  return config


def _assert_trees_equal(a, b):
  leaves_a, leaves_b = jax.tree.leaves(a), jax.tree.leaves(b)
  assert len(leaves_a) == len(leaves_b) > 0
  for x, y in zip(leaves_a, leaves_b):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


@pytest.mark.slow
def test_chain_restores_each_stage_and_linear_eval_freezes_the_encoder(tmp_path):
  workdir = str(tmp_path)
  # fine_tune_after_block=4: offline linear evaluation of the pretrained encoder.
  config = _tiny_chain(fine_tune_after_block=4)
  all_results = run.run_stages(config, workdir)
  assert list(all_results) == ['pretrain', 'finetune', 'distill', 'supervised']
  assert 'knn_top1' in all_results['pretrain']
  assert all_results['finetune']['num_labelled_examples'] == 100  # 10 % of 1,000, balanced.
  for stage in config.stages:
    assert os.path.exists(os.path.join(workdir, stage, 'results.json'))

  pre_params, pre_stats, _ = checkpoints.restore_variables(os.path.join(workdir, 'pretrain'))
  ft_params, ft_stats, _ = checkpoints.restore_variables(os.path.join(workdir, 'finetune'))
  # Linear eval: encoder parameters and BN statistics bit-identical after training ...
  _assert_trees_equal(ft_params['encoder'], pre_params['encoder'])
  _assert_trees_equal(ft_stats['encoder'], pre_stats['encoder'])
  # ... while the classifier (zero-initialised, official) did train.
  assert np.any(ft_params['head_supervised']['linear_layer']['dense']['kernel'] != 0)

  # Distill restored the fine-tuned teacher, and a student initialised from pretraining.
  init = run._init_for(config, stages.get('distill'), workdir)
  _assert_trees_equal(init.teacher.variables['params'], ft_params)
  _assert_trees_equal(init.teacher.variables['batch_stats'], ft_stats)
  _assert_trees_equal(init.variables['params']['encoder'], pre_params['encoder'])
  _assert_trees_equal(init.variables['batch_stats']['encoder'], pre_stats['encoder'])
  assert 'labelled_loss' in open(os.path.join(workdir, 'distill', 'metrics.jsonl')).read()

  # The supervised baseline did not restore anything.
  assert all_results['supervised']['restored_from'] == ''

  # A rerun finds every stage complete and trains nothing.
  mtimes = {s: os.path.getmtime(os.path.join(workdir, s, 'results.json')) for s in config.stages}
  again = run.run_stages(config, workdir)
  results = {s: os.path.join(workdir, s, 'results.json') for s in config.stages}
  assert {s: os.path.getmtime(path) for s, path in results.items()} == mtimes
  assert again['finetune']['eval_top1'] == all_results['finetune']['eval_top1']
  table = run.results_table(again)
  assert all(stage in table for stage in config.stages)
  # A changed run-defining setting is not silently answered with the old results.
  changed = _tiny_chain(fine_tune_after_block=4)
  changed.finetune.optim.learning_rate *= 2
  with pytest.raises(validation.ConfigError, match=r'finetune\' holds a finished run of a '
                     r'different config \(finetune.optim.learning_rate: 0.02 -> 0.04'):
    run.run_stages(changed, workdir)  # pretrain (which does not use finetune.*) was reused.

  # Embedding: the contract CLI writes features and labels in split order.
  output = str(tmp_path / 'features.npz')
  proc = subprocess.run(
    [sys.executable, '-m', 'simclr_jax.embed', '--config=configs/demo.py',
     f'--workdir={os.path.join(workdir, "pretrain")}', '--split=test', f'--output={output}',
     '--config.model.width_multiplier=0.125'],
    cwd=REPO, capture_output=True, text=True, timeout=300,
    env=dict(os.environ, JAX_PLATFORMS='cpu'),
  )
  assert proc.returncode == 0, proc.stderr[-3000:]
  exported = np.load(output)
  assert exported['features'].shape == (200, 64) and exported['features'].dtype == np.float32
  assert np.bincount(exported['labels']).tolist() == [20] * 10
  features, labels = embed.embed(config, os.path.join(workdir, 'pretrain'), 'test')
  np.testing.assert_allclose(exported['features'], features, rtol=1e-5, atol=1e-6)
  np.testing.assert_array_equal(exported['labels'], labels)


@pytest.mark.slow
def test_restoring_into_a_different_architecture_lists_the_mismatches(tmp_path):
  config = _tiny_chain()
  config.stages = ('pretrain',)
  run.run_stages(config, str(tmp_path))
  wider = _tiny_chain()
  wider.model.width_multiplier = 0.25
  with pytest.raises(ValueError) as excinfo:
    run._init_for(wider, stages.get('finetune'), str(tmp_path))
  message = str(excinfo.value)
  assert 'encoder/stage1/block_0/bn_0/bias shape (8,) != expected (16,)' in message
  assert '46 mismatches' in message and '\n' not in message


def test_missing_init_checkpoint_is_a_clear_error(tmp_path):
  config = _tiny_chain()
  with pytest.raises(FileNotFoundError, match='does not exist'):
    run._init_for(config, stages.get('finetune'), str(tmp_path))


def test_stage_config_takes_each_stage_section():
  config = demo_lib.get_config()
  finetune = run.stage_config(config, 'finetune')
  assert finetune.optim.learning_rate == config.finetune.optim.learning_rate
  assert finetune.train.global_batch_size == config.finetune.train.global_batch_size
  assert finetune.model.ft_proj_selector == 1
  config.distill.student.depth = 34
  distill = run.stage_config(config, 'distill')
  assert distill.model.depth == 34
  assert distill.model.width_multiplier == config.model.width_multiplier
  assert json.loads(config.to_json_best_effort())['model']['depth'] == 18
