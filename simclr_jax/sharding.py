"""The device mesh and the movement of host batches onto it.

One mesh axis, `data`: every device holds a full replica of the parameters and a slice of the
global batch. Each host feeds only its own slice (`host_batch_size = global / process_count`);
`jax.make_array_from_process_local_data` stitches the slices into one global `jax.Array`.
"""

from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

DATA_AXIS = 'data'


def make_mesh(devices: list[jax.Device] | None = None) -> Mesh:
  """A 1-D data-parallel mesh over all (or the given) devices."""
  devices = jax.devices() if devices is None else devices
  return Mesh(np.asarray(devices), (DATA_AXIS,))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def data_sharded(mesh: Mesh) -> NamedSharding:
  """Leading (batch) axis split over the `data` axis."""
  return NamedSharding(mesh, P(DATA_AXIS))


def host_batch_size(global_batch_size: int) -> int:
  return global_batch_size // jax.process_count()


def global_batch_from_host(mesh: Mesh, host_batch: dict[str, np.ndarray]) -> dict[str, jax.Array]:
  """Host-local numpy batch -> global arrays sharded along `data`."""
  sharding = data_sharded(mesh)
  return jax.tree.map(
    lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)), host_batch
  )


def replicate(mesh: Mesh, tree: Any) -> Any:
  """Places a pytree (params, optimizer state) fully replicated on the mesh."""
  return jax.device_put(tree, replicated(mesh))


# ---- Sharded train state (ZeRO-3 / FSDP style) ----------------------------------------------
# With `train.shard_state`, every parameter and optimizer-state tensor of at least
# MIN_SHARDED_SIZE elements is split along one of its dimensions over the `data` axis, so each
# device stores 1/N of it. The step all-gathers the parameters for the loss and gradients,
# cuts the gradients back to the parameters' layout and applies the optimizer on the shards,
# where XLA computes LARS's per-tensor norms over the shards exactly (train.make_train_step).
# Small tensors (biases, BatchNorm) and BatchNorm statistics stay replicated.
MIN_SHARDED_SIZE = 2**14


def state_spec(shape: tuple[int, ...], num_shards: int, min_size: int | None = None) -> P:
  """The largest dimension divisible by `num_shards` goes over `data`; P() if none or small."""
  min_size = MIN_SHARDED_SIZE if min_size is None else min_size
  if num_shards <= 1 or int(np.prod(shape, dtype=np.int64)) < min_size:
    return P()
  candidates = [d for d in range(len(shape)) if shape[d] % num_shards == 0]
  if not candidates:
    return P()
  dim = max(candidates, key=lambda d: (shape[d], -d))  # Largest; the first on a tie.
  return P(*([None] * dim + [DATA_AXIS]))


def tree_specs(tree: Any, num_shards: int, min_size: int | None = None) -> Any:
  """`state_spec` of every array leaf (shape-based, so params and their momentum agree)."""
  return jax.tree.map(lambda x: state_spec(tuple(np.shape(x)), num_shards, min_size), tree)


def layout(tree: Any, mesh: Mesh, split: bool) -> Any:
  """NamedShardings for every leaf: replicated, or split by `state_spec` when `split`."""
  if not split:
    return jax.tree.map(lambda _: replicated(mesh), tree)
  return jax.tree.map(lambda spec: NamedSharding(mesh, spec), tree_specs(tree, mesh.size),
                      is_leaf=lambda x: isinstance(x, P))


def to_host(tree: Any, mesh: Mesh) -> Any:
  """NumPy copies of (possibly sharded, multi-host) arrays on every host."""
  if all(getattr(x, 'is_fully_addressable', True) for x in jax.tree.leaves(tree)):
    return jax.device_get(tree)
  return jax.device_get(jax.jit(lambda t: t, out_shardings=replicated(mesh))(tree))
