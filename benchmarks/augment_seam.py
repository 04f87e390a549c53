"""Device cost of the augmentation's device part, compiled for a described TPU slice (no TPU).

    python benchmarks/augment_seam.py --accelerator-type=v4-64 --batch-per-device=128 --size=224

For each candidate split between host and device it compiles, for the slice, what the device
would run per step on its share of the batch (two views per image, uint8 in, float32 out) and
prints XLA's FLOPs and bytes and the roofline time, to set beside the train step's from
`python -m simclr_jax.plan` (r50_1x on v4-64: 6.2 TFLOP and 73 ms per step per chip):
  * colour:   the host ships the two cropped, flipped views as uint8 at the model size; the
              device does colour jitter (p=0.8), grayscale (p=0.2) and blur (per-replica sigma);
  * all:      the host ships one uint8 canvas of --raw-size (the one data path, views.py); the
              device also crops, resizes and flips.
"""

import argparse
import functools

import common  # noqa: F401  (puts the repo root on sys.path)
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from simclr_jax import tpu_slices
from simclr_jax.data import device_augment


def _colour(key, views_uint8, strength):
  """Colour and blur of one device's two views [2, B, S, S, 3] (the 'colour' split)."""
  def one_view(view_key, images):
    keys = jax.random.split(view_key, images.shape[0] + 1)
    images = device_augment.to_float(images)
    images = jax.vmap(lambda k, x: jnp.clip(device_augment.random_color_jitter(k, x, strength),
                                            0.0, 1.0))(keys[1:], images)
    return device_augment.batch_random_blur(keys[0], images)

  return jax.vmap(one_view)(jax.random.split(key, 2), views_uint8)


def _all(key, canvases, size, strength):
  """The one data path's device half (views.py) on canvases holding a full-canvas image each."""
  from simclr_jax.data import views

  sizes = jnp.full((canvases.shape[0], 2), canvases.shape[1], jnp.int32)
  keys = jax.random.split(key, canvases.shape[0] + 1)
  return jnp.stack(views.train_views(
    keys[1:], canvases, sizes, image_size=size, num_views=2, color_jitter_strength=strength,
    blur='batch', blur_key=keys[0]))


def main(argv: list[str] | None = None) -> dict:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--accelerator-type', default='v4-64')
  parser.add_argument('--batch-per-device', type=int, default=128)
  parser.add_argument('--size', type=int, default=224)
  parser.add_argument('--raw-size', type=int, default=256)
  parser.add_argument('--strength', type=float, default=1.0)
  parser.add_argument('--output', default='')
  args = parser.parse_args(argv)
  tpu_slice = tpu_slices.parse_accelerator_type(args.accelerator_type)
  devices = tpu_slices.slice_devices(tpu_slice)
  mesh = Mesh(np.asarray(devices), ('data',))
  n, b, s = len(devices), args.batch_per_device, args.size
  chip = tpu_slice.chip
  peak = chip.peak_tflops * 1e12 / chip.devices_per_chip
  bandwidth = chip.hbm_gbps * 1e9 / chip.devices_per_chip
  key = jax.ShapeDtypeStruct((), jax.random.key(0).dtype, sharding=NamedSharding(mesh, P()))
  splits = {
    'colour': (functools.partial(_colour, strength=args.strength),
               jax.ShapeDtypeStruct((2, n * b, s, s, 3), jnp.uint8,
                                    sharding=NamedSharding(mesh, P(None, 'data'))),
               P(None, 'data')),
    'all': (functools.partial(_all, size=s, strength=args.strength),
            jax.ShapeDtypeStruct((n * b, args.raw_size, args.raw_size, 3), jnp.uint8,
                                 sharding=NamedSharding(mesh, P('data'))), P('data')),
  }
  print(f'{args.accelerator_type} ({tpu_slice.topology}), {b} images x 2 views per device, '
        f'{s} px')
  print('| split | host ships per image | TFLOP/dev | GB/dev | roofline ms | bound |')
  print('|---|---|---|---|---|---|')
  rows = []
  for name, (fn, spec, in_spec) in splits.items():
    def per_device(key, images, fn=fn):
      return fn(jax.random.fold_in(key, jax.lax.axis_index('data')), images)

    step = jax.jit(jax.shard_map(per_device, mesh=mesh, in_specs=(P(), in_spec),
                                 out_specs=P(None, 'data'), check_vma=False))
    compiled = step.lower(key, spec).compile()
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost
    flops, accessed = float(cost.get('flops', 0.0)), float(cost.get('bytes accessed', 0.0))
    compute, memory = flops / peak, accessed / bandwidth
    shipped = 2 * s * s * 3 if name == 'colour' else args.raw_size ** 2 * 3
    rows.append({'split': name, 'shipped_bytes': shipped, 'tflop_per_device': flops / 1e12,
                 'gb_per_device': accessed / 1e9, 'roofline_ms': 1e3 * max(compute, memory)})
    print(f'| {name} | {shipped / 1e3:.0f} KB uint8 | {flops / 1e12:.3f} | {accessed / 1e9:.2f} | '
          f'{1e3 * max(compute, memory):.2f} | {"compute" if compute >= memory else "memory"} |')

  results = {'accelerator_type': args.accelerator_type, 'batch_per_device': b, 'size': s,
             'rows': rows}
  common.write_json(args.output, 'augment_seam', results)
  return results


if __name__ == '__main__':
  main()
