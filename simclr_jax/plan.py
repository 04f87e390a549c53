"""Rehearse a Cloud TPU slice on this machine: compile every stage's real step for it.

    python -m simclr_jax.plan --config=configs/r152_3x.py --accelerator-type=v4-64 \
        [--config.field=value ...] [--out=plan.json]

No TPU is needed, only libtpu (`pip install -e '.[tpu]'`): JAX describes the slice
(`jax.experimental.topologies`), and the train and eval steps that `train.py` runs (the same
functions, shardings and donation; distillation with its teacher) are compiled for it with
abstract inputs. For every stage in `config.stages` one row: devices, per-device batch,
per-device HBM (state, batch, temporaries, total) against capacity, FLOPs and bytes per step, a
roofline lower bound on the step time from the chip's peak FLOP/s and HBM bandwidth, views/s per
chip and MFU at that bound, and the images/s each host's input must deliver. A stage that does
not fit is re-planned with the cheapest change that fits (state sharding, remat, then a larger
slice), and the command exits 1.

These are compiled estimates, not measurements: the compiler's memory plan is exact for the
program, but step times are lower bounds (no communication, no input stalls, no overheads).
"""

import dataclasses
import json
import math
import re
import sys
import time
from typing import Any

# First: tpu_slices sets libtpu's environment, which must precede importing JAX.
from simclr_jax.tpu_slices import GIB, PlanError, Slice, parse_accelerator_type, slice_devices

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from absl import app, flags, logging  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from simclr_jax import (cli, evaluation, fs, perf, plan_files, run, sharding,  # noqa: E402
                        stages, train, validation)
from simclr_jax.data import input as data_input  # noqa: E402
from simclr_jax.data import subsets, views  # noqa: E402
from simclr_jax.models import load  # noqa: E402


# Classes and train-split sizes of datasets too big to list here (tfds catalog figures), for
# planning without the data; other datasets are listed (demo, folders, prepared tfds).
KNOWN_DATASETS = {
  'imagenet2012': (1000, 1_281_167),
  'imagenet2012_subset/1pct': (1000, 12_811),
  'imagenet2012_subset/10pct': (1000, 128_116),
  'cifar10': (10, 50_000),
  'cifar100': (100, 50_000),
  'stl10': (10, 5_000),
}


def dataset_facts(config, stage: str) -> tuple[int, int]:
  """(num_classes, num_train_examples) of the data a stage trains on, without reading images."""
  dataset = subsets.stage_dataset(config, stages.get(stage))
  if dataset in KNOWN_DATASETS:
    return KNOWN_DATASETS[dataset]

  source = data_input.load_source(config, config.data.train_split, dataset)
  return source.num_classes, source.num_examples


def _bytes_per_device(tree: Any) -> int:
  """Bytes one device holds of a pytree of sharded ShapeDtypeStructs."""

  def one(x):
    shape = x.sharding.shard_shape(x.shape) if x.sharding is not None else x.shape
    return math.prod(shape) * np.dtype(x.dtype).itemsize

  return sum(one(x) for x in jax.tree.leaves(tree))


def _abstract(tree: Any, shardings: Any) -> Any:
  return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree,
                      shardings)


def _train_batch(batch_size: int, canvas_size: int, mesh) -> dict:
  """The host pipeline's global batch (canvases, pipeline.py), as abstract arrays over `data`."""


  data = sharding.data_sharded(mesh)
  spec = lambda shape, dtype: jax.ShapeDtypeStruct((batch_size, *shape), dtype, sharding=data)
  return {'image': spec((canvas_size, canvas_size, 3), jnp.uint8), 'size': spec((2,), jnp.int32),
          'label': spec((), jnp.int32), 'index': spec((), jnp.int32), 'epoch': spec((), jnp.int32)}


_OOM = re.compile(r'([\d.]+)([KMGTPE])\)? exceeds available HBM \(([\d.]+)([KMGTPE])')
_UNITS = {'K': 2**10, 'M': 2**20, 'G': 2**30, 'T': 2**40, 'P': 2**50, 'E': 2**60}


