"""The distributed train step: 8 devices give the same step as 1 device on the same global batch."""

import jax
import numpy as np
import pytest

from configs import demo as demo_lib
from simclr_jax import sharding, stages, train

GLOBAL_BATCH = 16
IMAGE_SIZE = 16


def _tiny_config(optimizer='lars'):
  config = demo_lib.get_config()
  config.model.width_multiplier = 0.125
  config.data.image_size = IMAGE_SIZE
  config.model.cifar_stem = True
  config.optim.optimizer = optimizer
  config.train.global_batch_size = GLOBAL_BATCH
  config.train.train_steps = 10
  config.optim.warmup_epochs = 0.0  # So the first step has a non-zero learning rate.
  return config


def _batch(seed=0):
  rng = np.random.default_rng(seed)
  shape = (GLOBAL_BATCH, IMAGE_SIZE, IMAGE_SIZE, 3)
  return {
    'view_a': rng.uniform(size=shape).astype(np.float32),
    'view_b': rng.uniform(size=shape).astype(np.float32),
    'label': rng.integers(0, 10, size=(GLOBAL_BATCH,)).astype(np.int32),
  }


def _one_step(config, devices, batch, num_steps=1):
  mesh = sharding.make_mesh(devices)
  model = train.build_model(config, num_classes=10)
  abstract = jax.eval_shape(
    lambda: model.init(jax.random.key(0), np.zeros((2, IMAGE_SIZE, IMAGE_SIZE, 3)), train=False)
  )['params']
  tx, schedule, _ = train.build_optimizer(config, abstract, num_train_examples=1000)
  state = train.init_state(model, tx, IMAGE_SIZE, config.seed, mesh)
  loss_fn = stages.pretrain_loss_fn(
    model,
    temperature=config.train.temperature,
    weight_decay=config.optim.weight_decay,
    optimizer=config.optim.optimizer,
    linear_probe=True,
    global_bn=config.model.global_bn,
  )
  step = train.make_train_step(loss_fn, tx, schedule, mesh)
  all_metrics = []
  for _ in range(num_steps):
    state, metrics = step(state, sharding.global_batch_from_host(mesh, batch))
    all_metrics.append(jax.device_get(metrics))
  return jax.device_get(state), all_metrics


def _assert_trees_close(a, b, rtol, atol):
  leaves_a, tree_a = jax.tree.flatten_with_path(a)
  leaves_b, tree_b = jax.tree.flatten(b)
  assert len(leaves_a) == len(leaves_b)
  for (path, x), y in zip(leaves_a, leaves_b):
    np.testing.assert_allclose(x, y, rtol=rtol, atol=atol, err_msg=jax.tree_util.keystr(path))


@pytest.mark.parametrize('optimizer', ['lars', 'momentum'])
def test_eight_devices_match_one_device(optimizer):
  assert jax.device_count() == 8, 'tests/conftest.py must force 8 CPU devices'
  config = _tiny_config(optimizer)
  batch = _batch()
  state_1, metrics_1 = _one_step(config, jax.devices()[:1], batch, num_steps=2)
  state_8, metrics_8 = _one_step(config, jax.devices(), batch, num_steps=2)
  for m1, m8 in zip(metrics_1, metrics_8):
    for key in ('total_loss', 'contrastive_loss', 'probe_loss', 'contrast_acc', 'grad_norm'):
      np.testing.assert_allclose(m8[key], m1[key], rtol=1e-5, err_msg=key)
  _assert_trees_close(state_8.params, state_1.params, rtol=1e-5, atol=1e-7)
  _assert_trees_close(state_8.batch_stats, state_1.batch_stats, rtol=1e-5, atol=1e-7)
  _assert_trees_close(state_8.opt_state, state_1.opt_state, rtol=1e-5, atol=1e-7)
  # The step changed something: the test would pass trivially on a no-op step otherwise.
  state_0 = train.init_state(
    train.build_model(config, 10), train.build_optimizer(config, state_1.params, 1000)[0],
    IMAGE_SIZE, config.seed, sharding.make_mesh(jax.devices()[:1]),
  )
  moved = jax.tree.map(lambda x, y: float(np.max(np.abs(x - y))), state_1.params, jax.device_get(state_0.params))
  assert max(jax.tree.leaves(moved)) > 1e-4


def test_first_loss_is_near_uniform_value():
  """At init the projections are nearly random: loss ~ 2 ln(2N - 1) (REFERENCE §1)."""
  config = _tiny_config()
  _, metrics = _one_step(config, jax.devices(), _batch(1))
  uniform = 2 * np.log(2 * GLOBAL_BATCH - 1)
  assert abs(metrics[0]['contrastive_loss'] - uniform) < 0.5
  assert metrics[0]['learning_rate'] > 0
