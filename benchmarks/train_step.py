"""Throughput of the real pretraining step (simclr_jax.train) on synthetic, device-resident views.

    python benchmarks/train_step.py --config=configs/cifar10_r18.py --batch=64 --steps=10

Reports compile time, steps/s, views/s per device, peak device memory (when the backend exposes
`memory_stats`), FLOPs per step from XLA's cost analysis and MFU against the chip's dense bf16
peak (accelerators only; CPU reports achieved FLOP/s). Input transfer is excluded on purpose:
this measures the step, `input_pipeline.py` measures the input.
"""

import argparse
import statistics
import time

import common  # noqa: F401  (puts the repo root on sys.path)
import jax
import numpy as np

from simclr_jax import sharding, stages, train
from simclr_jax.models import load


def _flops(lowered) -> float | None:
  """FLOPs of one step from XLA's cost analysis (HLO estimate; per-device program)."""
  analysis = lowered.cost_analysis()
  if isinstance(analysis, (list, tuple)):
    analysis = analysis[0] if analysis else None
  return float(analysis['flops']) if analysis and 'flops' in analysis else None


def main(argv: list[str] | None = None) -> dict:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--config', default='configs/cifar10_r18.py')
  parser.add_argument('--batch', type=int, default=0, help='global batch; 0 = config value')
  parser.add_argument('--steps', type=int, default=10, help='timed steps after warm-up')
  parser.add_argument('--width', type=float, default=0.0, help='override model.width_multiplier')
  parser.add_argument('--dtype', default='', help="override model.compute_dtype ('bfloat16')")
  parser.add_argument('--num_classes', type=int, default=10)
  parser.add_argument('--output', default='')
  args = parser.parse_args(argv)

  config = common.load_config(args.config)
  if args.batch:
    config.train.global_batch_size = args.batch
  if args.width:
    config.model.width_multiplier = args.width
  if args.dtype:
    config.model.compute_dtype = args.dtype
  config.train.train_steps = 1000  # Only the schedule's length; no data is read.
  batch_size, image_size = config.train.global_batch_size, config.data.image_size
  mesh = sharding.make_mesh()
  model = load.build(config, args.num_classes)
  abstract_params = load.abstract_variables(model, image_size)['params']
  tx, schedule, _ = train.build_optimizer(config, abstract_params, num_train_examples=50_000)
  state = train.init_state(model, tx, image_size, config.seed, mesh)
  loss_fn = stages.pretrain_loss_fn(
    model, temperature=config.train.temperature, weight_decay=config.optim.weight_decay,
    optimizer=config.optim.optimizer, linear_probe=config.train.linear_eval_while_pretraining,
    global_bn=config.model.global_bn,
  )
  step = train.make_train_step(loss_fn, tx, schedule, mesh)
  rng = np.random.default_rng(0)
  views = lambda: rng.uniform(0, 1, (batch_size, image_size, image_size, 3)).astype(np.float32)
  batch = sharding.global_batch_from_host(mesh, {
    'view_a': views(), 'view_b': views(),
    'label': rng.integers(0, args.num_classes, batch_size).astype(np.int32)})

  lowered = jax.jit(lambda s, b: step(s, b)).lower(state, batch)
  flops = _flops(lowered)
  start = time.perf_counter()
  state, metrics = step(state, batch)  # Compile + first step.
  jax.block_until_ready(metrics)
  first_step_s = time.perf_counter() - start
  state, metrics = step(state, batch)  # Warm-up.
  jax.block_until_ready(metrics)

  def one_step():
    nonlocal state, metrics
    state, metrics = step(state, batch)
    jax.block_until_ready(metrics)

  times = common.time_calls(one_step, args.steps)
  step_s = statistics.median(times)
  devices = jax.devices()
  memory = devices[0].memory_stats() or {}
  peak = common.peak_tflops(devices[0].device_kind)
  num_devices = len(devices)
  results = {
    'config': args.config, 'global_batch_size': batch_size, 'image_size': image_size,
    'depth': config.model.depth, 'width_multiplier': config.model.width_multiplier,
    'compute_dtype': config.model.compute_dtype, 'num_devices': num_devices,
    'compile_s': max(first_step_s - step_s, 0.0), 'step_s': step_s,
    'steps_per_s': 1.0 / step_s,
    'views_per_s_per_device': 2 * batch_size / step_s / num_devices,
    'peak_memory_bytes': memory.get('peak_bytes_in_use'),
    'flops_per_step': flops,
    'flops_per_s': flops / step_s if flops else None,
    'mfu': flops / step_s / (peak * 1e12) if flops and peak else None,
    'loss': float(metrics['total_loss']),
  }
  common.print_table([{k: v for k, v in results.items() if k != 'config'}])
  common.write_json(args.output, 'train_step', results)
  return results


if __name__ == '__main__':
  main()
