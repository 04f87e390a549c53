"""Export: the npz round-trips exactly; the SavedModel reproduces the JAX outputs."""

import os
import subprocess
import sys

import jax
import numpy as np
import pytest
import tensorflow as tf

from configs import demo as demo_lib
from simclr_jax import checkpoints, export
from simclr_jax.models import load

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
IMAGE_SIZE = 32


@pytest.fixture(scope='module')
def stage_workdir(tmp_path_factory):
  """A stage workdir holding a checkpoint of a tiny model with non-trivial BN statistics."""
  config = demo_lib.get_config()
  config.model.width_multiplier = 0.125
  model = load.build(config, num_classes=10)
  variables = jax.jit(lambda: model.init(
    jax.random.key(0), np.zeros((2, IMAGE_SIZE, IMAGE_SIZE, 3), np.float32), train=False))()
  rng = np.random.default_rng(0)
  # Moving statistics away from their init (0, 1), so an export that drops them shows.
  batch_stats = jax.tree.map(
    lambda x: rng.uniform(0.5, 1.5, size=x.shape).astype(np.float32), variables['batch_stats'])
  workdir = str(tmp_path_factory.mktemp('stage'))
  checkpoints.save_variables(workdir, jax.device_get(variables['params']), batch_stats,
                             checkpoints.run_meta(config, 0, stage='pretrain'))
  return workdir


def _images(count=3):
  return np.random.default_rng(1).uniform(size=(count, IMAGE_SIZE, IMAGE_SIZE, 3)).astype(
    np.float32)


def _reference_outputs(workdir, images):
  """Outputs of the checkpoint's own variables through the training code's model."""
  params, batch_stats, meta = checkpoints.restore_variables(workdir)
  import ml_collections

  model = export.inference_model(ml_collections.ConfigDict(meta['config']), params)
  variables = {'params': params, 'batch_stats': batch_stats}
  return jax.device_get(jax.jit(export.inference_fn(model))(variables, images))


def test_npz_round_trip_matches_exactly(stage_workdir, tmp_path):
  written = export.export(None, stage_workdir, str(tmp_path), fmt='npz')
  assert sorted(os.path.basename(p) for p in written) == ['config.json', 'model.npz']
  with np.load(tmp_path / 'model.npz') as arrays:
    names = set(arrays.files)
  assert 'params/encoder/stem/conv_0/kernel' in names
  assert any(n.startswith('batch_stats/encoder/') and n.endswith('/mean') for n in names)
  assert 'params/head_supervised/linear_layer/dense/kernel' in names
  model, variables = export.load_npz(str(tmp_path))
  images = _images()
  loaded = jax.device_get(jax.jit(export.inference_fn(model))(variables, images))
  expected = _reference_outputs(stage_workdir, images)
  assert set(loaded) == set(export.OUTPUTS)
  for key in export.OUTPUTS:
    np.testing.assert_array_equal(loaded[key], expected[key], err_msg=key)


@pytest.mark.slow
def test_saved_model_matches_jax(stage_workdir, tmp_path):
  export.export(None, stage_workdir, str(tmp_path), fmt='saved_model')
  assert not (tmp_path / 'model.npz').exists()
  loaded = tf.saved_model.load(str(tmp_path / 'saved_model'))
  serve = loaded.signatures['serving_default']
  spec = serve.structured_input_signature[1]['images']
  assert spec.shape.as_list() == [None, IMAGE_SIZE, IMAGE_SIZE, 3] and spec.dtype == tf.float32
  for count in (1, 4):  # The batch dimension is symbolic.
    images = _images(count)
    outputs = serve(images=tf.constant(images))
    expected = _reference_outputs(stage_workdir, images)
    assert set(outputs) == set(export.OUTPUTS)
    for key in export.OUTPUTS:
      np.testing.assert_allclose(outputs[key].numpy(), expected[key], rtol=1e-4, atol=1e-5,
                                 err_msg=key)
  assert outputs['features'].shape == (4, 64) and outputs['logits_sup'].shape == (4, 10)


def test_errors_name_the_fix(tmp_path):
  with pytest.raises(FileNotFoundError, match='export with --format=npz'):
    export.load_npz(str(tmp_path))
  result = subprocess.run(
    [sys.executable, '-m', 'simclr_jax.export', f'--workdir={tmp_path / "missing"}',
     f'--output={tmp_path / "out"}'],
    cwd=REPO, capture_output=True, text=True, timeout=120,
  )
  assert result.returncode != 0
  assert 'does not exist; run the stage that writes it first' in result.stderr


def test_export_never_overwrites_silently(tmp_path):
  out = tmp_path / 'out'
  out.mkdir()
  (out / 'model.npz').write_bytes(b'an earlier export')
  result = subprocess.run(
    [sys.executable, '-m', 'simclr_jax.export', f'--workdir={tmp_path / "missing"}',
     f'--output={out}'],
    cwd=REPO, capture_output=True, text=True, timeout=120,
  )
  assert result.returncode == 1
  assert result.stderr.strip() == (f'error: --output={out} already holds model.npz; pass '
                                   '--overwrite to replace them, or choose another --output')
  assert (out / 'model.npz').read_bytes() == b'an earlier export'