def _out_of_memory(error: Exception) -> tuple[float, float] | None:
  """(needed, available) bytes from XLA's RESOURCE_EXHAUSTED message, or None."""
  match = _OOM.search(str(error))
  if not match:
    return None
  needed = float(match.group(1)) * _UNITS[match.group(2)]
  return needed, float(match.group(3)) * _UNITS[match.group(4)]


def compile_stage(config, stage: str, tpu_slice: Slice, devices: list) -> dict[str, Any]:
  """Compiles `stage`'s train and eval steps for the slice; returns one plan row."""
  spec = stages.get(stage)
  derived = spec.derive(config)
  hosts = len({d.process_index for d in devices})
  validation.validate_stage(config, stage, len(devices), hosts)
  num_classes, num_examples = dataset_facts(derived, stage)
  mesh = sharding.make_mesh(devices)
  size = derived.data.image_size
  shard_state = derived.train.shard_state
  teacher_model = teacher = None
  if spec.teacher:  # The teacher: the stage of this run it names (by default the fine-tuned one).
    teacher_stage = spec.teacher.run_stage(config) or spec.teacher.default
    teacher_model = load.build(run.stage_config(config, teacher_stage), num_classes,
                               supervised_head_stop_gradient=True)
    shapes = load.abstract_variables(teacher_model, size)
    teacher = _abstract(shapes, train.teacher_shardings(shapes, mesh, shard_state))
  parts = train.build_stage_parts(derived, spec, num_classes, teacher_model)
  params = load.abstract_variables(parts.model, size)['params']
  tx, schedule, _ = train.build_optimizer(derived, params, num_examples, parts.trainable)
  state = train.abstract_state(parts.model, tx, size, mesh, shard_state)
  # The real step: the device half of the input path (views.py) builds the views inside it.
  prepare = views.make_prepare(derived, spec.views, sharding.DATA_AXIS)
  step = train.make_train_step(
    parts.loss_fn, tx, schedule, mesh, parts.trainable, prepare,
    state_sharding=jax.tree.map(lambda x: x.sharding, state) if shard_state else None)
  global_batch = derived.train.global_batch_size
  batch = _train_batch(global_batch, data_input.canvas_size(derived), mesh)
  num_views = global_batch * spec.num_views
  row = {
    'stage': stage, 'accelerator_type': tpu_slice.accelerator_type,
    'topology': tpu_slice.topology, 'devices': len(devices), 'hosts': hosts,
    'global_batch': global_batch, 'per_device_batch': global_batch // len(devices),
    'shard_state': bool(shard_state), 'remat': bool(derived.model.remat),
    'compute_dtype': derived.model.compute_dtype,
    'state_gib': (_bytes_per_device(state) + _bytes_per_device(teacher or {})) / GIB,
    'batch_gib': _bytes_per_device(batch) / GIB,
    'capacity_gib': tpu_slice.hbm_per_device / GIB,
  }
  model_flops = perf.step_flops(parts.model, size, num_views, teacher_model)  # All devices.
  row['model_tflop_per_device'] = model_flops / len(devices) / 1e12
  if row['state_gib'] + row['batch_gib'] > row['capacity_gib']:
    row.update(fits=False, needed_gib=row['state_gib'] + row['batch_gib'],
               reason='state and batch alone exceed HBM (not compiled)')
    return row
  started = time.time()
  try:
    compiled = step.lower(state, batch, teacher).compile()
  except Exception as error:  # noqa: BLE001 - XLA reports running out of HBM as an error.
    sizes = _out_of_memory(error)
    if sizes is None:
      raise
    row.update(fits=False, compile_s=time.time() - started, reason='XLA: out of HBM',
               needed_gib=(sizes[0] + (row['state_gib'] + row['batch_gib']) * GIB) / GIB)
    return row
  row['compile_s'] = time.time() - started
  memory = compiled.memory_analysis()
  row.update(
    argument_gib=memory.argument_size_in_bytes / GIB,
    output_gib=memory.output_size_in_bytes / GIB,
    alias_gib=memory.alias_size_in_bytes / GIB,
    temp_gib=memory.temp_size_in_bytes / GIB,
  )
  row['total_gib'] = (memory.argument_size_in_bytes + memory.output_size_in_bytes
                      - memory.alias_size_in_bytes + memory.temp_size_in_bytes
                      + memory.generated_code_size_in_bytes) / GIB
  row['fits'] = row['total_gib'] <= row['capacity_gib']
  if not row['fits']:
    row.update(needed_gib=row['total_gib'], reason='compiled total exceeds HBM')
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, list) else cost
  row['tflop_per_device'] = float(cost.get('flops', 0.0)) / 1e12
  row['gb_per_device'] = float(cost.get('bytes accessed', 0.0)) / 1e9
  chip = tpu_slice.chip
  peak = chip.peak_tflops * 1e12 / chip.devices_per_chip  # FLOP/s per device
  bandwidth = chip.hbm_gbps * 1e9 / chip.devices_per_chip  # bytes/s per device
  seconds = max(row['tflop_per_device'] * 1e12 / peak, row['gb_per_device'] * 1e9 / bandwidth)
  row['bound'] = 'compute' if row['tflop_per_device'] * 1e12 / peak >= (
    row['gb_per_device'] * 1e9 / bandwidth) else 'memory'
  row['step_ms'] = 1e3 * seconds
  row['views_per_s_per_chip'] = num_views / tpu_slice.chips / seconds
  row['mfu'] = row['model_tflop_per_device'] * 1e12 / (seconds * peak)
  row['host_images_per_s'] = global_batch / seconds / hosts
  row['eval_gib'] = _eval_memory(derived, parts.model, state, mesh, len(devices))
  return row


