"""Plots of a real (tiny) run: every PNG opens, has its layout's size and is not blank."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from configs import demo as demo_lib
from simclr_jax import plots, train, visualize
from simclr_jax import workdir as workdir_lib

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MIN_PIXEL_STD = 5.0  # Grey levels; a blank white figure has std 0.


def _tiny_config():
  config = demo_lib.get_config()
  config.train.train_steps = 4
  config.train.global_batch_size = 32
  config.model.width_multiplier = 0.125
  config.train.eval_batch_size = 64
  config.train.log_every_steps = 1
  config.knn.k = 20
  config.knn.max_train_examples = 200  # A small memory bank: a faster kNN pass.
  return config


@pytest.fixture(scope='module')
def run_workdir(tmp_path_factory):
  """A run workdir: a real pretraining stage plus finetune/supervised results (values given)."""
  workdir = tmp_path_factory.mktemp('run')
  config = _tiny_config()
  train.train_and_evaluate(config, str(workdir / 'pretrain'))
  for stage, top1 in (('finetune', 0.3), ('supervised', 0.2)):
    (workdir / stage).mkdir()
    (workdir / stage / 'results.json').write_text(json.dumps({'stage': stage, 'eval_top1': top1}))
  return config, str(workdir)


def _check_png(path, size):
  image = Image.open(path)
  image.verify()  # Valid PNG structure.
  image = Image.open(path)
  assert image.format == 'PNG'
  assert image.size == size, path
  assert np.asarray(image.convert('L'), np.float64).std() > MIN_PIXEL_STD, f'{path} is blank'


@pytest.mark.slow
def test_every_plot_of_a_real_run(run_workdir):
  config, workdir = run_workdir
  assert list(workdir_lib.find_stage_workdirs(workdir)) == ['pretrain', 'finetune', 'supervised']
  written = visualize.render_run_plots(config, workdir, num_images=4, max_points=100)
  pretrain_plots = os.path.join(workdir, 'pretrain', 'plots')
  # Sizes from the layouts: 100 dpi; 4 images x 3 rows of 1.5 in; 7 x 6 in; five 4 x 3 in
  # panels (loss, contrastive acc, classifier acc, kNN, LR) in rows of 3; 3 bars: 1.8 + 3 x 1.2 in.
  expected = {
    os.path.join(pretrain_plots, 'augmentations.png'): (600, 450),
    os.path.join(pretrain_plots, 'tsne.png'): (700, 600),
    os.path.join(pretrain_plots, 'curves.png'): (1200, 600),
    os.path.join(workdir, 'finetune', 'plots', 'augmentations.png'): (600, 450),
    os.path.join(workdir, 'supervised', 'plots', 'augmentations.png'): (600, 450),
    os.path.join(workdir, 'plots', 'stage_top1.png'): (540, 400),
  }
  assert sorted(written) == sorted(expected)
  for path, size in expected.items():
    _check_png(path, size)
  records = workdir_lib.read_metrics(os.path.join(workdir, 'pretrain'))
  panels = dict(plots.curve_panels(records))
  assert panels['loss'][0] == 'contrastive_loss'
  assert 'eval_top1' in panels['classifier accuracy'] and panels['kNN top-1'] == ['knn_top1']
  assert visualize.top1_by_stage(workdir_lib.find_stage_workdirs(workdir))['finetune'] == 0.3


@pytest.mark.slow
def test_augmented_views_and_features_are_deterministic(run_workdir):
  config, workdir = run_workdir
  first = visualize.augmentation_views(config, 'pretrain', num_images=2)
  again = visualize.augmentation_views(config, 'pretrain', num_images=2)
  np.testing.assert_array_equal(first[1], again[1])
  assert first[1].shape == (2, 32, 32, 3) and 0.0 <= first[1].min() and first[1].max() <= 1.0
  assert not np.array_equal(first[1], first[2])  # Two different views of each image.
  crop_flip = visualize.augmentation_views(config, 'finetune', num_images=2)
  assert 'crop, flip' in crop_flip[4] and 'colour' not in crop_flip[4]
  features, labels, class_names = visualize.encoder_features(
    config, os.path.join(workdir, 'pretrain'), max_points=20)
  assert features.shape == (20, 64) and features.dtype == np.float32  # 512 x 0.125 channels.
  assert np.isfinite(features).all() and len(class_names) == 10
  assert len(np.unique(labels)) == 10  # The class-sorted split is sampled with a stride.


def test_plots_handle_missing_metrics_and_reject_bad_input(tmp_path):
  assert plots.training_curves([], str(tmp_path / 'none.png')) is None
  assert plots.training_curves([{'step': 1, 'other': 1.0}], str(tmp_path / 'x.png')) is None
  # A resumed run logs a step twice: the last value wins; non-finite values are left out.
  records = [{'step': 2, 'learning_rate': 0.1}, {'step': 1, 'learning_rate': 0.0},
             {'step': 2, 'learning_rate': 0.2}, {'step': 3, 'learning_rate': float('nan')}]
  steps, values = plots._series(records, 'learning_rate')
  np.testing.assert_array_equal(steps, [1, 2])
  np.testing.assert_array_equal(values, [0.0, 0.2])
  path = plots.training_curves(records, str(tmp_path / 'lr.png'))
  _check_png(path, (400, 300))
  with pytest.raises(ValueError, match='points \\[N, 2\\]'):
    plots.tsne_scatter(np.zeros((4, 3)), np.zeros(4), str(tmp_path / 't.png'))
  with pytest.raises(ValueError, match='at least one'):
    plots.stage_bars({}, str(tmp_path / 'b.png'))
  accuracies = {'pretrain': 0.3, 'finetune': 0.2, 'supervised': 0.18}
  bare = plots.stage_bars(accuracies, str(tmp_path / 'bare.png'))
  noted = plots.stage_bars(accuracies, str(tmp_path / 'noted.png'), note='pretrain: all labels')
  from PIL import Image
  bottom = lambda path: np.asarray(Image.open(path).convert('L'))[-12:]
  assert bottom(bare).min() > bottom(noted).min()  # The note is drawn under the axes.
  (tmp_path / 'metrics.jsonl').write_text('{"step": 1, "knn_top1": 0.5}\n{"step": 2, "kn')
  assert workdir_lib.read_metrics(str(tmp_path)) == [{'step': 1, 'knn_top1': 0.5}]  # Cut line.
  with pytest.raises(FileNotFoundError, match='holds no stage'):
    (tmp_path / 'empty').mkdir()
    visualize.render_run_plots(None, str(tmp_path / 'empty'))


def test_cli_one_line_error_for_a_missing_workdir(tmp_path):
  result = subprocess.run(
    [sys.executable, '-m', 'simclr_jax.visualize', '--config=configs/demo.py',
     f'--workdir={tmp_path / "missing"}', '--plots=curves'],
    cwd=REPO, capture_output=True, text=True, timeout=120,
  )
  assert result.returncode != 0
  assert 'does not exist; pass a run or stage workdir' in result.stderr
