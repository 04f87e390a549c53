"""Tests for simclr_jax/optim.py against the REFERENCE §2 pseudo-code and derived numbers."""

import math

import jax
import numpy as np
import optax
import pytest

from simclr_jax import optim

WEIGHT_DECAY = 1e-2  # Large enough for the decay term to matter in a few steps.
MOMENTUM = 0.9
EETA = 1e-3


def _params():
  rng = np.random.default_rng(0)
  return {
    'conv': {'kernel': rng.normal(size=(3, 3, 2, 4)).astype(np.float32)},
    'dense': {
      'kernel': rng.normal(size=(4, 5)).astype(np.float32),
      'bias': rng.normal(size=(5,)).astype(np.float32),
    },
    'bn': {'scale': (1 + 0.1 * rng.normal(size=(4,))).astype(np.float32)},
    'zero': {'kernel': np.zeros((4, 3), np.float32)},  # ||w|| = 0: trust ratio must be 1.
    'head_supervised': {'kernel': rng.normal(size=(5, 3)).astype(np.float32)},
  }


def _grads(step):
  rng = np.random.default_rng(100 + step)
  return jax.tree.map(lambda p: rng.normal(size=p.shape).astype(np.float32), _params())


def _lr(step):
  return 0.5 + 0.3 * step  # A changing lr: lr-inside-the-buffer momentum becomes observable.


def _np_lars(params, num_steps, decay_names, adapt_names, lr_inside=True):
  """REFERENCE §2 pseudo-code in float64, one variable at a time."""
  params = {k: {n: np.asarray(v, np.float64) for n, v in d.items()} for k, d in params.items()}
  velocity = {k: {n: np.zeros_like(v) for n, v in d.items()} for k, d in params.items()}
  for step in range(num_steps):
    grads = _grads(step)
    lr = _lr(step)
    for layer, group in params.items():
      for name, w in group.items():
        g = np.asarray(grads[layer][name], np.float64)
        full = f'{layer}/{name}'
        if full in decay_names:
          g = g + WEIGHT_DECAY * w
        tr = 1.0
        if full in adapt_names:
          w_norm, g_norm = np.linalg.norm(w), np.linalg.norm(g)
          tr = EETA * w_norm / g_norm if w_norm > 0 and g_norm > 0 else 1.0
        v = velocity[layer][name]
        if lr_inside:
          v = MOMENTUM * v + (lr * tr) * g
          group[name] = w - v
        else:  # lr outside the buffer: only used to show the test can tell them apart.
          v = MOMENTUM * v + tr * g
          group[name] = w - lr * v
        velocity[layer][name] = v
  return params


def _run(tx, num_steps):
  """Returns (params, state, sum of the updates in float64)."""
  params = _params()
  state = tx.init(params)
  update = jax.jit(tx.update)
  total = jax.tree.map(lambda p: np.zeros(p.shape, np.float64), params)
  for step in range(num_steps):
    updates, state = update(_grads(step), state, params)
    params = optax.apply_updates(params, updates)
    total = jax.tree.map(lambda t, u: t + np.asarray(u, np.float64), total, updates)
  return params, state, total


KERNELS = {'conv/kernel', 'dense/kernel', 'zero/kernel', 'head_supervised/kernel'}


def _assert_updates_close(got_total_update, want_params, rtol=1e-5):
  """Summed updates vs the NumPy displacement: updates are ~1e-3 of the weights, so comparing the
  weights themselves would hide errors below float32 resolution."""
  init = jax.tree.leaves(_params())
  got_leaves = jax.tree_util.tree_leaves_with_path(got_total_update)
  for (path, got), want, w0 in zip(got_leaves, jax.tree.leaves(want_params), init):
    want = want - w0
    atol = 1e-6 * np.abs(want).max()  # float32 cancellation in near-zero entries.
    np.testing.assert_allclose(got, want, rtol=rtol, atol=atol, err_msg=jax.tree_util.keystr(path))


def test_lars_default_masks_match_numpy():
  _, state, got = _run(optim.lars(_lr, WEIGHT_DECAY, MOMENTUM, EETA), num_steps=4)
  want = _np_lars(_params(), 4, decay_names=KERNELS, adapt_names=KERNELS)
  _assert_updates_close(got, want)
  assert int(state.count) == 4
  # Lr outside the momentum buffer gives a visibly different result with this schedule.
  other = _np_lars(_params(), 4, decay_names=KERNELS, adapt_names=KERNELS, lr_inside=False)
  with pytest.raises(AssertionError):
    _assert_updates_close(got, other)


