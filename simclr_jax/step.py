"""One training step and its state: the TrainState, how it is laid out on the mesh
(replicated, or split with `train.shard_state`), and the jitted data-parallel update.

The step is `jax.jit(jax.shard_map(step_fn))` over the 1-D `data` mesh: inside, each device sees
its slice of the global batch, BatchNorm reduces its statistics over the axis (global BN), the
NT-Xent loss all-gathers the projections, and the loss is the global-batch mean, so gradients
come out already averaged over devices. `train.py` runs it in the loop; `plan.py` compiles it
for a TPU slice.
"""

import functools
from typing import Any

import flax
import jax
import jax.numpy as jnp
import optax
from jax.sharding import PartitionSpec as P

from simclr_jax import sharding, stages


@flax.struct.dataclass
class TrainState:
  step: jax.Array  # int32 scalar: number of optimizer updates done.
  params: Any
  batch_stats: Any
  opt_state: Any


def _initial_state(model, tx, image_size: int, rng, given: dict | None) -> TrainState:
  if given is None:
    given = model.init(rng, jnp.zeros((2, image_size, image_size, 3), jnp.float32), train=False)
  params = given['params']
  return TrainState(
    step=jnp.zeros((), jnp.int32),
    params=params,
    batch_stats=given.get('batch_stats', {}),
    opt_state=tx.init(params),
  )


def init_state(model, tx, image_size: int, seed: int, mesh, variables: dict | None = None,
               shard_state: bool = False):
  """The train state on the mesh (replicated, or sharded: `state_shardings`), fresh (from
  `seed`) or from given variables."""
  init = functools.partial(_initial_state, model, tx, image_size)
  rng = jax.random.fold_in(jax.random.key(seed), 0)  # purpose 0: parameter init
  shardings = state_shardings(jax.eval_shape(init, rng, variables), mesh, shard_state)
  return jax.jit(init, out_shardings=shardings)(rng, variables)


def make_train_step(
  loss_fn: stages.LossFn, tx, schedule, mesh, trainable: Any = None, prepare=None,
  state_sharding: Any = None,
):
  """jit(step): one optimizer update on a global batch; state donated.

  `prepare(batch, resident, step)` builds the stage's views on the device before the loss
  (data/views.py): from the host's canvases, or from the device-resident split `resident`
  (passed replicated each call, else None). `teacher` holds the frozen teacher's variables
  (distillation, else None), an input of the step rather than constants baked into it.

  Replicated state (`state_sharding=None`): the whole step runs inside `shard_map`. Sharded
  state (`state_sharding`: a TrainState of NamedShardings, see `state_shardings`): XLA
  all-gathers the parameters (and a sharded teacher) into the `shard_map` that computes loss
  and gradients exactly as the replicated step does; the all-reduced gradients are cut to the
  parameters' layout and the optimizer runs on the shards, where XLA computes LARS's
  per-tensor norms over all shards exactly. Both give the same update (tests/train_test.py).
  """

  def loss_and_grads(params, batch_stats, batch, teacher, resident, step):
    if prepare is not None:
      batch = prepare(batch, resident, step)
    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
    (_, (batch_stats, metrics)), grads = grad_fn(params, batch_stats, batch, teacher)
    return grads, batch_stats, metrics

  def apply_gradients(state: TrainState, grads, batch_stats, metrics):
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    if trainable is not None:  # Frozen parameters stay bit-identical.
      updates = jax.tree.map(lambda u, t: u if t else jnp.zeros_like(u), updates, trainable)
    params = optax.apply_updates(state.params, updates)
    metrics = dict(metrics)
    metrics['learning_rate'] = schedule(state.step)
    metrics['grad_norm'] = optax.tree.norm(grads)
    metrics['weight_norm'] = optax.tree.norm(params)
    return TrainState(state.step + 1, params, batch_stats, opt_state), metrics

  data = P(sharding.DATA_AXIS)
  grads_fn = loss_and_grads  # Replicated: the whole step_fn runs inside shard_map.
  if state_sharding is not None:
    grads_fn = jax.shard_map(loss_and_grads, mesh=mesh, in_specs=(P(), P(), data, P(), P(), P()),
                             out_specs=(P(), P(), P()))

  def step_fn(state: TrainState, batch, teacher, resident):
    grads, batch_stats, metrics = grads_fn(
      state.params, state.batch_stats, batch, teacher, resident, state.step)
    if state_sharding is not None:
      grads = jax.lax.with_sharding_constraint(grads, state_sharding.params)
    return apply_gradients(state, grads, batch_stats, metrics)

  if state_sharding is None:
    step_fn = jax.shard_map(
      step_fn, mesh=mesh, in_specs=(P(), data, P(), P()), out_specs=(P(), P()))
    jitted = jax.jit(step_fn, donate_argnums=0)
  else:
    jitted = jax.jit(step_fn, out_shardings=(state_sharding, sharding.replicated(mesh)),
                     donate_argnums=0)
  step = lambda state, batch, teacher=None, resident=None: jitted(state, batch, teacher, resident)
  step.lower = lambda state, batch, teacher=None, resident=None: jitted.lower(
    state, batch, teacher, resident)
  return step


def teacher_shardings(teacher_variables: Any, mesh, shard_state: bool) -> Any:
  """The frozen teacher's variables: replicated, or split like parameters under shard_state."""
  return sharding.layout(teacher_variables, mesh, shard_state)


def state_shardings(abstract_state: 'TrainState', mesh, shard_state: bool) -> 'TrainState':
  """NamedShardings of the train state: all replicated, or parameters and optimizer state split
  over `data` (sharding.state_spec); the step counter and BN statistics stay replicated."""
  return TrainState(
    step=sharding.layout(abstract_state.step, mesh, False),
    params=sharding.layout(abstract_state.params, mesh, shard_state),
    batch_stats=sharding.layout(abstract_state.batch_stats, mesh, False),
    opt_state=sharding.layout(abstract_state.opt_state, mesh, shard_state),
  )


def abstract_state(model, tx, image_size: int, mesh, shard_state: bool) -> TrainState:
  """ShapeDtypeStructs (with their shardings) of a stage's train state; nothing allocated."""
  shapes = jax.eval_shape(
    lambda: _initial_state(model, tx, image_size, jax.random.key(0), None))
  shardings = state_shardings(shapes, mesh, shard_state)
  return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                      shapes, shardings)
