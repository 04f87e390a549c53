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
