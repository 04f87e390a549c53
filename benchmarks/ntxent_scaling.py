"""Per-device memory of the sharded NT-Xent loss (+ gradient) as the global batch grows.

    python benchmarks/ntxent_scaling.py

On 8 fake CPU devices, compiles `jax.shard_map`'d `simclr_jax.losses.nt_xent` with its gradient
and reads the per-device temporary memory from `compiled.memory_analysis()`. Each device holds
only its rows of the [global, global] logits, [local, global] blocks, so temp memory should
grow like local x global (= global^2 / devices), not global^2: at a fixed global batch it
halves when the devices double. The fit reports bytes per (local x global) element.
"""

import os

if __name__ == '__main__':  # Before JAX is imported (pytest's conftest sets this for tests).
  os.environ.setdefault('JAX_PLATFORMS', 'cpu')
  os.environ['XLA_FLAGS'] = (os.environ.get('XLA_FLAGS', '') +
                             ' --xla_force_host_platform_device_count=8').strip()

import argparse

import common  # noqa: F401  (puts the repo root on sys.path)
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, PartitionSpec as P

from simclr_jax import losses

AXIS = 'data'


def temp_bytes(global_batch: int, num_devices: int, dim: int) -> dict:
  """Per-device memory of one compiled loss+grad on `num_devices` devices."""
  mesh = Mesh(np.asarray(jax.devices()[:num_devices]), (AXIS,))

  def loss_and_grad(z_a, z_b):
    return jax.value_and_grad(losses.nt_xent, argnums=(0, 1))(z_a, z_b, 0.1, AXIS)

  sharded = jax.shard_map(loss_and_grad, mesh=mesh, in_specs=(P(AXIS), P(AXIS)),
                          out_specs=(P(), (P(AXIS), P(AXIS))), check_vma=False)
  z = jax.ShapeDtypeStruct((global_batch, dim), jnp.float32)
  compiled = jax.jit(sharded).lower(z, z).compile()
  memory = compiled.memory_analysis()
  local = global_batch // num_devices
  return {
    'global_batch': global_batch, 'devices': num_devices, 'local_batch': local,
    'temp_bytes': int(memory.temp_size_in_bytes),
    'argument_bytes': int(memory.argument_size_in_bytes),
    'bytes_per_local_x_global': memory.temp_size_in_bytes / (local * global_batch),
    'bytes_per_global_sq': memory.temp_size_in_bytes / global_batch**2,
  }


def _fit_slope(rows: list[dict], x_key: str) -> float:
  """Least-squares slope of log(temp) against log(x)."""
  x = np.log([r[x_key] for r in rows])
  y = np.log([r['temp_bytes'] for r in rows])
  return float(np.polyfit(x, y, 1)[0])


def main(argv: list[str] | None = None) -> dict:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--batches', default='256,512,1024,2048,4096')
  parser.add_argument('--fixed_batch', type=int, default=2048, help='for the device sweep')
  parser.add_argument('--dim', type=int, default=128)
  parser.add_argument('--output', default='')
  args = parser.parse_args(argv)
  num_devices = min(8, jax.device_count())
  by_batch = [temp_bytes(int(b), num_devices, args.dim) for b in args.batches.split(',')]
  device_counts = [d for d in (1, 2, 4, 8) if d <= num_devices]
  by_devices = [temp_bytes(args.fixed_batch, d, args.dim) for d in device_counts]
  print(f'Growing global batch on {num_devices} devices:')
  common.print_table(by_batch)
  print(f'Global batch {args.fixed_batch} on 1..{num_devices} devices:')
  common.print_table(by_devices)
  ratios = [r['bytes_per_local_x_global'] for r in by_batch + by_devices]
  results = {
    'dim': args.dim, 'by_global_batch': by_batch, 'by_devices': by_devices,
    # ~2 when temp ~ global^2 (with local = global / devices); ~-1 along the device sweep
    # when temp ~ local x global, ~0 if it were global^2 on every device.
    'slope_vs_global_batch': _fit_slope(by_batch, 'global_batch'),
    'slope_vs_devices': _fit_slope(by_devices, 'devices') if len(by_devices) > 1 else None,
    'bytes_per_local_x_global_median': float(np.median(ratios)),
  }
  print({k: v for k, v in results.items() if k.startswith(('slope', 'bytes'))})
  common.write_json(args.output, 'ntxent_scaling', results)
  return results


if __name__ == '__main__':
  main()