def _eval_memory(config, model, state, mesh, num_devices: int) -> float:
  """Per-device HBM of the compiled eval step (GiB) with the train state's parameters."""


  side = data_input.canvas_size(config)
  batch_size = math.ceil(config.train.eval_batch_size / num_devices) * num_devices
  data = sharding.data_sharded(mesh)
  batch = {
    'image': jax.ShapeDtypeStruct((batch_size, side, side, 3), jnp.uint8, sharding=data),
    'size': jax.ShapeDtypeStruct((batch_size, 2), jnp.int32, sharding=data),
    'label': jax.ShapeDtypeStruct((batch_size,), jnp.int32, sharding=data),
    'mask': jax.ShapeDtypeStruct((batch_size,), jnp.float32, sharding=data),
  }
  compiled = evaluation.make_eval_step(model, mesh, views.make_eval_view(config)).lower(
    state.params, state.batch_stats, batch).compile()
  memory = compiled.memory_analysis()
  return (memory.argument_size_in_bytes + memory.output_size_in_bytes
          - memory.alias_size_in_bytes + memory.temp_size_in_bytes) / GIB


def _candidate_fixes(config, tpu_slice: Slice, stage: str):
  """Changes to try, cheapest first: shard the state, remat blocks, then larger slices."""

  derived = run.stage_config(config, stage)
  if not derived.train.shard_state:
    yield '--config.train.shard_state=True', {'train.shard_state': True}, tpu_slice
  if not derived.model.remat:
    yield '--config.model.remat=True', {'model.remat': True}, tpu_slice
  for factor in (2, 4, 8):
    bigger = tpu_slice.scaled(factor)
    yield f'--accelerator-type={bigger.accelerator_type}', {}, bigger


def _with(config, overrides: dict[str, Any]):
  config = config.copy_and_resolve_references()
  for dotted, value in overrides.items():
    section, field = dotted.split('.')
    with config.unlocked():
      config[section][field] = value
  return config