def test_lars_custom_masks_pytree_and_callable():
  decay = {'conv/kernel', 'zero/kernel'}  # Excludes dense/kernel from decay only.
  adapt = {'conv/kernel', 'dense/kernel', 'zero/kernel'}  # Head excluded from both.

  def mask_of(names):
    return lambda params: jax.tree_util.tree_map_with_path(
      lambda path, _: '/'.join(k.key for k in path) in names, params
    )

  want = _np_lars(_params(), 3, decay_names=decay, adapt_names=adapt)
  tx = optim.lars(_lr, WEIGHT_DECAY, MOMENTUM, EETA, mask_of(decay), mask_of(adapt))
  _assert_updates_close(_run(tx, 3)[2], want)
  tx = optim.lars(
    _lr, WEIGHT_DECAY, MOMENTUM, EETA, mask_of(decay)(_params()), mask_of(adapt)(_params())
  )
  _assert_updates_close(_run(tx, 3)[2], want)


def test_lars_zero_weight_uses_trust_ratio_one():
  params = _params()
  tx = optim.lars(_lr, WEIGHT_DECAY, MOMENTUM, EETA)
  updates, _ = tx.update(_grads(0), tx.init(params), params)
  # First step, lr(0) = 0.5: ||w|| = 0 -> plain lr * g (decay of a zero weight adds nothing).
  np.testing.assert_allclose(updates['zero']['kernel'], -0.5 * _grads(0)['zero']['kernel'], 1e-6)
  # ||g|| = 0 (no decay): ratio 1, a zero update, no NaN from 0/0.
  grads = _grads(0)
  grads['conv']['kernel'] = np.zeros_like(grads['conv']['kernel'])
  tx = optim.lars(0.5, 0.0)
  updates, _ = jax.jit(tx.update)(grads, tx.init(params), params)
  np.testing.assert_array_equal(updates['conv']['kernel'], 0.0)


def test_lars_vector_params_get_plain_momentum_without_decay():
  params = _params()
  tx = optim.lars(_lr, WEIGHT_DECAY, MOMENTUM, EETA)
  state = tx.init(params)
  velocity = {'bias': 0.0, 'scale': 0.0}
  for step in range(3):
    updates, state = tx.update(_grads(step), state, params)
    grads = _grads(step)
    for (layer, name) in (('dense', 'bias'), ('bn', 'scale')):
      velocity[name] = MOMENTUM * velocity[name] + _lr(step) * grads[layer][name]
      np.testing.assert_allclose(updates[layer][name], -velocity[name], rtol=1e-5)


def test_lars_agrees_with_optax_lars_chain():
  # optax.lars (decay -> masked trust ratio -> lr -> trace) is mathematically the same update.
  mask = optim.default_mask
  ours = _run(optim.lars(_lr, WEIGHT_DECAY, MOMENTUM, EETA), 3)[2]
  theirs = _run(optax.lars(_lr, WEIGHT_DECAY, mask, EETA, 0.0, mask, MOMENTUM), 3)[2]
  for got, want in zip(jax.tree.leaves(ours), jax.tree.leaves(theirs)):
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-9)


def test_lars_schedule_uses_zero_based_step_and_jits():
  schedule = optim.warmup_cosine_schedule(1.0, warmup_steps=2, total_steps=10)
  params = _params()
  tx = optim.lars(schedule, WEIGHT_DECAY)
  state = tx.init(params)
  update = jax.jit(tx.update)
  updates, state = update(_grads(0), state, params)
  # schedule(0) = 0 under warm-up: the first update is exactly zero, as official.
  assert all(np.all(u == 0) for u in jax.tree.leaves(updates))
  updates, state = update(_grads(1), state, params)
  assert np.abs(updates['dense']['bias']).max() > 0
  np.testing.assert_allclose(updates['dense']['bias'], -0.5 * _grads(1)['dense']['bias'], 1e-6)


