"""A fine-tuning step in PyTorch from the exported train-mode module equals the step in JAX.

One SGD step, the same images and loss on both sides: the loss before and after, every
parameter, every BatchNorm statistic and the fine-tuned model's outputs (torch_export_test.py
builds the networks and exports them).
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import torch

from simclr_jax import export, torch_export

from torch_export_test import TOLERANCE, _case, _jax_model, _module, relative_error


@pytest.fixture(scope='module')
def tmp_root(tmp_path_factory):
  return str(tmp_path_factory.mktemp('torch_train'))


def _loss_jax(model, labels, target):
  def loss_fn(params, batch_stats, images):
    out, state = model.apply({'params': params, 'batch_stats': batch_stats}, images, train=True,
                             mutable=['batch_stats'])
    xent = optax.softmax_cross_entropy_with_integer_labels(out['logits_sup'], labels).mean()
    return xent + jnp.mean((out['projection'] - target) ** 2), state['batch_stats']
  return loss_fn


# A loss of the projection alone would be nearly BN-invariant (the last head BN fixes its batch
# mean and variance): its gradients would be rounding noise. Hence a regression target, and 8
# images: over 4, batch statistics make some gradients ill-conditioned even float32 vs float64.
@pytest.mark.parametrize('name', ['demo', 'sk_basic'])
def test_one_sgd_step_in_torch_equals_the_step_in_jax(name, tmp_root):
  """Train mode end to end: loss, gradients through every layer, BN statistics, optimiser."""
  config, params, batch_stats, output, _, _ = _case(name, tmp_root)
  size, learning_rate = config.data.image_size, 0.1
  images = np.random.default_rng(1).uniform(size=(8, size, size, 3)).astype(np.float32)
  labels = np.arange(len(images)) % 10
  target = np.random.default_rng(2).normal(size=(len(images), 128)).astype(np.float32)

  model = _jax_model(config, params)
  loss_fn = _loss_jax(model, labels, target)
  tx = optax.sgd(learning_rate)

  @jax.jit
  def step(params, batch_stats):
    (loss, new_stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, batch_stats,
                                                                         images)
    updates, _ = tx.update(grads, tx.init(params), params)
    new_params = optax.apply_updates(params, updates)
    loss_after, _ = loss_fn(new_params, new_stats, images)
    outputs = model.apply({'params': new_params, 'batch_stats': new_stats}, images, train=False)
    return loss, loss_after, new_params, new_stats, outputs

  loss, loss_after, new_params, new_stats, outputs = jax.device_get(step(params, batch_stats))

  net = _module(output).load(output).train()
  optimizer = torch.optim.SGD(net.parameters(), lr=learning_rate)
  nchw = torch.from_numpy(images).permute(0, 3, 1, 2)

  def torch_loss():
    out = net(nchw)
    xent = torch.nn.functional.cross_entropy(out['logits_sup'], torch.from_numpy(labels))
    return xent + (out['projection'] - torch.from_numpy(target)).pow(2).mean()

  torch_before = torch_loss()
  optimizer.zero_grad()
  torch_before.backward()
  optimizer.step()
  state_after_step = {k: v.clone() for k, v in net.state_dict().items()}
  with torch.no_grad():
    torch_after = torch_loss()  # as the JAX loss_after: new parameters, batch statistics

  assert abs(float(loss_after) - float(loss)) > 1e-3  # the step changes the loss
  errors = {'loss': relative_error(torch_before.item(), loss),
            'loss_after': relative_error(torch_after.item(), loss_after),
            'loss_change': relative_error(torch_after.item() - torch_before.item(),
                                          loss_after - loss)}
  expected = torch_export.state_dict_arrays(new_params, new_stats)
  assert set(expected) == set(state_after_step)
  for key, value in expected.items():
    if not key.endswith('num_batches_tracked'):
      errors[key] = relative_error(state_after_step[key].numpy(), value)
  net.load_state_dict(state_after_step)  # the statistics right after the step, as new_stats
  with torch.no_grad():
    out = net.eval()(nchw)
  for key in export.OUTPUTS:  # the fine-tuned model in inference mode
    errors[f'eval/{key}'] = relative_error(out[key].numpy(), outputs[key])
  print(name, 'sgd step', {k: f'{v:.1e}' for k, v in errors.items() if '.' not in k},
        f'max over these, every parameter and BN statistic: {max(errors.values()):.1e}')
  too_large = {k: v for k, v in errors.items() if v > TOLERANCE['train']}
  assert not too_large, too_large