def find_fix(config, stage: str, tpu_slice: Slice, max_compiles: int) -> dict[str, Any] | None:
  """The first candidate fix (cumulative) under which `stage` fits, compiling at most N."""

  applied: dict[str, Any] = {}
  flags_so_far: list[str] = []
  for flag, overrides, candidate in _candidate_fixes(config, tpu_slice, stage):
    if max_compiles <= 0:
      return None
    applied.update(overrides)
    if candidate is tpu_slice:
      flags_so_far.append(flag)
      flags = list(flags_so_far)
    else:
      flags = flags_so_far + [flag]
    try:
      row = compile_stage(_with(config, applied), stage, candidate, slice_devices(candidate))
    except (PlanError, validation.ConfigError):  # A slice the config's batches do not divide.
      continue
    if 'compile_s' in row:
      max_compiles -= 1
    if row['fits']:
      return {'flags': flags, 'row': row}
  return None


def _fmt(row: dict[str, Any], key: str, spec: str) -> str:
  return format(row[key], spec) if key in row else '-'


def table(rows: list[dict[str, Any]]) -> str:
  header = (f'{"stage":<11}{"devices":>8}{"batch/dev":>10}{"state":>7}{"batch":>7}{"temp":>7}'
            f'{"total":>8}{"HBM":>7}{"eval":>7}{"TFLOP":>8}{"GB":>7}{"step ms":>9}'
            f'{"views/s/chip":>13}{"MFU":>6}{"img/s/host":>11}  verdict')
  lines = [header, '-' * (len(header) + 20)]
  for row in rows:
    verdict = 'fits' if row['fits'] else (
      f'does not fit: needs {row["needed_gib"]:.1f} GiB, has {row["capacity_gib"]:.1f} GiB')
    if row.get('fix'):
      verdict += f'; fits with {" ".join(row["fix"]["flags"])}'
    mfu = f'{100 * row["mfu"]:.0f}%' if 'mfu' in row else '-'
    lines.append(
      f'{row["stage"]:<11}{row["devices"]:>8}{row["per_device_batch"]:>10}'
      f'{_fmt(row, "state_gib", ".2f"):>7}{_fmt(row, "batch_gib", ".2f"):>7}'
      f'{_fmt(row, "temp_gib", ".2f"):>7}{_fmt(row, "total_gib", ".2f"):>8}'
      f'{row["capacity_gib"]:>7.1f}{_fmt(row, "eval_gib", ".2f"):>7}'
      f'{_fmt(row, "tflop_per_device", ".3g"):>8}{_fmt(row, "gb_per_device", ".3g"):>7}'
      f'{_fmt(row, "step_ms", ".3g"):>9}{_fmt(row, "views_per_s_per_chip", ".0f"):>13}'
      f'{mfu:>6}{_fmt(row, "host_images_per_s", ".0f"):>11}  {verdict}')
  return '\n'.join(lines)


def make_plan(config, accelerator_type: str, topology: str = '', max_fix_compiles: int = 3,
              log=print) -> dict[str, Any]:
  """Compiles every stage of `config.stages` for the slice; returns the plan (plan.json)."""

  tpu_slice = parse_accelerator_type(accelerator_type)
  if topology:
    tpu_slice = dataclasses.replace(tpu_slice, topology=topology)
  devices = slice_devices(tpu_slice)
  if len(devices) != tpu_slice.num_devices:
    raise PlanError(f'{tpu_slice.topology} has {len(devices)} devices, expected '
                    f'{tpu_slice.num_devices} for {accelerator_type}')
  rows = []
  for stage in validation.stage_list(config):
    log(f'{stage}: compiling the train and eval steps for {accelerator_type} '
        f'({tpu_slice.topology}, {len(devices)} devices)...')
    row = compile_stage(config, stage, tpu_slice, devices)
    if not row['fits'] and max_fix_compiles > 0:
      log(f'{stage}: does not fit; looking for the cheapest change that does...')
      row['fix'] = find_fix(config, stage, tpu_slice, max_fix_compiles)
    rows.append(row)
  chip = tpu_slice.chip
  return {
    'config': config.name, 'accelerator_type': accelerator_type, 'topology': tpu_slice.topology,
    'fits': all(row['fits'] for row in rows), 'stages': rows,
    'chip': dataclasses.asdict(chip),
    'note': 'Compiled estimates, not measurements: HBM from the TPU compiler for this program; '
            'step time is a roofline lower bound max(FLOPs / peak, bytes / HBM bandwidth) per '
            f'device from {chip.source} ({chip.peak_tflops:g} TFLOP/s bf16, {chip.hbm_gbps:g} '
            f'GB/s, {chip.hbm_gib:.1f} GiB per chip); MFU = 3 x analytic forward FLOPs / '
            '(bound x peak).',
  }


