"""Tests for simclr_jax/losses.py against NumPy float64 formulas written from REFERENCE §1."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh, PartitionSpec as P

from simclr_jax import losses


def _np_log_softmax(x):
  x = x - x.max(axis=-1, keepdims=True)
  return x - np.log(np.exp(x).sum(axis=-1, keepdims=True))


def _np_nt_xent(z_a, z_b, temperature):
  """Single replica, straight from REFERENCE §1 steps 1-7 and the metrics paragraph."""
  z_a, z_b = np.asarray(z_a, np.float64), np.asarray(z_b, np.float64)
  h1 = z_a / np.sqrt(np.maximum((z_a**2).sum(1, keepdims=True), 1e-12))
  h2 = z_b / np.sqrt(np.maximum((z_b**2).sum(1, keepdims=True), 1e-12))
  n = len(h1)
  idx = np.arange(n)
  mask = np.eye(n)
  aa = h1 @ h1.T / temperature - 1e9 * mask
  bb = h2 @ h2.T / temperature - 1e9 * mask
  ab = h1 @ h2.T / temperature
  ba = h2 @ h1.T / temperature
  labels = np.eye(2 * n)[idx]  # one_hot(idx, 2N): positive in the ab / ba block.
  loss_a = -(labels * _np_log_softmax(np.concatenate([ab, aa], 1))).sum(1)
  loss_b = -(labels * _np_log_softmax(np.concatenate([ba, bb], 1))).sum(1)
  loss = loss_a.mean() + loss_b.mean()
  acc = (ab.argmax(1) == idx).mean()
  p = np.exp(_np_log_softmax(ab))
  entropy = -(p * np.log(p + 1e-8)).sum(1).mean()
  return loss, acc, entropy


def _random_z(seed, batch=16, dim=8, scale=1.0):
  rng = np.random.default_rng(seed)
  return (rng.normal(size=(batch, dim)) * scale).astype(np.float32), (
    rng.normal(size=(batch, dim)) * scale
  ).astype(np.float32)


@pytest.mark.parametrize('temperature', [0.1, 0.5, 1.0])
def test_nt_xent_matches_numpy(temperature):
  z_a, z_b = _random_z(0, scale=3.0)
  loss, metrics = losses.nt_xent_with_metrics(z_a, z_b, temperature)
  want_loss, want_acc, want_entropy = _np_nt_xent(z_a, z_b, temperature)
  np.testing.assert_allclose(loss, want_loss, rtol=1e-5)
  np.testing.assert_allclose(metrics['contrast_acc'], want_acc, rtol=1e-6)
  np.testing.assert_allclose(metrics['contrast_entropy'], want_entropy, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(losses.nt_xent(z_a, z_b, temperature), want_loss, rtol=1e-5)


def test_contrast_accuracy_uses_ab_block_only():
  # Views equal up to scale: each row's best ab column is its positive -> accuracy 1,
  # even though aa (masked) would otherwise tie with it.
  z_a, _ = _random_z(1, batch=8, dim=16)
  _, metrics = losses.nt_xent_with_metrics(z_a, 2.0 * z_a, 0.1)
  np.testing.assert_allclose(metrics['contrast_acc'], 1.0)
  # Partly shuffled positives: accuracy matches the NumPy argmax over ab.
  z_b = z_a.copy()
  z_b[:4] = z_b[[1, 2, 3, 0]]
  _, metrics = losses.nt_xent_with_metrics(z_a, z_b, 0.1)
  np.testing.assert_allclose(metrics['contrast_acc'], _np_nt_xent(z_a, z_b, 0.1)[1])
  np.testing.assert_allclose(metrics['contrast_acc'], 0.5)


@pytest.mark.parametrize('batch', [1, 4, 32])
def test_uniform_logits_sanity_value(batch):
  # All rows identical: every unmasked logit equals 1/tau, the self-similarity is masked, so each
  # row is a uniform softmax over 2N-1 candidates: loss = 2 ln(2N-1), finite despite LARGE_NUM.
  z = jnp.ones((batch, 4))
  loss_and_grads = jax.jit(jax.value_and_grad(losses.nt_xent, argnums=(0, 1)), static_argnums=2)
  loss, grads = loss_and_grads(z, z, 0.1)
  np.testing.assert_allclose(loss, 2 * np.log(2 * batch - 1), rtol=1e-5, atol=1e-6)
  assert all(np.all(np.isfinite(g)) for g in grads)


def test_all_zero_rows_are_finite():
  z = jnp.zeros((4, 8))
  loss = losses.nt_xent(z, z, 0.1)  # Norm clamped by 1e-12: logits all 0, as official.
  np.testing.assert_allclose(loss, 2 * np.log(7), rtol=1e-5)


def test_temperature_scaling():
  # Only h/tau matters: scaling z leaves the loss unchanged, tau changes it as in NumPy.
  z_a, z_b = _random_z(2)
  np.testing.assert_allclose(
    losses.nt_xent(z_a, z_b, 0.2), losses.nt_xent(10 * z_a, 0.1 * z_b, 0.2), rtol=1e-5
  )
  low, high = losses.nt_xent(z_a, z_a, 0.05), losses.nt_xent(z_a, z_a, 1.0)
  assert low < high  # Perfect positives: a colder softmax is more confident.
  np.testing.assert_allclose(low, _np_nt_xent(z_a, z_a, 0.05)[0], rtol=1e-5)


def test_bfloat16_inputs_close_to_float32():
  z_a, z_b = _random_z(3)
  loss32 = losses.nt_xent(z_a, z_b, 0.1)
  loss16 = losses.nt_xent(jnp.asarray(z_a, jnp.bfloat16), jnp.asarray(z_b, jnp.bfloat16), 0.1)
  assert loss16.dtype == jnp.float32 and np.isfinite(loss16)
  np.testing.assert_allclose(loss16, loss32, rtol=2e-2)
  same = jnp.ones((8, 4), jnp.bfloat16)  # Identical rows in bf16: masked logits stay finite.
  np.testing.assert_allclose(losses.nt_xent(same, same, 0.1), 2 * np.log(15), rtol=1e-5)


def _sharded(fn, out_specs):
  mesh = Mesh(np.asarray(jax.devices()), ('data',))
  return jax.shard_map(fn, mesh=mesh, in_specs=(P('data'), P('data')), out_specs=out_specs)


def test_sharded_matches_single_device_value_metrics_and_gradients():
  num_devices = jax.device_count()
  assert num_devices == 8, 'tests/conftest.py sets 8 fake CPU devices'
  z_a, z_b = _random_z(4, batch=4 * num_devices, dim=8, scale=2.0)
  temperature = 0.2

  sharded = _sharded(
    functools.partial(losses.nt_xent_with_metrics, temperature=temperature, axis_name='data'),
    out_specs=(P(), P()),
  )
  loss, metrics = jax.jit(sharded)(z_a, z_b)
  want_loss, want_acc, want_entropy = _np_nt_xent(z_a, z_b, temperature)
  np.testing.assert_allclose(loss, losses.nt_xent(z_a, z_b, temperature), rtol=1e-5)
  np.testing.assert_allclose(loss, want_loss, rtol=1e-5)
  np.testing.assert_allclose(metrics['contrast_acc'], want_acc, rtol=1e-6)
  np.testing.assert_allclose(metrics['contrast_entropy'], want_entropy, rtol=1e-5)

  sharded_loss = _sharded(
    functools.partial(losses.nt_xent, temperature=temperature, axis_name='data'), out_specs=P()
  )
  grads = jax.jit(jax.grad(sharded_loss, argnums=(0, 1)))(z_a, z_b)
  want_grads = jax.grad(losses.nt_xent, argnums=(0, 1))(z_a, z_b, temperature)
  for got, want in zip(grads, want_grads):
    assert np.abs(want).max() > 1e-3  # Non-trivial gradients.
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-7)


def test_sharded_gathers_negatives_from_other_replicas():
  # Replica-local loss (no axis_name) differs from the global one: negatives are really gathered.
  z_a, z_b = _random_z(5, batch=16)
  local = _sharded(lambda a, b: losses.nt_xent(a, b, 0.5)[None], out_specs=P('data'))
  per_replica = jax.jit(local)(z_a, z_b)  # [8] replica-local losses
  global_loss = losses.nt_xent(z_a, z_b, 0.5)
  assert not np.allclose(np.mean(per_replica), global_loss, rtol=1e-3)


def test_softmax_cross_entropy():
  rng = np.random.default_rng(6)
  logits = rng.normal(size=(6, 5)).astype(np.float32)
  labels = np.array([0, 4, 2, 1, 3, 3])
  per_row = -_np_log_softmax(logits.astype(np.float64))[np.arange(6), labels]
  np.testing.assert_allclose(losses.softmax_cross_entropy(logits, labels), per_row.mean(), 1e-6)
  mask = np.array([1, 1, 0, 1, 0, 0], np.float32)
  np.testing.assert_allclose(
    losses.softmax_cross_entropy(logits, labels, mask), per_row[mask > 0].mean(), rtol=1e-6
  )
  np.testing.assert_allclose(losses.softmax_cross_entropy(logits, labels, 0 * mask), 0.0)
  bf16 = losses.softmax_cross_entropy(jnp.asarray(logits, jnp.bfloat16), labels)
  assert bf16.dtype == jnp.float32


@pytest.mark.parametrize('temperature', [1.0, 2.0])
def test_distillation_loss_matches_numpy(temperature):
  rng = np.random.default_rng(7)
  student = rng.normal(size=(5, 7)).astype(np.float32)
  teacher = rng.normal(size=(5, 7)).astype(np.float32) * 3
  p_teacher = np.exp(_np_log_softmax(teacher.astype(np.float64) / temperature))
  want = -(p_teacher * _np_log_softmax(student.astype(np.float64) / temperature)).sum(1).mean()
  np.testing.assert_allclose(losses.distillation_loss(student, teacher, temperature), want, 1e-6)


def test_distillation_with_one_hot_teacher_is_cross_entropy_and_stops_teacher_gradient():
  rng = np.random.default_rng(8)
  student = rng.normal(size=(6, 4)).astype(np.float32)
  labels = np.array([0, 1, 2, 3, 2, 1])
  teacher = 100.0 * np.eye(4, dtype=np.float32)[labels]  # softmax = one-hot to float32 precision.
  np.testing.assert_allclose(
    losses.distillation_loss(student, teacher, 1.0),
    losses.softmax_cross_entropy(student, labels),
    rtol=1e-6,
  )
  teacher_grad = jax.grad(losses.distillation_loss, argnums=1)(student, teacher, 1.0)
  np.testing.assert_array_equal(teacher_grad, 0.0)


def test_l2_loss():
  tree = {'a': np.arange(6.0).reshape(2, 3), 'b': {'c': np.array([1.0, -2.0])}}
  np.testing.assert_allclose(losses.l2_loss(tree), (55.0 + 5.0) / 2)
  np.testing.assert_allclose(losses.l2_loss({}), 0.0)


def test_grad_inside_shard_map_wrt_replicated_weights_is_global_gradient():
  # The train step differentiates inside shard_map w.r.t. replicated params; the pmean'd loss must
  # then give the gradient of the global-batch loss on every device (REFERENCE §1 step 8).
  x_a, x_b = _random_z(9, batch=16, dim=6)
  weights = np.random.default_rng(10).normal(size=(6, 4)).astype(np.float32)

  def loss(w, a, b, axis_name=None):
    return losses.nt_xent(a @ w, b @ w, 0.5, axis_name=axis_name)

  mesh = Mesh(np.asarray(jax.devices()), ('data',))
  step = jax.shard_map(
    lambda w, a, b: jax.value_and_grad(loss)(w, a, b, 'data'),
    mesh=mesh,
    in_specs=(P(), P('data'), P('data')),
    out_specs=(P(), P()),
  )
  value, grad = jax.jit(step)(weights, x_a, x_b)
  want_value, want_grad = jax.value_and_grad(loss)(weights, x_a, x_b)
  np.testing.assert_allclose(value, want_value, rtol=1e-5)
  np.testing.assert_allclose(grad, want_grad, rtol=1e-5, atol=1e-7)