def test_weight_decay_mask_for_excludes_vectors_and_supervised_head():
  mask = optim.weight_decay_mask_for(_params())
  assert mask['conv']['kernel'] and mask['dense']['kernel'] and mask['zero']['kernel']
  assert not mask['dense']['bias'] and not mask['bn']['scale']
  assert not mask['head_supervised']['kernel']
  assert optim.weight_decay_mask_for(_params(), exclude=())['head_supervised']['kernel']


def test_create_optimizer_lars_excludes_head_and_matches_numpy():
  want = _np_lars(_params(), 3, KERNELS - {'head_supervised/kernel'},
                  KERNELS - {'head_supervised/kernel'})
  for params in (_params(), None):
    tx = optim.create_optimizer('lars', _lr, WEIGHT_DECAY, MOMENTUM, EETA, params=params)
    _assert_updates_close(_run(tx, 3)[2], want)


@pytest.mark.parametrize('name', ['momentum', 'adamw'])
def test_create_optimizer_others_run_under_jit(name):
  tx = optim.create_optimizer(name, 0.1, 1e-4, params=_params())
  params, _, _ = _run(tx, 2)
  assert all(np.all(np.isfinite(p)) for p in jax.tree.leaves(params))


def test_create_optimizer_unknown_name():
  with pytest.raises(ValueError, match='optim.optimizer'):
    optim.create_optimizer('rmsprop', 0.1, 0.0)


def test_sgd_momentum_is_nesterov():
  params = {'w': np.ones(2, np.float32)}
  tx = optim.sgd_momentum(0.1)
  state = tx.init(params)
  grad = {'w': np.ones(2, np.float32)}
  updates, state = tx.update(grad, state, params)
  np.testing.assert_allclose(updates['w'], -0.1 * (1 + 0.9), rtol=1e-6)  # -lr (g + m v), v = g


def test_scale_learning_rate():
  assert optim.scale_learning_rate(0.3, 4096, 'linear') == pytest.approx(4.8)
  assert optim.scale_learning_rate(0.075, 4096, 'sqrt') == pytest.approx(4.8)
  assert optim.scale_learning_rate(1.0, 512, 'linear') == pytest.approx(2.0)
  with pytest.raises(ValueError, match='optim.learning_rate_scaling'):
    optim.scale_learning_rate(0.3, 4096, 'cubic')


@pytest.mark.parametrize(
  'num_examples, batch, epochs, total, warmup',
  [(1_281_167, 4096, 100, 31_279, 3_127), (50_000, 512, 1000, 97_657, 976)],
)
def test_total_and_warmup_steps_reference_numbers(num_examples, batch, epochs, total, warmup):
  assert optim.total_and_warmup_steps(num_examples, batch, epochs, 10.0) == (total, warmup)
  assert optim.total_and_warmup_steps(num_examples, batch, epochs, 10, train_steps=7)[0] == 7
  assert optim.total_and_warmup_steps(num_examples, batch, epochs, 0.0)[1] == 0


def _np_schedule(step, peak, warmup, total):
  if step < warmup:
    return step / warmup * peak
  progress = min(step - warmup, total - warmup) / (total - warmup)
  return peak * 0.5 * (1 + math.cos(math.pi * progress))


def test_warmup_cosine_schedule_imagenet_numbers():
  total, warmup = optim.total_and_warmup_steps(1_281_167, 4096, 100, 10.0)
  peak = optim.scale_learning_rate(0.075, 4096, 'sqrt')
  schedule = jax.jit(optim.warmup_cosine_schedule(peak, warmup, total))
  steps = [0, 1, warmup - 1, warmup, warmup + 1, 17_000, total - 1, total, total + 50]
  got = [float(schedule(s)) for s in steps]
  want = [_np_schedule(s, peak, warmup, total) for s in steps]
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
  assert got[0] == 0.0 and got[7] == pytest.approx(0.0, abs=1e-6)
  assert got[3] == pytest.approx(4.8)


def test_warmup_cosine_schedule_without_warmup_is_pure_cosine():
  schedule = optim.warmup_cosine_schedule(2.0, 0, 100)
  np.testing.assert_allclose(schedule(0), 2.0)
  np.testing.assert_allclose(schedule(50), 1.0, rtol=1e-6)
  np.testing.assert_allclose(schedule(100), 0.0, atol=1e-6)