def main(argv: list[str], flag_values) -> None:
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {" ".join(argv[1:])}')
  logging.set_verbosity(logging.WARNING)

  config, accelerator_type, topology, out, max_fix_compiles, replan, workdir = (
    holder.value for holder in flag_values)
  default_out = fs.join('workdirs', 'plans', f'{config.name}-{accelerator_type}.json')
  out = out or default_out
  wanted = plan_files.fingerprint(config, accelerator_type, topology, max_fix_compiles)
  plan, why_not = (None, '') if replan else plan_files.reusable(out, wanted)
  reused = plan is not None
  if reused:
    print(f'Reusing the plan in {out}: the same config, slice, jax {wanted["jax"]}, libtpu '
          f'{wanted["libtpu"] or "-"} and code ({wanted["code"]}); --replan compiles again.',
          file=sys.stderr)
  else:
    if why_not:
      print(f'{why_not}: compiling again.', file=sys.stderr)
    try:
      plan = make_plan(config, accelerator_type, topology, max_fix_compiles,
                       log=lambda line: print(line, file=sys.stderr, flush=True))
    except (PlanError, validation.ConfigError, FileNotFoundError) as error:
      sys.exit(f'error: {error}')
    plan.update(fingerprint=wanted, config_hash=wanted['config_hash'])
    fs.makedirs(fs.parent(fs.absolute(out)))
    fs.write_text(out, json.dumps(plan, indent=2))
  if workdir:  # The run compares its measured step time with the plan (plan_files.PLAN_FILE).
    fs.makedirs(workdir)
    fs.write_text(fs.join(workdir, plan_files.PLAN_FILE), json.dumps(plan, indent=2))
  print(f'\n{config.name} on {accelerator_type} ({plan["topology"]}), per device; HBM in GiB:')
  print(table(plan['stages']))
  print(f'\n{plan["note"]}\nPlan {"reused from" if reused else "written to"} {out}')
  for row in plan['stages']:
    if not row['fits']:
      fix = f'; fits with {" ".join(row["fix"]["flags"])}' if row.get('fix') else ''
      sys.exit(f'error: {row["stage"]} does not fit on {accelerator_type}: needs '
               f'{row["needed_gib"]:.1f} GiB, has {row["capacity_gib"]:.1f} GiB per device{fix}')


def _define_flags():
  holders = (
    config_flags.DEFINE_config_file('config', None, 'Path to a config file.', lock_config=True),
    flags.DEFINE_string('accelerator-type', None, 'TPU slice as gcloud spells it: v4-64, v3-128, '
                        'v5litepod-256, v5p-128, v6e-64, ...'),
    flags.DEFINE_string('topology', '', 'Override the derived topology, e.g. v4:4x4x2.'),
    flags.DEFINE_string('out', '', 'Where to write the plan (JSON); default '
                        'workdirs/plans/<config.name>-<accelerator type>.json.'),
    flags.DEFINE_integer('max-fix-compiles', 3, 'Compiles spent looking for a fix of a stage '
                         'that does not fit (0: none).'),
    flags.DEFINE_bool('replan', False, 'Compile again even when OUT holds a plan made for the '
                      'same config, slice, jax, libtpu and code (which is otherwise reused).'),
    flags.DEFINE_string('workdir', '', 'Also write the plan to WORKDIR/plan.json, where the run '
                        'compares its measured step time with it (launch/tpu_vm.sh sets it).'),
  )
  flags.mark_flags_as_required(['config', 'accelerator-type'])
  return holders


if __name__ == '__main__':
  cli.run(_define_flags, main)
